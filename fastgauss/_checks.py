"""Argument validation and normalization shared by every public op.

Public functions call these once, before any backend runs and before anything is
written; kernels then assume valid, normalized inputs. Host and CUDA arrays are
handled alike through duck typing; the few helpers that must touch a CUDA array
(``numba_view``, ``to_host``, ``empty_like_library``, ``from_host_like``) import
numba.cuda inside the call, so importing this module imports no numba. This module
sits below the backends (they use its shape helpers) and imports no other part of
fastgauss but ``schedules`` (for the NoiseSchedule type).
"""

import contextlib
import contextvars
import numbers

import numpy as np

COMPUTE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_scalar(x):
    """True for a Python or NumPy scalar (numbers.Number, numpy.generic): the one scalar test of
    fastgauss. Scalars are neutral in backend resolution, never overlap ``out``, and are passed
    to kernels as values."""
    return isinstance(x, (numbers.Number, np.generic))


def is_device_array(x):
    """True for CUDA arrays: anything exposing ``__cuda_array_interface__`` (CuPy, PyTorch CUDA,
    Numba device arrays) and Numba's CUDA-simulator arrays, which lack the interface."""
    if hasattr(x, "__cuda_array_interface__"):
        return True
    module = type(x).__module__
    return module.startswith(("numba.cuda", "numba_cuda")) and hasattr(x, "copy_to_host")


def is_dask_array(x):
    """True for a dask.array.Array, recognized without importing dask (none exists unless dask
    was imported): such calls go to the adapter fastgauss.interop.dask."""
    return type(x).__module__.startswith("dask.array") and hasattr(x, "chunks") and hasattr(x, "dask")


def _is_simulator_array(x):
    return not isinstance(x, np.ndarray) and not hasattr(x, "__cuda_array_interface__")


def numba_view(x):
    """A Numba device-array view of any CUDA array, without a copy."""
    if hasattr(x, "__cuda_array_interface__") and not hasattr(x, "copy_to_host"):  # CuPy, PyTorch
        from numba import cuda

        return cuda.as_cuda_array(x)
    return x


_stream = contextvars.ContextVar("fastgauss_cuda_stream", default=0)


def launch_stream():
    """The CUDA stream kernels launch on, ``kernel[blocks, threads, launch_stream()]``, and small
    transfers are made on (0: the default stream)."""
    return _stream.get()


@contextlib.contextmanager
def _setting(variable, value):
    """Within the block (this thread or task), the context variable ``variable`` is ``value``."""
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


def use_stream(value):
    """Within the block (this thread or task), kernels launch on the Numba stream ``value``."""
    return _setting(_stream, value)


def to_host(x):
    """Copy a (small) CUDA array to a NumPy array, after the work queued on the launch stream:
    used to validate timesteps and read status codes."""
    stream = launch_stream()
    host = numba_view(x).copy_to_host(stream=stream)
    if stream:
        stream.synchronize()
    return host


def empty_like_library(like, shape, dtype):
    """An uninitialized array of ``shape`` and ``dtype`` from ``like``'s library, on its device."""
    library = type(like).__module__.split(".")[0]
    if library == "cupy":
        import cupy

        with cupy.cuda.Device(like.device.id):
            return cupy.empty(shape, dtype)
    if library == "torch":
        import torch

        return torch.empty(shape, dtype=getattr(torch, np.dtype(dtype).name), device=like.device)
    from numba import cuda

    return cuda.device_array(shape, dtype)


def from_host_like(like, host):
    """A copy of the small host array ``host`` in ``like``'s library, on its device."""
    device = empty_like_library(like, host.shape, host.dtype)
    library = type(device).__module__.split(".")[0]
    if library == "cupy":
        device.set(host)
    elif library == "torch":
        import torch

        device.copy_(torch.from_numpy(host))
    else:
        device.copy_to_device(host, stream=launch_stream())
    return device


def sample_shape(size):
    """The shape tuple of a ``size=`` argument (an int or a tuple of ints, NumPy's rules)."""
    if isinstance(size, (numbers.Integral, np.integer)) and not isinstance(size, bool):
        size = (size,)
    try:
        shape = tuple(int(n) for n in size)
    except TypeError:
        raise TypeError(f"size must be an int or a tuple of ints; got {size!r}") from None
    if any(n < 0 for n in shape):
        raise ValueError(f"size must be non-negative; got {size!r}")
    return shape


