"""Dask arrays in, lazy Dask arrays out: every op, block by block, by the same kernels.

``fastgauss._dispatch.adapts`` hands a public op called with a dask.array argument to
``call``; ``Generator.standard_normal/normal/random(..., chunks=)`` come through
``generator_array``. The graph is built now (argument errors that shapes and dtypes
can show are raised here, before anything runs: the op's own checks run on zero-size
NumPy stand-ins of the arguments); each block is one call of the public op on NumPy
(or CuPy) blocks, in whichever worker runs it. One table per family of ops (DIFFUSION,
KL, OBJECTIVE, MVN, ALGEBRA) names their array arguments and how they are laid out.

- Elementwise ops keep their inputs' chunks (arguments with other chunks are unified,
  as Dask's elementwise operations do); timesteps ``t`` may be an int, a NumPy array
  (B,) or a Dask array (B,), which follows the chunks of the batch axis.
- reduce="sum"/"mean" (the KL family and the training objective; prior_bpd is always a
  per-sample mean): where the blocks hold whole samples (every axis after the batch axis
  in one chunk, the usual chunking) each block's per-sample results are final, one task a
  block, bitwise the in-memory call's; otherwise each block is reduced by the fused kernel
  to its per-sample partial sums, and the partials are combined by Dask's tree reduction
  in float64 (fixed order for a given chunking: bitwise identical run to run).
- The mvn ops and the Gaussian algebra need each argument's trailing axes (d, d x d,
  k x d, ...) in one chunk (a ValueError says which to rechunk); batch axes broadcast and
  keep their chunks. Index arguments (mvn_marginal, mvn_condition) are host values.
- Noise drawn from ``rng`` (q_sample, ddpm_step, ddim_step, mvn_sample, the Generator
  methods) is reserved once, now, for the whole array, exactly as the in-memory call
  reserves it; each block draws the values of its own global positions
  (fastgauss._plans.stream.BlockStream), so the result is bitwise the in-memory call's
  for any chunking, scheduler and number of workers.
- ``out=`` is not supported (the result is a new lazy array). An op whose result is a
  tuple (normal_product, the Gaussian algebra, return_noise, return_x0) is one blockwise of
  result tuples, each item a lazy array picked from it: ``dask.compute(*items)`` runs the op
  once per block. q_posterior's variance and log variance are per-sample tables, computed
  from t alone (tiny), apart from the mean.
- Not adapted: nll_bpd (it calls a model; it raises a TypeError for a Dask x0) and vjp.
"""

import functools
import inspect
import math
import numbers
import operator
import string

import dask.array as da
import numpy as np

from fastgauss import _checks
from fastgauss._dispatch import get_backend
from fastgauss._plans.stream import BlockStream, Window, as_stream, blocks_needed
from fastgauss.kl import REDUCTIONS
from fastgauss.mvn import _broadcast_batch
from fastgauss.random import Generator, _sample_dtype

# The array arguments of each op and how they are shaped: "same" (one shape, elementwise),
# "broadcast" (NumPy broadcasting, elementwise or reduced per sample), or the mvn layouts.
DIFFUSION = {
    "q_sample": ("x0", "noise"),
    "q_posterior": ("x0", "xt"),
    "predict_x0": ("xt", "eps"),
    "predict_eps": ("xt", "x0"),
    "predict_v": ("x0", "eps"),
    "v_to_x0": ("xt", "v"),
    "v_to_eps": ("xt", "v"),
    "posterior_mean_from_eps": ("xt", "eps"),
    "ddpm_step": ("model_output", "xt", "noise"),
    "ddim_step": ("model_output", "xt", "noise"),
}
KL = {
    "normal_kl": ("mean1", "logvar1", "mean2", "logvar2"),
    "normal_logpdf": ("x", "mean", "logvar"),
    "discretized_gaussian_log_likelihood": ("x", "means", "log_scales"),
    "normal_product": ("mean1", "logvar1", "mean2", "logvar2"),  # a tuple (mean, logvar, log_scale)
}
# the training objective: data arguments of one shape (B, ...), t (B,) or a scalar; elementwise
# or reduced per sample (prior_bpd: always the per-sample mean)
OBJECTIVE = {
    "model_log_variance": ("var_output",),
    "vlb_terms": ("x0", "xt", "model_output", "var_output"),
    "prior_bpd": ("x0",),
    "diffusion_loss": ("model_output", "x0", "noise"),
    "hybrid_loss": ("model_output", "var_output", "x0", "noise"),
}
# mvn: argument -> number of trailing axes that must be one chunk (d, or d x d)
MVN = {
    "cholesky": {"a": 2},
    "mvn_sample": {"mean": 1, "cov": 2, "scale_tril": 2, "noise": 1},
    "mvn_logpdf": {"x": 1, "mean": 1, "cov": 2, "scale_tril": 2},
    "mvn_kl": {"mean1": 1, "cov1": 2, "mean2": 1, "cov2": 2},
}
# Gaussian algebra: argument -> its trailing axes (in one chunk), each argument's own sizes (d,
# k = rows of A or H, m = len(index)); the result is a tuple of arrays B + their own trailing axes
ALGEBRA = {
    "mvn_affine": {"mean": "d", "cov": "dd", "A": "kd", "b": "k"},
    "mvn_marginal": {"mean": "d", "cov": "dd"},
    "mvn_condition": {"mean": "d", "cov": "dd", "value": "m"},
    "gaussian_product": {"mean1": "d", "cov1": "dd", "mean2": "d", "cov2": "dd"},
    "kalman_update": {"mean": "d", "cov": "dd", "H": "kd", "R": "kk", "y": "k"},
}
LETTERS = string.ascii_lowercase


