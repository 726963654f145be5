"""CUDA kernels for the KL family.

Every argument is a 2-D (rows or 1, width or 1) Numba device view (``operand``): a full
tensor (rows, width), a per-sample value (rows, 1), a value shared by all rows
(1, width) or a scalar (1, 1); ``load`` reads element (r, j) with the broadcast axes
pinned to 0, so no broadcast is materialized (other broadcasts, and dtype changes, are
materialized once on the device by ``_gather``). Scalars travel as (1, 1) device arrays.

Elementwise: a 2-D grid, blockIdx.y over rows, a grid-stride loop over the row.
Reductions run in one pass over the data: each thread adds its elements in float64,
each block sums its threads by a fixed tree in shared memory and writes one partial to
a small (rows, blocks) array, and a tiny second kernel adds each row's partials in
block order. The thread -> element assignment depends only on the shape (the grid is
a function of the width), so results are identical run to run.
"""

import math

import numpy as np
from numba import cuda, float64
from numba.core import config

from fastgauss import _checks, _device
from fastgauss._device import kl as _kl
from fastgauss.cuda import THREADS, _numba_view, as_flat, block_size, constant, grid, launch_stream, placeholder



def _overrides():
    """On a GPU, fastgauss._device.kl.fma is the FMA instruction (one rounding, like the CPU's
    llvm.fma); the simulator has no cuda.fma and runs the portable a * b + addend."""
    if config.ENABLE_CUDASIM:
        return {}

    @cuda.jit(device=True)
    def fused_multiply_add(a, b, addend):
        return cuda.fma(a, b, addend)

    return {"fma": fused_multiply_add}


_d = _device.compile_for(cuda.jit(device=True), _kl, overrides=_overrides())
_normal_kl = _d.normal_kl
_normal_logpdf = _d.normal_logpdf
_discretized = _d.discretized_gaussian_log_likelihood
_normal_kl_vjp = _d.normal_kl_vjp
_normal_logpdf_vjp = _d.normal_logpdf_vjp
_discretized_vjp = _d.discretized_gaussian_log_likelihood_vjp


@cuda.jit(device=True)
def load(a, r, j):
    """Element (r, j) of a (rows or 1, width or 1) operand."""
    return a[r if a.shape[0] > 1 else 0, j if a.shape[1] > 1 else 0]


@cuda.jit(device=True)
def block_sum(shared, value):
    """The sum of ``value`` over the block's threads (any block size up to THREADS), by a fixed
    tree; every thread gets it. Each level folds the upper half onto the lower, the middle
    element of an odd count staying put: for a power of two, the classic halving tree."""
    t = cuda.threadIdx.x
    shared[t] = value
    cuda.syncthreads()
    n = cuda.blockDim.x
    while n > 1:
        half = (n + 1) // 2
        if t < n // 2:
            shared[t] += shared[t + half]
        cuda.syncthreads()
        n = half
    total = shared[0]
    cuda.syncthreads()  # shared is reused for the next row
    return total


@cuda.jit(cache=True)
def _combine(partials, width, mean, out):
    """out[r] = the sum (or mean) of row r's block partials, added in block order."""
    for r in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        total = 0.0
        for k in range(partials.shape[1]):
            total += partials[r, k]
        out[r] = total / width if mean else total


# The element function a kernel computes is fixed by its ``op`` argument, a tuple of zeros
# whose length names it (as in cpu/kl.py): one kernel source for the three ops, each
# compiled with only its own element live (len(op) is a compile-time constant).
OPS = {"normal_kl": (0,), "normal_logpdf": (0, 0), "discretized_gaussian_log_likelihood": (0, 0, 0)}


@cuda.jit(device=True)
def element(op, a, b, v, w, r, j, extra, c):
    """Element (r, j) of ``op`` on the operands a, b, v (and w, read by normal_kl only) and
    ``extra`` (half_bin for the discretized likelihood)."""
    if len(op) == 1:
        return _normal_kl(load(a, r, j), load(b, r, j), load(v, r, j), load(w, r, j), c)
    if len(op) == 2:
        return _normal_logpdf(load(a, r, j), load(b, r, j), load(v, r, j), c)
    return _discretized(load(a, r, j), load(b, r, j), load(v, r, j), extra, c)


@cuda.jit(cache=True)
def _rows(op, a, b, v, w, extra, c, out):
    rows, width = out.shape
    for r in range(cuda.blockIdx.y, rows, cuda.gridDim.y):
        for j in range(cuda.grid(1), width, cuda.gridsize(1)):
            out[r, j] = element(op, a, b, v, w, r, j, extra, c)