def refuse_masked(name, x):
    """A NumPy masked array is a TypeError: its mask would be dropped silently (JAX refuses them too)."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} is a NumPy masked array, whose mask fastgauss cannot honor; pass {name}.filled(value) or {name}.data")


def data_array(name, x, on_device):
    """Host data becomes an ndarray in the machine's byte order (a copy only for data in the
    other order: the kernels read native numbers); device arrays pass through untouched (one
    in the other order is a TypeError: no device copy is made behind the caller's back)."""
    if on_device:
        dtype = shape_dtype(x)[1]
        if not dtype.isnative:
            raise TypeError(f"{name} is a device array of dtype {dtype}, not in the machine's byte order; the kernels read native numbers")
        return x
    refuse_masked(name, x)
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:
            raise TypeError(f"{name} must be array-like; got {type(x).__name__}") from exc
    if x.dtype.kind not in "biuf":  # before any shape check, which would name another argument
        raise TypeError(f"unsupported dtype {x.dtype} for {name}; fastgauss computes in float32 or float64")
    return x if x.dtype.isnative else x.astype(x.dtype.newbyteorder("="))


def shape_dtype(x):
    """(shape, dtype) of a host ndarray or any CUDA array, without touching its data; a scalar
    passed with device arrays is a 0-d value (so a shape check names it clearly)."""
    if isinstance(x, np.ndarray):
        return x.shape, x.dtype
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None:
        return tuple(cai["shape"]), np.dtype(cai["typestr"])
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    return tuple(x.shape), np.dtype(x.dtype)  # Numba CUDA-simulator array


def result_dtype(**dtypes):
    """NumPy's result_type of the array arguments; integer/bool data becomes float64.

    Only float32 and float64 are computed natively; anything else is a TypeError. Byte order
    does not matter (data in the other order, e.g. read from a FITS file, is converted as
    NumPy's ufuncs convert it); the result is in the machine's order.
    """
    dtypes = {name: np.dtype(value).newbyteorder("=") for name, value in dtypes.items()}
    for name, value in dtypes.items():
        if value.kind not in "biu" and value not in COMPUTE_DTYPES:
            raise TypeError(f"unsupported dtype {value} for {name}; fastgauss computes in float32 or float64")
    try:
        dtype = np.result_type(*dtypes.values())
    except TypeError as exc:
        raise TypeError(f"no common dtype for {_describe(dtypes)}") from exc
    if dtype.kind in "biu":
        return np.dtype(np.float64)
    if dtype not in COMPUTE_DTYPES:
        raise TypeError(f"unsupported dtype {dtype} (from {_describe(dtypes)}); fastgauss computes in float32 or float64")
    return dtype


def _describe(dtypes):
    return ", ".join(f"{k} {np.dtype(v)}" for k, v in dtypes.items())


def size(shape):
    """Number of elements of ``shape`` as a Python int."""
    count = 1
    for n in shape:
        count *= int(n)
    return count


def same_shape(name, shape, ref_name, ref_shape):
    if tuple(shape) != tuple(ref_shape):
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref_shape)}; got {tuple(shape)}")


def schedule(value, name="schedule"):
    from fastgauss.schedules import NoiseSchedule

    if not isinstance(value, NoiseSchedule):
        raise TypeError(f"{name} must be a fastgauss.NoiseSchedule; got {type(value).__name__}")
    return value