def call(op, args, kwargs):
    """Run the public op ``op`` (called with ``args``, ``kwargs``, one argument a Dask array) lazily."""
    arguments = inspect.signature(op).bind(*args, **kwargs)
    arguments.apply_defaults()
    params = dict(arguments.arguments)
    if "backend" in params and params["backend"] is None:
        params["backend"] = get_backend()  # use_backend around the graph's building applies in the workers too
    if params.get("out") is not None:
        raise TypeError(f"{op.__name__}: out= is not supported with Dask arrays (the result is a new lazy array)")
    for label, value in _dask_arguments(params):
        if any(math.isnan(n) for n in value.shape):
            raise ValueError(
                f"{label} has unknown chunk sizes (shape {value.shape}); fastgauss needs them to broadcast and "
                f"align the blocks: call {label}.compute_chunk_sizes() first"
            )
    name = op.__name__
    if name in DIFFUSION:
        return _diffusion(op, params)
    if name in KL:
        return _kl(op, params)
    if name == "philox4x32_10":
        return _philox(op, params)
    if name in MVN:
        return _mvn(op, params)
    if name in ALGEBRA:
        return _algebra(op, params)
    if name in OBJECTIVE:
        return _objective(op, params)
    raise TypeError(
        f"fastgauss.{name} does not take Dask arrays yet; compute them first (x.compute()) or call it on "
        "each block (dask.array.map_blocks)"
    )


def _dask_arguments(params):
    """(label, Dask array) for each Dask array among the arguments (items of tuples and lists too)."""
    for name, value in params.items():
        items = enumerate(value) if isinstance(value, (tuple, list)) else [(None, value)]
        for i, item in items:
            if _checks.is_dask_array(item):
                yield (name if i is None else f"{name}[{i}]"), item


# --- blocks ---------------------------------------------------------------------------------


def _on_gpu(arrays):
    """True when the chunks of one of the Dask ``arrays`` are CuPy arrays (the cuda backend's)."""
    return any(_is_cupy(getattr(a, "_meta", None)) for a in arrays)


def _is_cupy(x):
    return type(x).__module__.split(".")[0] == "cupy"


def _meta(on_gpu, ndim, dtype):
    """An empty block of the result's library: CuPy when the inputs' chunks are, else NumPy."""
    if on_gpu:
        import cupy

        return cupy.empty((0,) * ndim, dtype)
    return np.empty((0,) * ndim, dtype)


def _as_cupy(blocks):
    """Each NumPy or CuPy block as a C-contiguous CuPy array (the cuda kernels take contiguous
    arrays; a block sliced from a larger CuPy array is a strided view); other values as they are."""
    import cupy

    return [cupy.ascontiguousarray(cupy.asarray(b)) if isinstance(b, np.ndarray) or _is_cupy(b) else b for b in blocks]


def _to_device(blocks):
    """Where a block is CuPy, every block goes to the GPU (_as_cupy): host blocks (timesteps t,
    given as NumPy) follow the data there, as the in-memory call on CuPy data takes its t."""
    return _as_cupy(blocks) if any(_is_cupy(b) for b in blocks) else blocks


def _as_dask(name, x):
    if _checks.is_dask_array(x):
        return x
    x = _checks.data_array(name, x, on_device=False)
    return da.from_array(x, chunks=x.shape or ())