@cuda.jit(cache=True)
def _partials(op, a, b, v, w, extra, c, width, partials):
    shared = cuda.shared.array(THREADS, float64)
    for r in range(cuda.blockIdx.y, partials.shape[0], cuda.gridDim.y):
        total = 0.0
        for j in range(cuda.grid(1), width, cuda.gridsize(1)):
            total += element(op, a, b, v, w, r, j, extra, c)
        total = block_sum(shared, total)
        if cuda.threadIdx.x == 0:
            partials[r, cuda.blockIdx.x] = total


@cuda.jit(cache=True)
def _gather(source, strides, shape, out):
    """out (flat, C order over ``shape``) = source broadcast to ``shape``: element strides
    of the C-contiguous source, 0 along broadcast axes; converts to out's dtype."""
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        rest = e
        offset = 0
        for k in range(shape.size - 1, -1, -1):
            offset += (rest % shape[k]) * strides[k]
            rest //= shape[k]
        out[e] = source[offset]


# --- host side ------------------------------------------------------------------------


def _materialize(name, a, shape, target_shape, dtype):
    """``a`` broadcast to ``shape`` (on the device, converted to ``dtype``), viewed as target_shape."""
    source = as_flat(name, a)
    padded = (1,) * (len(shape) - len(a.shape)) + tuple(a.shape)
    strides, step = [], 1
    for n in reversed(padded):
        strides.insert(0, 0 if n == 1 else step)
        step *= n
    count = _checks.size(shape)
    out = cuda.device_array(count, dtype)
    threads = block_size(count)
    _gather[max(1, min(-(-count // threads), 4096)), threads, launch_stream()](
        source, constant(np.array(strides or [0], np.int64)), constant(np.array(shape or (1,), np.int64)), out
    )
    return out.reshape(target_shape)


def _shape(a):
    return () if _checks.is_scalar(a) else tuple(_checks.shape_dtype(a)[0])


def operand(name, a, shape, rows, width, dtype):
    """An argument as a (rows or 1, width or 1) device array of ``dtype`` (see the module docstring)."""
    if _checks.is_scalar(a):
        return constant(np.full((1, 1), a, dtype))
    view = _numba_view(a)
    kind, lead = _checks.broadcast_kind(view.shape, shape)
    target = {"row": (lead, 1), "full": (lead, width)}.get(kind, (rows, width))
    if kind == "other" or view.dtype != dtype:
        own_shape = shape if kind == "other" else tuple(view.shape)
        return _materialize(name, view, own_shape, target, dtype)
    return as_flat(name, view).reshape(target)


def _elementwise_operands(names, arrays, shape, rows, width, dtype):
    """(operands, rows, width) of an elementwise pass: when every argument is a full tensor or a
    single value, all are seen as one long row, so narrow rows (B, 3) keep the GPU busy."""
    if rows > 1 and _checks.one_row([_shape(a) for a in arrays], shape):
        arrays = [a if _checks.is_scalar(a) else as_flat(n, _numba_view(a)).reshape(1, -1) for n, a in zip(names, arrays)]
        rows, width, shape = 1, rows * width, (1, rows * width)
    return [operand(n, a, shape, rows, width, dtype) for n, a in zip(names, arrays)], rows, width


def nothing_to_compute(out, rows, width, reduce):
    """True when the shape leaves nothing to compute (no rows, or rows of width 0), with ``out``
    then complete: a reduction over no elements is 0 ("sum") or NaN ("mean"), as in NumPy."""
    if rows and width:
        return False
    if rows and reduce is not None:
        dtype = _checks.shape_dtype(out)[1]
        as_flat("out", _numba_view(out)).copy_to_device(np.full(rows, 0.0 if reduce == "sum" else math.nan, dtype), stream=launch_stream())
    return True


def _run(op, names, arrays, extra, shape, reduce, out, threads=None):
    """``threads`` (at most THREADS): the block size of the main kernel (default: grid's; tests use others)."""
    dtype = _checks.shape_dtype(out)[1]
    rows = shape[0] if len(shape) else 1
    width = _checks.size(shape[1:])
    if nothing_to_compute(out, rows, width, reduce):
        return
    out_view = _numba_view(out)
    if reduce is None:
        operands, rows, width = _elementwise_operands(names, arrays, shape, rows, width, dtype)
    else:
        operands = [operand(n, a, shape, rows, width, dtype) for n, a in zip(names, arrays)]
    if len(operands) == 3:
        operands.append(operands[0])  # w: never read by the three-operand ops
    extra = np.dtype(dtype).type(extra)
    c = _kl.constants(dtype)
    blocks, threads = grid(rows, width, threads)
    if reduce is None:
        _rows[blocks, threads, launch_stream()](OPS[op], *operands, extra, c, as_flat("out", out_view).reshape(rows, width))
        return
    partials = cuda.device_array((rows, blocks[0]), np.float64)
    _partials[blocks, threads, launch_stream()](OPS[op], *operands, extra, c, width, partials)
    _combine[max(1, min(-(-rows // THREADS), 4096)), block_size(rows), launch_stream()](partials, width, reduce == "mean", as_flat("out", out_view))


def normal_kl(mean1, logvar1, mean2, logvar2, *, shape, reduce, out):
    _run("normal_kl", ("mean1", "logvar1", "mean2", "logvar2"), (mean1, logvar1, mean2, logvar2), 0.0, shape, reduce, out)


def normal_logpdf(x, mean, logvar, *, shape, reduce, out):
    _run("normal_logpdf", ("x", "mean", "logvar"), (x, mean, logvar), 0.0, shape, reduce, out)


def discretized_gaussian_log_likelihood(x, means, log_scales, *, bins, shape, reduce, out):
    _run(
        "discretized_gaussian_log_likelihood", ("x", "means", "log_scales"), (x, means, log_scales), 1.0 / bins,
        shape, reduce, out,
    )


# --- Gaussian algebra ---
# normal_product: three outputs per element, the grid and operand kinds of _rows.

_normal_product = _d.normal_product


@cuda.jit(cache=True)
def _product_rows(a, b, v, w, c, means, logvars, log_scales):
    rows, width = means.shape
    for r in range(cuda.blockIdx.y, rows, cuda.gridDim.y):
        for j in range(cuda.grid(1), width, cuda.gridsize(1)):
            mean, logvar, log_scale = _normal_product(load(a, r, j), load(b, r, j), load(v, r, j), load(w, r, j), c)
            means[r, j] = mean
            logvars[r, j] = logvar
            log_scales[r, j] = log_scale


def normal_product(mean1, logvar1, mean2, logvar2, *, shape, mean_out, logvar_out, log_scale_out):
    dtype = _checks.shape_dtype(mean_out)[1]
    rows = shape[0] if len(shape) else 1
    width = _checks.size(shape[1:])
    if rows == 0 or width == 0:
        return
    names = ("mean1", "logvar1", "mean2", "logvar2")
    operands, rows, width = _elementwise_operands(names, (mean1, logvar1, mean2, logvar2), shape, rows, width, dtype)
    outs = [as_flat(n, _numba_view(o)).reshape(rows, width) for n, o in zip(("mean", "logvar", "log_scale"), (mean_out, logvar_out, log_scale_out))]
    blocks, threads = grid(rows, width)
    _product_rows[blocks, threads, launch_stream()](*operands, _kl.constants(dtype), *outs)


# --- backward (VJP) kernels ------------------------------------------------------------------
# ``_rows_vjp`` evaluates the partial derivatives (fastgauss._device.kl's *_vjp, in float64) of
# every element times its cotangent and writes the wanted ones into (rows, width) destinations:
# the gradient itself for a full argument, else a float64 temporary that ``_sum_to`` reduces
# to the argument's shape (a block per gradient element, a fixed tree over its threads, so
# the order depends on the shape alone).


@cuda.jit(device=True)
def element_vjp(op, a, b, v, w, r, j, extra, c):
    if len(op) == 1:
        return _normal_kl_vjp(
            float64(load(a, r, j)), float64(load(b, r, j)), float64(load(v, r, j)), float64(load(w, r, j)), c
        )
    if len(op) == 2:
        return _normal_logpdf_vjp(float64(load(a, r, j)), float64(load(b, r, j)), float64(load(v, r, j)), c)
    return _discretized_vjp(float64(load(a, r, j)), float64(load(b, r, j)), float64(load(v, r, j)), extra, c)


@cuda.jit(cache=True)
def _rows_vjp(op, a, b, v, w, extra, c, g, scale, dest_a, dest_b, dest_v, dest_w, want, rows, width):
    for r in range(cuda.blockIdx.y, rows, cuda.gridDim.y):
        for j in range(cuda.grid(1), width, cuda.gridsize(1)):
            gj = float64(load(g, r, j)) * scale
            da, db, dv, dw = element_vjp(op, a, b, v, w, r, j, extra, c)
            if want[0]:
                dest_a[r, j] = da * gj
            if want[1]:
                dest_b[r, j] = db * gj
            if want[2]:
                dest_v[r, j] = dv * gj
            if want[3]:
                dest_w[r, j] = dw * gj


@cuda.jit(cache=True)
def _sum_to(full, kept, summed, strides, out):
    """out (flat, C order over ``kept``) = the sum of ``full`` (flat, C order) over the axes where
    kept is 1 and summed is the full extent (kept[k] * summed[k] = the full shape's axis k)."""
    shared = cuda.shared.array(THREADS, float64)
    per = full.size // out.size
    for o in range(cuda.blockIdx.x, out.size, cuda.gridDim.x):
        total = 0.0
        for q in range(cuda.threadIdx.x, per, cuda.blockDim.x):
            rest_o = o
            rest_q = q
            offset = 0
            for k in range(kept.size - 1, -1, -1):
                offset += (rest_o % kept[k] + rest_q % summed[k]) * strides[k]
                rest_o //= kept[k]
                rest_q //= summed[k]
            total += full[offset]
        total = block_sum(shared, total)
        if cuda.threadIdx.x == 0:
            out[o] = total


def _reduce_into(name, full, shape, grad):
    """grad (an argument's shape) = full (``shape``, float64 device array) summed over the broadcast axes."""
    own = tuple(_checks.shape_dtype(grad)[0])
    kept = (1,) * (len(shape) - len(own)) + own
    summed = tuple(n if m == 1 else 1 for n, m in zip(shape, kept))
    strides, step = [], 1
    for n in reversed(shape):
        strides.insert(0, step)
        step *= n
    out = as_flat(name, grad)
    as_array = lambda values: constant(np.array(values or (1,), np.int64))  # noqa: E731
    _sum_to[max(1, min(out.size, 4096)), block_size(full.size // max(out.size, 1)), launch_stream()](
        full.reshape(full.size), as_array(kept), as_array(summed), as_array(strides), out
    )


def _run_vjp(op, names, cotangent, arrays, grads, extra, shape, reduce):
    wanted = [grad for grad in grads if grad is not None]
    if not wanted:
        return
    dtype = _checks.shape_dtype(wanted[0])[1]
    rows = shape[0] if len(shape) else 1
    width = _checks.size(shape[1:])
    if rows * width == 0:
        for name, grad in zip(names, grads):
            if grad is not None and _checks.size(_checks.shape_dtype(grad)[0]):
                as_flat(name, grad).copy_to_device(np.zeros(_checks.size(_checks.shape_dtype(grad)[0]), dtype), stream=launch_stream())
        return
    operands = [operand(n, a, shape, rows, width, dtype) for n, a in zip(names, arrays)]
    if len(operands) == 3:
        operands.append(operands[0])  # w: never read by the three-operand ops
    if reduce is None:
        g = operand("cotangent", cotangent, shape, rows, width, dtype)
        scale = 1.0
    else:
        g = as_flat("cotangent", _numba_view(cotangent)).reshape(rows, 1)
        scale = 1.0 / width if reduce == "mean" else 1.0
    unused = placeholder((1, 1), dtype)
    destinations, temporaries = [], []
    for name, a, grad in zip(names, arrays, grads):
        kind, lead = _checks.broadcast_kind(_shape(a), shape)
        if grad is None or (kind == "full" and lead == rows):
            destinations.append(unused if grad is None else as_flat(name, grad).reshape(rows, width))
            continue
        destinations.append(cuda.device_array((rows, width), np.float64))
        temporaries.append((name, destinations[-1], grad))
    destinations += [unused] * (4 - len(destinations))
    want = np.array([grad is not None for grad in grads] + [False] * (4 - len(grads)))
    blocks, threads = grid(rows, width)
    _rows_vjp[blocks, threads, launch_stream()](
        OPS[op], *operands, np.float64(extra), _kl.F64, g, scale, *destinations, constant(want), rows, width
    )
    for name, temporary, grad in temporaries:
        _reduce_into(name, temporary, shape, grad)


def normal_kl_vjp(cotangent, mean1, logvar1, mean2, logvar2, *, shape, reduce, grad_mean1, grad_logvar1, grad_mean2, grad_logvar2):
    _run_vjp(
        "normal_kl", ("mean1", "logvar1", "mean2", "logvar2"), cotangent, (mean1, logvar1, mean2, logvar2),
        (grad_mean1, grad_logvar1, grad_mean2, grad_logvar2), 0.0, shape, reduce,
    )


def normal_logpdf_vjp(cotangent, x, mean, logvar, *, shape, reduce, grad_x, grad_mean, grad_logvar):
    _run_vjp("normal_logpdf", ("x", "mean", "logvar"), cotangent, (x, mean, logvar), (grad_x, grad_mean, grad_logvar), 0.0, shape, reduce)


def discretized_gaussian_log_likelihood_vjp(cotangent, x, means, log_scales, *, bins, shape, reduce, grad_x, grad_means, grad_log_scales):
    _run_vjp(
        "discretized_gaussian_log_likelihood", ("x", "means", "log_scales"), cotangent, (x, means, log_scales),
        (grad_x, grad_means, grad_log_scales), 1.0 / bins, shape, reduce,
    )
