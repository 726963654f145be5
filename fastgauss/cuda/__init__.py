"""Numba CUDA backend: @cuda.jit kernels, one module per family; imported on first use.

Inputs are taken zero-copy through ``__cuda_array_interface__`` (CuPy, PyTorch, Numba
device arrays); outputs are allocated by the input's own library on its device.
Kernels launch on the stream of ``use_stream`` (the torch adapter passes torch's current
stream), else on the default stream, which orders them after work queued on the legacy
default stream by CuPy and PyTorch.
"""

import collections
import threading

import numpy as np
from numba import cuda, types
from numba.core.extending import overload
from numba.cuda.core.caching import CacheImpl

from fastgauss import _cache
from fastgauss._checks import empty_like_library, from_host_like, launch_stream, numba_view, to_host, use_stream  # noqa: F401


def _load_lowering_under_numpy_2_5():
    """numba-cuda 0.30 registers an overload of ``np.row_stack`` when its lowering modules load
    (at the first kernel compile), and NumPy 2.5 removed that alias of ``np.vstack``: every
    compile then fails with AttributeError (NVIDIA/numba-cuda#907, not to be fixed there).
    Load those modules now with the alias in place, then remove it: NumPy is left as it was."""
    if hasattr(np, "row_stack") or cuda.config.ENABLE_CUDASIM:
        return
    np.row_stack = np.vstack
    try:
        import numba.cuda.cudaimpl  # noqa: F401  (imports numba.cuda.np.arrayobj)
    finally:
        del np.row_stack


_load_lowering_under_numpy_2_5()
_cache.install(CacheImpl)  # before any kernel is defined: cached kernels follow _device/ edits

THREADS = 256  # threads per block (block_size launches fewer for a small problem)
MAX_GRID_X = 1024  # blocks per row: enough to fill a GPU; a grid-stride loop covers the rest
MAX_GRID_Y = 65535  # CUDA's limit for gridDim.y


def to_device(host):
    """A device copy of the host array ``host``, made on the launch stream, so it is ordered with
    the kernels of that stream (torch's, under torch)."""
    return cuda.to_device(host, stream=launch_stream())


def _device_id():
    return getattr(cuda.get_current_device(), "id", 0)  # the simulator's device has none


_NO_TIMING = {} if cuda.config.ENABLE_CUDASIM else {"timing": False}  # the simulator's event takes no options
CONSTANT_MAX_BYTES = 1 << 16  # larger host arrays are copied each call
CONSTANT_ENTRIES = 1024  # least recently used first out
_constants = collections.OrderedDict()  # (device, dtype, shape, bytes) -> (device array, its upload's event)
_constants_lock = threading.Lock()


def constant(host):
    """A read-only device copy of the small host array ``host`` (a kernel's coefficient table,
    shapes and strides, indices), from a cache keyed by its contents: a call that repeats what
    an earlier one uploaded (the same timesteps, schedule, shapes) copies nothing. An upload
    (the numba allocation and copy cost ~0.1-0.2 ms a call on an H200's host) is made on the
    launch stream and marked by an event that any later stream waits on. Kernels never write
    to these arrays."""
    host = np.ascontiguousarray(host)
    if host.nbytes > CONSTANT_MAX_BYTES:
        return to_device(host)
    stream = launch_stream()
    key = (_device_id(), host.dtype.str, host.shape, host.tobytes())
    with _constants_lock:
        entry = _constants.get(key)
        if entry is not None:
            _constants.move_to_end(key)
    if entry is not None:
        array, uploaded = entry
        uploaded.wait(stream)  # ordered after the upload, whichever stream made it
        return array
    array = cuda.to_device(host, stream=stream)
    uploaded = cuda.event(**_NO_TIMING)
    uploaded.record(stream)
    with _constants_lock:
        _constants[key] = (array, uploaded)
        while len(_constants) > CONSTANT_ENTRIES:
            _constants.popitem(last=False)
    return array


_placeholders = {}  # (device, shape, dtype) -> device array


def placeholder(shape, dtype):
    """A device array standing for an output that a kernel is told not to write (a gradient not
    wanted, an x0 not returned): one per shape and dtype, kept, not allocated each call."""
    key = (_device_id(), tuple(np.atleast_1d(shape)), np.dtype(dtype).str)
    array = _placeholders.get(key)
    if array is None:
        array = _placeholders.setdefault(key, cuda.device_array(shape, dtype))
    return array


# The array-kind helpers live in fastgauss._checks (below the backends); the cuda modules
# use them under these names.
_numba_view = numba_view


def as_rows(name, a, rows):
    """A (rows, width) Numba device view of ``a``; its trailing axes must merge without a copy."""
    view = _numba_view(a)
    try:
        return view.reshape(rows, -1) if view.size else view
    except NotImplementedError as exc:  # Numba cannot reshape non-contiguous device arrays
        raise ValueError(f"{name}: non-contiguous CUDA arrays are not supported; pass a C-contiguous array") from exc


def as_flat(name, a):
    """A 1-D Numba device view of a C-contiguous CUDA array."""
    view = _numba_view(a)
    try:
        return view.reshape(view.size)
    except NotImplementedError as exc:
        raise ValueError(f"{name}: non-contiguous CUDA arrays are not supported; pass a C-contiguous array") from exc


def rounded_product(a, b):
    """a b rounded by itself, never fused with the sum it feeds into one FMA: the CUDA target's
    ``product`` of fastgauss._device.random and .diffusion (libdevice's fmul_rn / dmul_rn, PTX
    mul.rn). NVVM fuses a plain a * b + c; the CPU rounds twice; with this the GPU does too, so
    both give the same bits. Under the simulator: the plain product."""
    return a * b


@overload(rounded_product, target="cuda", inline="always")
def _rounded_product_cuda(a, b):
    from numba.cuda import libdevice
    from numba.np.numpy_support import as_dtype

    if not (isinstance(a, types.Number) and isinstance(b, types.Number)):
        return None
    result = np.result_type(as_dtype(a), as_dtype(b))  # the type of a * b (an integer x0 is float64's)
    if result == np.float32:
        return lambda a, b: libdevice.fmul_rn(np.float32(a), np.float32(b))
    if result == np.float64:
        return lambda a, b: libdevice.dmul_rn(np.float64(a), np.float64(b))
    return lambda a, b: a * b  # integers (exact) and complex (never here)


def block_size(count, threads=THREADS):
    """Threads per block for ``count`` items: ``threads``, or for fewer items the smallest power of
    two (at least a warp, 32) that covers them, so a small problem does not launch idle threads."""
    return min(threads, max(32, 1 << (count - 1).bit_length()))


def grid(rows, width, threads=None):
    """(blocks, threads) for a (rows, width) kernel: block y = row, a grid-stride loop along x.
    ``threads``: the block size (default: block_size(width))."""
    threads = block_size(width) if threads is None else threads
    blocks_x = max(1, min(-(-width // threads), MAX_GRID_X))
    return (blocks_x, min(rows, MAX_GRID_Y)), threads