def _positions(shape, chunks):
    """One arange per axis, chunked like the output: a block's first entries are its origin."""
    return [da.arange(n, chunks=(c,)) for n, c in zip(shape, chunks)]


def _origin(rank, axes, positions):
    """A block's first index: from the position blocks of ``axes``, 0 on the other axes."""
    origin = [0] * rank
    for axis, p in zip(axes, positions):
        origin[axis] = int(p[0]) if p.size else 0
    return tuple(origin)


def _run_block(op, names, constants, stream, pick, *blocks):
    """One block: ``op(**{names: blocks}, **constants)``. With ``stream`` = (key, offset, the
    whole output's shape, the axes it is chunked along), the last blocks are the position
    blocks of those axes, and rng is the block's BlockStream."""
    if stream is not None:
        key, offset, shape, axes = stream
        blocks, positions = blocks[: len(blocks) - len(axes)], blocks[len(blocks) - len(axes) :]
        constants = dict(constants, rng=BlockStream(key, offset, Window(shape, _origin(len(shape), axes, positions))))
    result = op(**dict(zip(names, _to_device(blocks))), **constants)
    return result if pick is None else result[pick]


def _blockwise(op, out_index, inputs, constants, dtype, stream=None, pick=None, meta=None, **options):
    """da.blockwise of _run_block over ``inputs`` [(name, dask array, index)]. ``stream`` =
    (key, offset, output shape, output axes chunked, their chunks) draws noise in the blocks.
    The result's chunks are CuPy arrays where the inputs' are, else NumPy (``meta``: another)."""
    names = [name for name, _, _ in inputs]
    pairs = [item for _, array, index in inputs for item in (array, index)]
    if stream is not None:
        key, offset, shape, axes, chunks = stream
        for axis, positions in zip(axes, _positions([shape[a] for a in axes], chunks)):
            pairs += [positions, out_index[axis]]
        stream = (key, offset, shape, tuple(axes))
    function = functools.partial(_run_block, op, names, constants, stream, pick)
    if meta is None:
        meta = _meta(_on_gpu(array for _, array, _ in inputs), len(out_index), dtype)
    return da.blockwise(function, out_index, *pairs, token=op.__name__, dtype=dtype, meta=meta, concatenate=True, **options)


def _tuple(op, out_index, inputs, constants, items, stream=None):
    """An op whose result is a tuple: ONE blockwise whose blocks are the tuples, and one lazy
    array per item picked from it, so that computing several items runs op once per block.
    ``items``: (trailing shape, dtype) of each item, which adds its own trailing axes (one chunk)
    to the axes ``out_index``. ``stream``: as for _blockwise."""
    object_meta = np.empty((0,) * len(out_index), object)  # blocks of tuples
    tuples = _blockwise(op, out_index, inputs, constants, np.dtype(object), stream, meta=object_meta)
    on_gpu = _on_gpu(array for _, array, _ in inputs)
    out_index = tuple(out_index)
    results = []
    for i, (tail, dtype) in enumerate(items):
        tail_index = tuple(f"{i}.{axis}" for axis in range(len(tail)))  # names no batch letter can take
        results.append(
            da.blockwise(
                operator.itemgetter(i), out_index + tail_index, tuples, out_index, new_axes=dict(zip(tail_index, tail)),
                token=f"{op.__name__}-{i}", dtype=dtype, meta=_meta(on_gpu, len(out_index) + len(tail), dtype),
            )
        )
    return tuple(results)


def _stand_in(array, trailing):
    """A NumPy array of ``array``'s dtype with no elements (a zero-stride view, no memory) for
    the op's own checks: the last ``trailing`` axes as they are, the batch axes before them of
    length 0, and one more leading batch axis of length 0 (so that every stand-in is empty and
    all broadcast together). An array of fewer than ``trailing`` axes stays as it is: the op
    rejects its shape, naming it."""
    shape = tuple(array.shape)
    if len(shape) >= trailing:
        shape = (0,) * (len(shape) - trailing + 1) + shape[len(shape) - trailing :]
    return np.broadcast_to(np.zeros((), np.dtype(array.dtype)), shape)