def timesteps(t, num_timesteps, data_shape, name="t", low=0):
    """Validate timesteps against a schedule of ``num_timesteps`` and data of ``data_shape``.

    Returns a Python int for a scalar (or 0-d) t, else a host int64 array of shape
    (B,) with B = data_shape[0]. Device t is copied to the host (B integers) to be
    checked. Non-integer t is a TypeError; a wrong shape or a value outside
    [low, num_timesteps) is a ValueError.
    """
    if isinstance(t, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer or an integer array; got bool {t!r}")
    if isinstance(t, (numbers.Integral, np.integer)):
        return _timestep_scalar(int(t), num_timesteps, name, low)
    if isinstance(t, (numbers.Number, np.generic)):
        raise TypeError(f"{name} must be an integer or an integer array; got {type(t).__name__} {t!r}")
    refuse_masked(name, t)
    if is_device_array(t):
        host = to_host(t)
    else:
        host = np.asarray(t)
    if host.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer or an integer array; got an array of dtype {host.dtype}")
    if host.ndim == 0:
        return _timestep_scalar(int(host), num_timesteps, name, low)
    if host.ndim != 1 or len(data_shape) == 0 or host.shape[0] != data_shape[0]:
        batch = f"(B,) = ({data_shape[0]},)" if len(data_shape) else "(B,) with B = x.shape[0], which needs x.ndim >= 1"
        raise ValueError(f"{name} must be a scalar or have shape {batch}; got shape {host.shape}")
    bad = np.flatnonzero((host < low) | (host >= num_timesteps))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name} must be in [{low}, {num_timesteps}); {name}[{i}] = {host[i]}")
    return host.astype(np.int64)


def _timestep_scalar(value, num_timesteps, name, low=0):
    if not low <= value < num_timesteps:
        raise ValueError(f"{name} must be in [{low}, {num_timesteps}); got {value}")
    return value


# Who allocates host results: None (NumPy), or a function (shape, dtype) -> ndarray set by an
# adapter for the duration of a call (fastgauss.interop.torch lets torch allocate, and views it).
_host_allocator = contextvars.ContextVar("fastgauss_host_allocator", default=None)


def host_allocator(allocate):
    """Within the block, host results that ``output`` allocates come from ``allocate(shape, dtype)``."""
    return _setting(_host_allocator, allocate)


def output(out, shape, dtype, like, inputs, name="out"):
    """Validate ``out`` (or allocate it when None) for a result of ``shape`` and ``dtype``.

    ``out`` may be exactly one of ``inputs`` (same memory, shape and strides: an
    in-place update); any other overlap with an input is a ValueError, as are a
    wrong shape or dtype and a read-only array.
    """
    if out is None:
        if is_device_array(like):
            return empty_like_library(like, shape, dtype)
        allocate = _host_allocator.get()
        return np.empty(shape, dtype) if allocate is None else allocate(tuple(shape), np.dtype(dtype))
    if not isinstance(out, np.ndarray) and not is_device_array(out):
        raise TypeError(f"{name} must be an array; got {type(out).__name__}")
    refuse_masked(name, out)
    out_shape, out_dtype = shape_dtype(out)
    if tuple(out_shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(out_shape)}; the result has shape {tuple(shape)}")
    if out_dtype != dtype:
        raise ValueError(f"{name} has dtype {out_dtype}; the result has dtype {dtype}")
    if not writeable(out):
        raise ValueError(f"{name} is read-only")
    for input_name, value in inputs.items():
        if value is None or is_scalar(value) or not may_overlap(out, value):
            continue
        if not _same_layout(out, value):
            raise ValueError(f"{name} overlaps {input_name} without being the same array; pass a separate array or exactly {input_name}")
    return out


def writeable(a):
    if isinstance(a, np.ndarray):
        return a.flags.writeable
    cai = getattr(a, "__cuda_array_interface__", None)
    return cai is None or not cai["data"][1]


def cai_layout(a):
    """(pointer, shape, strides) from the CUDA array interface, strides made explicit."""
    cai = a.__cuda_array_interface__
    shape = tuple(cai["shape"])
    itemsize = np.dtype(cai["typestr"]).itemsize
    strides = cai.get("strides")
    if strides is None:
        strides, step = [], itemsize
        for n in reversed(shape):
            strides.insert(0, step)
            step *= n
    return cai["data"][0], shape, tuple(strides), itemsize


def _byte_range(a):
    ptr, shape, strides, itemsize = cai_layout(a)
    if 0 in shape:
        return ptr, ptr
    low = ptr + sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
    high = ptr + sum(max(0, (n - 1) * s) for n, s in zip(shape, strides)) + itemsize
    return low, high