def _probe(op, stand_ins, constants, shapes=None):
    """op on stand-ins (the NumPy reference, nothing computed): raises the in-memory call's
    errors of shapes, dtypes and options now, and returns its result (the results' dtypes
    and trailing shapes). ``shapes``: the real shape of each stand-in, which a message
    "<name> must have shape ...; got <shape>" is given instead of the stand-in's."""
    for name, value in constants.items():
        if _checks.is_dask_array(value):
            raise TypeError(f"{op.__name__}: {name} cannot be a Dask array (only the data arguments can); pass a NumPy array or a list")
    try:
        return op(**stand_ins, **dict(constants, backend="numpy"))
    except ValueError as exc:
        message = str(exc)
        for name, shape in (shapes or {}).items():
            got = f"; got {tuple(stand_ins[name].shape)}"
            if message.startswith(f"{name} ") and message.endswith(got):
                raise ValueError(f"{message[: len(message) - len(got)]}; got {tuple(shape)}") from None
        raise


# --- diffusion ------------------------------------------------------------------------------


def _timesteps(name, t, schedule, shape, batch_chunks):
    """A scalar t as an int; an array t as a Dask array (B,) chunked like the batch axis."""
    if t is None or isinstance(t, (numbers.Number, np.generic)) or (not _checks.is_dask_array(t) and np.ndim(t) == 0):
        return _checks.timesteps(t, schedule.num_timesteps, shape, name=name, low=-1 if name == "t_prev" else 0)
    if not _checks.is_dask_array(t):
        values = _checks.timesteps(t, schedule.num_timesteps, shape, name=name, low=-1 if name == "t_prev" else 0)
        return da.from_array(values, chunks=(batch_chunks,))
    if np.dtype(t.dtype).kind not in "iu":
        raise TypeError(f"{name} must be an integer or an integer array; got an array of dtype {t.dtype}")
    if t.ndim != 1 or len(shape) == 0 or t.shape[0] != shape[0]:
        raise ValueError(f"{name} must be a scalar or have shape (B,) = ({shape[0] if shape else '?'},); got shape {t.shape}")
    return t.rechunk((batch_chunks,))  # values are checked in the blocks, when they are known


def _diffusion(op, params):
    name = op.__name__
    schedule = _checks.schedule(params["schedule"])
    present = [n for n in DIFFUSION[name] if params.get(n) is not None]
    first = present[0] if name not in ("ddpm_step", "ddim_step") else "xt"
    arrays, shape, dtype, index, chunkss, inputs, constants = _same_shape(params, present, first, schedule)
    stream = None
    draws = params.get("noise") is None and (name in ("q_sample", "ddpm_step") or (name == "ddim_step" and params["eta"] > 0))
    if name == "ddim_step":
        eta = params["eta"]
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not eta >= 0:
            raise ValueError(f"eta must be a number >= 0; got {eta!r}")
    if "noise" in present and params.get("rng") is not None:
        raise ValueError("pass either noise or rng, not both")
    if draws:
        key, offset, _ = as_stream(params.get("rng")).reserve(blocks_needed(_checks.size(shape), dtype))
        stream = (key, offset, tuple(shape), range(len(shape)), tuple(chunkss[i] for i in index))
        constants["rng"] = None
    elif "rng" in constants:
        constants["rng"] = None  # ddim_step with eta = 0 draws nothing: the in-memory call does not advance rng
    if name == "q_posterior":
        return _q_posterior(op, inputs, constants, dtype, index, shape, schedule)
    if params.get("return_noise") or params.get("return_x0"):  # (x_t, noise) or (x_prev, x0)
        return _tuple(op, index, inputs, constants, [((), dtype), ((), dtype)], stream)
    return _blockwise(op, index, inputs, constants, dtype, stream)


def _same_shape(params, present, first, schedule):
    """Data arguments ``present`` of one shape (the shape of ``first``), chunks unified, and the
    timesteps t (and t_prev) chunked like the batch axis: (arrays, shape, dtype, index, chunks
    by letter, blockwise inputs, constants: the other parameters and the scalar timesteps)."""
    arrays = {n: _as_dask(n, params[n]) for n in present}
    shape = arrays[first].shape
    for n in present:
        _checks.same_shape(n, arrays[n].shape, first, shape)
    dtype = _checks.result_dtype(**{n: np.dtype(a.dtype) for n, a in arrays.items()})
    index = LETTERS[: len(shape)]
    chunkss, unified = da.core.unify_chunks(*[item for n in present for item in (arrays[n], index)])
    arrays = dict(zip(present, unified))
    inputs = [(n, arrays[n], index) for n in present]
    batch_chunks = chunkss[index[0]] if shape else None
    constants = {k: v for k, v in params.items() if k not in present and k not in ("t", "t_prev", "out")}
    for time_name in ("t", "t_prev"):
        if time_name in params:
            t = _timesteps(time_name, params[time_name], schedule, shape, batch_chunks)
            if _checks.is_dask_array(t):
                inputs.append((time_name, t, index[:1]))
            else:
                constants[time_name] = t
    return arrays, shape, dtype, index, chunkss, inputs, constants


def _q_posterior(op, inputs, constants, dtype, index, shape, schedule):
    mean = _blockwise(op, index, inputs, constants, dtype, pick=0)
    ndim = len(shape)
    on_gpu = _on_gpu(array for _, array, _ in inputs)
    if not any(n == "t" for n, _, _ in inputs):  # a scalar t: variances from a one-element call
        one = np.zeros((1,) * ndim, dtype)
        if on_gpu:
            (one,) = _as_cupy([one])
        _, variance, log_variance = op(one, one, constants["t"], schedule, backend=constants.get("backend"))
        return mean, da.from_array(variance, chunks=()), da.from_array(log_variance, chunks=())
    t_array = next(a for n, a, _ in inputs if n == "t")
    tables = []
    for pick in (1, 2):
        tables.append(
            da.map_blocks(
                _per_sample_table, t_array, op, schedule, ndim, dtype, pick, constants.get("backend"), on_gpu,
                dtype=dtype, chunks=(t_array.chunks[0],) + ((1,),) * (ndim - 1), new_axis=list(range(1, ndim)),
                meta=_meta(on_gpu, ndim, dtype),
            )
        )
    return (mean, *tables)


def _per_sample_table(t, op, schedule, ndim, dtype, pick, backend, on_gpu):
    """q_posterior's variance or log variance (b, 1, ..., 1) for the timesteps of one block."""
    one = np.zeros((len(t),) + (1,) * (ndim - 1), dtype)
    if on_gpu:
        one, t = _as_cupy([one, t])
    return op(one, one, t, schedule, backend=backend)[pick]


# --- the KL family: broadcasting, elementwise or reduced per sample -------------------------------


def _kl(op, params):
    name = op.__name__
    reduce = params.get("reduce")  # normal_product has none
    if not (reduce is None or isinstance(reduce, str) and reduce in REDUCTIONS):
        raise ValueError(f"reduce must be None, 'mean' or 'sum'; got {reduce!r}")
    arrays, shapes, dtypes, constants = {}, {}, {}, {}
    for n in KL[name]:
        value = params[n]
        if isinstance(value, numbers.Number) and not isinstance(value, np.generic):
            constants[n] = value
            continue
        arrays[n] = _as_dask(n, value)
        shapes[n], dtypes[n] = arrays[n].shape, np.dtype(arrays[n].dtype)
    shape = _checks.broadcast_shape(**shapes, **{n: () for n in constants})
    dtype = _checks.result_dtype(**dtypes) if dtypes else np.dtype(np.float64)
    if reduce is not None and len(shape) == 0:
        raise ValueError(f"reduce={reduce!r} reduces over every axis but the first, so the arguments need at least one axis")
    constants.update({k: v for k, v in params.items() if k not in KL[name] and k not in ("out", "reduce")})
    if "bins" in constants:
        op(0.0, 0.0, 0.0, bins=constants["bins"], backend="numpy")  # bins errors now, not in a worker
    index = LETTERS[: len(shape)]
    inputs = [(n, a, index[len(shape) - a.ndim :]) for n, a in arrays.items()]
    if name == "normal_product":  # (mean, logvar, log_scale), each of the broadcast shape
        return _tuple(op, index, inputs, constants, [((), dtype)] * 3)
    if reduce is None:
        return _blockwise(op, index, inputs, constants, dtype)
    return _per_sample(op, index, inputs, constants, dtype, shape, reduce)


def _per_sample(op, index, inputs, constants, dtype, shape, reduce):
    """reduce="sum"/"mean" over every axis but the first. Where every block holds whole samples
    (the axes after the batch axis in one chunk: the usual chunking), each block's per-sample
    results are final: one task a block, the fused kernel's own per-sample values (the same
    bits as the in-memory call). Otherwise, per block, the per-sample partial sums (b,) by the
    fused kernel, shaped (b, 1, ..., 1), then a tree sum in float64."""
    whole_samples = all(
        len(chunks) == 1 for _, array, letters in inputs for letter, chunks in zip(letters, array.chunks) if letter != index[0]
    )
    if whole_samples:  # (the block's (b,) results as (b, 1, ..., 1): no axis is contracted, so no block is copied)
        final = _PerSample(op, reduce)
        results = _blockwise(final, index, inputs, constants, dtype, adjust_chunks={i: 1 for i in index[1:]})
        return results.reshape(shape[:1])
    partial = _PartialSums(op)
    partials = _blockwise(
        partial, index, inputs, constants, dtype if partial.sums else np.dtype(np.float64), adjust_chunks={i: 1 for i in index[1:]},
    )
    total = partials.sum(axis=tuple(range(1, len(shape))), dtype=np.float64)
    if reduce == "mean":
        total = total / _checks.size(shape[1:])
    return total.astype(dtype)