def may_overlap(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.may_share_memory(a, b)
    if _is_simulator_array(a) or _is_simulator_array(b):
        return _is_simulator_array(a) and _is_simulator_array(b) and np.may_share_memory(a._ary, b._ary)
    (lo_a, hi_a), (lo_b, hi_b) = _byte_range(a), _byte_range(b)
    return lo_a < hi_b and lo_b < hi_a


def _same_layout(a, b):
    if isinstance(a, np.ndarray):
        return (
            a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape
            and a.strides == b.strides
            and a.dtype == b.dtype
        )
    if _is_simulator_array(a):
        return _same_layout(a._ary, b._ary)
    return cai_layout(a) == cai_layout(b) and shape_dtype(a)[1] == shape_dtype(b)[1]


def broadcast_shape(**shapes):
    """The shape that arguments of these shapes broadcast to, by NumPy's rules.

    ``shapes`` maps argument names to shapes (a Python scalar has shape ()). Shapes that
    do not broadcast are a ValueError naming every argument with its shape.
    """
    try:
        return tuple(np.broadcast_shapes(*(tuple(s) for s in shapes.values())))
    except ValueError:
        described = ", ".join(f"{name} {tuple(s)}" for name, s in shapes.items())
        raise ValueError(f"shapes do not broadcast together: {described}") from None


def broadcast_kind(shape, full_shape):
    """How an argument of ``shape`` broadcasts to ``full_shape``, seen as (rows, width)
    with rows = full_shape[0] (1 for a 0-d full shape) and width the product of the rest.

    Returns ("row", n) when every axis but the first is 1 (one value per row, n = rows;
    or one value for all, n = 1: shapes (B, 1, ..., 1), (1,), ()), ("full", n) when the
    trailing axes are full_shape's (n = rows, or 1 for one row shared by all), and
    ("other", None) for any other broadcast (e.g. one value per channel).
    """
    shape, full_shape = tuple(shape), tuple(full_shape)
    if not full_shape:
        return "row", 1
    padded = (1,) * (len(full_shape) - len(shape)) + shape
    if all(n == 1 for n in padded[1:]):
        return "row", padded[0]
    if padded[1:] == full_shape[1:]:
        return "full", padded[0]
    return "other", None


def one_row(shapes, full_shape):
    """True when every argument (by shape) is a full tensor of ``full_shape`` or a single value:
    an elementwise op may then see all of them as one row of size(full_shape) elements."""
    rows = full_shape[0] if full_shape else 1
    for shape in shapes:
        kind, lead = broadcast_kind(shape, full_shape)
        if size(shape) != 1 and not (kind == "full" and lead == rows):
            return False
    return True


# --- gradients (fastgauss.vjp) ---------------------------------------------------------------


def cotangent(value, shape, dtype, on_device, name="cotangent"):
    """The cotangent of a result of ``shape`` and ``dtype``, or None. Host data becomes an
    ndarray of ``dtype`` (a copy only to convert); a CUDA cotangent must have that dtype."""
    if value is None:
        return None
    value = data_array(name, value, on_device)
    got_shape, got_dtype = shape_dtype(value)
    if tuple(got_shape) != tuple(shape):
        raise ValueError(f"{name} must have the result's shape {tuple(shape)}; got {tuple(got_shape)}")
    if got_dtype != dtype:
        if on_device:
            raise TypeError(f"{name} must have the result's dtype {np.dtype(dtype)}; got {got_dtype}")
        value = value.astype(dtype)
    return value


def zeros_like_output(shape, dtype, like):
    """A zero array of ``shape`` and ``dtype`` of ``like``'s kind: the cotangent of an output
    that has none (a gradient asked for through another output only)."""
    if is_device_array(like):
        return from_host_like(like, np.zeros(shape, dtype))
    return np.zeros(shape, dtype)


def wanted(wrt, differentiable, op):
    """The names of ``differentiable`` (the call's differentiable array arguments, in order) to
    compute gradients for: all of them, or those named by ``wrt`` (a name or a sequence of names)."""
    differentiable = list(differentiable)
    if wrt is None:
        return differentiable
    names = [wrt] if isinstance(wrt, str) else list(wrt)
    unknown = [n for n in names if n not in differentiable]
    if unknown:
        raise ValueError(
            f"wrt names {unknown}, which is not a differentiable array argument of this {op} call; "
            f"those are {differentiable}"
        )
    return [n for n in differentiable if n in names]