class _PerSample:
    """op(..., reduce=reduce) on one block (prior_bpd, which has no reduce: op itself), shaped
    (b, 1, ..., 1) like the block's rank."""

    def __init__(self, op, reduce):
        self.op, self.__name__, self.reduce = op, op.__name__, reduce
        self.sums = "reduce" in inspect.signature(op).parameters

    def values(self, kwargs, ndim):
        return self.op(**dict(kwargs, reduce=self.reduce)) if self.sums else self.op(**kwargs)

    def __call__(self, **kwargs):
        ndim = max((v.ndim for v in kwargs.values() if _is_block(v)), default=0)
        result = self.values(kwargs, ndim)
        return result.reshape(result.shape + (1,) * (ndim - 1))


class _PartialSums(_PerSample):
    """op(..., reduce="sum") on one block, shaped (b, 1, ..., 1). An op without reduce
    (prior_bpd) gives per-sample means: times the block's elements per sample, in float64."""

    def __init__(self, op):
        super().__init__(op, "sum")

    def values(self, kwargs, ndim):
        if self.sums:
            return super().values(kwargs, ndim)
        elements = max((_checks.size(v.shape[1:]) for v in kwargs.values() if _is_block(v) and v.ndim == ndim), default=1)
        return self.op(**kwargs).astype(np.float64) * elements


def _is_block(value):
    return isinstance(value, np.ndarray) or _is_cupy(value)


# --- mvn: the trailing d (and d x d) axes in one chunk ----------------------------------------------


def _mvn(op, params):
    name = op.__name__
    layout = MVN[name]
    arrays = {}
    for n, trailing in layout.items():
        value = params.get(n)
        if value is None:
            continue
        array = _as_dask(n, value)
        if array.ndim < trailing:
            raise ValueError(f"{n} must have at least {trailing} axes; got shape {array.shape}")
        _one_chunk(name, n, array, "d" * trailing)
        arrays[n] = array
    constants = {k: v for k, v in params.items() if k not in layout and k != "out"}
    if name == "cholesky":
        a = arrays["a"]
        index = LETTERS[: a.ndim]
        return _blockwise(op, index, [("a", a, index)], constants, _checks.result_dtype(a=np.dtype(a.dtype)))
    if name == "mvn_sample" and (params.get("cov") is None) == (params.get("scale_tril") is None):
        raise ValueError("pass exactly one of cov and scale_tril")
    vectors = [n for n, k in layout.items() if k == 1 and n in arrays]
    matrices = [n for n, k in layout.items() if k == 2 and n in arrays]
    d = arrays[vectors[0]].shape[-1]
    for n in vectors + matrices:
        if arrays[n].shape[-1] != d or (layout[n] == 2 and arrays[n].shape[-2] != d):
            raise ValueError(f"{n} must end in {'(d, d)' if layout[n] == 2 else '(d,)'} with d = {d}; got shape {arrays[n].shape}")
    batch = _checks.broadcast_shape(**{n: arrays[n].shape[: arrays[n].ndim - layout[n]] for n in arrays if n != "noise"})
    dtype = _checks.result_dtype(**{n: np.dtype(a.dtype) for n, a in arrays.items()})
    if name == "mvn_sample":
        return _mvn_sample(op, params, arrays, constants, batch, d, dtype)
    letters = LETTERS[: len(batch)]
    inputs = []
    for n, a in arrays.items():
        own = a.ndim - layout[n]
        inputs.append((n, a, letters[len(batch) - own :] + ("y" if layout[n] == 1 else "yz")))
    return _blockwise(op, letters, inputs, constants, dtype)


def _one_chunk(name, n, array, axes):
    """The trailing ``axes`` ("dd": (d, d)) of the argument ``n`` must be one chunk each (a ValueError says how)."""
    split = [a for a in range(array.ndim - len(axes), array.ndim) if len(array.chunks[a]) > 1]
    if split:
        raise ValueError(
            f"{name} needs the trailing ({', '.join(axes)}{',' if len(axes) == 1 else ''}) axes of {n} in one chunk; "
            f"{n} has chunks {array.chunks} (rechunk, e.g. {n}.rechunk({{{', '.join(f'{a}: -1' for a in split)}}}))"
        )


def _algebra(op, params):
    """Gaussian algebra: each argument's trailing axes in one chunk, its batch axes broadcast and
    keep their chunks; one blockwise of result tuples (``_tuple``)."""
    name = op.__name__
    layout = ALGEBRA[name]
    arrays = {n: _as_dask(n, params[n]) for n in layout if params.get(n) is not None}
    constants = {k: v for k, v in params.items() if k not in layout and k != "out"}
    stand_ins = {n: _stand_in(a, len(layout[n])) for n, a in arrays.items()}
    probe = _probe(op, stand_ins, constants, {n: a.shape for n, a in arrays.items()})  # shapes, dtypes, index
    for n, a in arrays.items():
        _one_chunk(name, n, a, layout[n])
    batch = _broadcast_batch({n: a.shape[: a.ndim - len(layout[n])] for n, a in arrays.items()})
    letters = tuple(LETTERS[: len(batch)])
    inputs = []
    for n, a in arrays.items():
        own = a.ndim - len(layout[n])
        inputs.append((n, a, letters[len(batch) - own :] + tuple(f"{n}.{axis}" for axis in range(len(layout[n])))))
    items = [(item.shape[len(batch) + 1 :], item.dtype) for item in probe]  # a stand-in has one more batch axis
    return _tuple(op, letters, inputs, constants, items)


def _mvn_sample(op, params, arrays, constants, batch, d, dtype):
    noise = arrays.get("noise")
    if noise is not None:
        if params.get("rng") is not None:
            raise ValueError("pass either noise or rng, not both")
        tail = batch + (d,)
        if noise.shape[noise.ndim - len(tail) :] != tail:
            raise ValueError(f"noise must have shape sample + batch + (d,) = (...) + {tail}; got {noise.shape}")
        sample = noise.shape[: noise.ndim - len(tail)]
    else:
        sample = () if params.get("size") is None else _checks.sample_shape(params["size"])
    shape = sample + batch + (d,)
    sample_letters, batch_letters = LETTERS[: len(sample)], LETTERS[len(sample) : len(sample) + len(batch)]
    out_index = sample_letters + batch_letters + "y"
    inputs = []
    for n, a in arrays.items():
        if n == "noise":
            inputs.append((n, a, out_index))
            continue
        own = a.ndim - MVN["mvn_sample"][n]
        inputs.append((n, a, batch_letters[len(batch) - own :] + ("y" if n == "mean" else "yz")))
    constants.pop("size", None)
    new_axes = {}
    if noise is None:
        constants["size"] = sample
        new_axes = {letter: n for letter, n in zip(sample_letters, sample)}
        if batch_letters:  # the batch chunks the inputs give the output
            chunkss, _ = da.core.unify_chunks(*[item for _, a, i in inputs for item in (a, i)])
            chunks = tuple(chunkss.get(letter, (n,)) for letter, n in zip(batch_letters, batch))
        else:
            chunks = ()
        key, offset, _ = as_stream(params.get("rng")).reserve(blocks_needed(_checks.size(shape), dtype))
        constants["rng"] = None
        stream = (key, offset, tuple(shape), range(len(sample), len(sample) + len(batch)), chunks)
        return _blockwise(op, out_index, inputs, constants, dtype, stream, new_axes=new_axes)
    return _blockwise(op, out_index, inputs, constants, dtype)


# --- the training objective: one shape, t per sample, elementwise or reduced per sample -------------


def _objective(op, params):
    name = op.__name__
    schedule = _checks.schedule(params["schedule"])
    present = [n for n in OBJECTIVE[name] if params.get(n) is not None]
    arrays, shape, _, index, _, inputs, constants = _same_shape(params, present, present[0], schedule)
    # the op's own checks of dtypes and options (kind, prediction, weighting, clip, reduce, ...), now,
    # on stand-ins with no samples
    stand_ins = {n: np.broadcast_to(np.zeros((), a.dtype), (0,) + a.shape[1:] if a.ndim else ()) for n, a in arrays.items()}
    stand_ins.update({n: np.zeros(0, a.dtype) for n, a, _ in inputs if n == "t"})
    dtype = _probe(op, stand_ins, constants).dtype
    reduce = params.get("reduce", "mean" if name == "prior_bpd" else None)  # prior_bpd: per-sample means
    if reduce is None:
        return _blockwise(op, index, inputs, constants, dtype)
    return _per_sample(op, index, inputs, constants, dtype, shape, reduce)


def _philox(op, params):
    """Raw Philox blocks: the leading axes broadcast and keep their chunks; the word axes
    (4 counter words, 2 key words) are made one chunk."""
    arrays = {}
    for n, width in (("counters", 4), ("keys", 2)):
        a = _as_dask(n, params[n])
        if a.ndim == 0 or a.shape[-1] != width:
            raise ValueError(f"{n} must have shape (..., {width}); got {a.shape}")
        arrays[n] = a.rechunk({a.ndim - 1: -1})
    lead = _checks.broadcast_shape(**{n: a.shape[:-1] for n, a in arrays.items()})
    letters = LETTERS[: len(lead)]
    inputs = [(n, a, letters[len(lead) - a.ndim + 1 :] + ("w" if n == "counters" else "z")) for n, a in arrays.items()]
    return _blockwise(op, letters + "w", inputs, {"backend": params["backend"]}, np.dtype(np.uint32))


# --- Generator methods with chunks= ---------------------------------------------------------------


class _BlockGenerator(BlockStream, Generator):
    """A Generator that draws one block of a larger call's array (fastgauss._plans.stream.BlockStream)."""


def _generator_block(method, dtype, backend, key, offset, shape, *blocks):
    """Run ``method`` of a block generator on the block whose position arrays are the last blocks
    (on the cuda backend, into a new CuPy block)."""
    positions = blocks[len(blocks) - len(shape) :]
    loc_scale = blocks[: len(blocks) - len(shape)]
    origin = tuple(int(p[0]) if p.size else 0 for p in positions)
    size = tuple(p.size for p in positions)
    generator = _BlockGenerator(key, offset, Window(shape, origin))
    if backend == "cuda":
        import cupy

        if method == "normal":  # loc and scale on the device, as the cuda backend takes them
            result = generator.normal(*_as_cupy(loc_scale), size=size, dtype=dtype, backend=backend)
            return cupy.asarray(result)  # a view of the device array the op allocated (no copy)
        return getattr(generator, method)(size=size, dtype=dtype, out=cupy.empty(size, dtype), backend=backend)
    if method == "normal":
        loc, scale = loc_scale
        return generator.normal(loc, scale, size=size, dtype=dtype, backend=backend)
    return getattr(generator, method)(size=size, dtype=dtype, backend=backend)


def generator_array(generator, method, size, dtype, out, chunks, backend, loc=None, scale=None):
    """``generator.<method>(size, dtype, chunks=chunks)``: a lazy dask.array; the generator advances now."""
    if out is not None:
        raise TypeError(f"{method}: pass either out or chunks, not both")
    dtype = _sample_dtype(dtype, method)
    backend = get_backend() if backend is None else backend  # the workers run where the caller chose
    operands = []
    if method == "normal":
        if not _checks.is_dask_array(scale) and np.any(np.asarray(scale) < 0):
            raise ValueError("scale < 0")  # a Dask scale is checked in its blocks
        loc, scale = (_as_dask(n, v) if not isinstance(v, numbers.Number) else v for n, v in (("loc", loc), ("scale", scale)))
        loc_shape, scale_shape = np.shape(loc), np.shape(scale)
        shape = np.broadcast_shapes(loc_shape, scale_shape) if size is None else _checks.sample_shape(size)
        try:
            np.broadcast_shapes(loc_shape, scale_shape, shape)
        except ValueError:
            raise ValueError(f"loc {loc_shape} and scale {scale_shape} do not broadcast to size {shape}") from None
        operands = [loc, scale]
    else:
        shape = () if size is None else _checks.sample_shape(size)
    shape = tuple(shape)
    chunks = da.core.normalize_chunks(chunks, shape, dtype=dtype)
    key, offset, _ = generator.reserve(blocks_needed(_checks.size(shape), dtype))
    index = LETTERS[: len(shape)]
    pairs = []
    for v in operands:  # loc and scale: blocks aligned with the output's (they broadcast in the block)
        v = da.asarray(v, dtype=dtype)
        own = chunks[len(shape) - v.ndim :]
        v = v.rechunk(tuple(c if n > 1 else (n,) for n, c in zip(v.shape, own)))
        pairs += [v, index[len(shape) - v.ndim :]]
    for letter, axis_positions in zip(index, _positions(shape, chunks)):
        pairs += [axis_positions, letter]
    function = functools.partial(_generator_block, method, dtype, backend, key, offset, shape)
    meta = _meta(backend == "cuda", len(shape), dtype)
    return da.blockwise(function, index, *pairs, token=method, dtype=dtype, meta=meta, concatenate=True)
