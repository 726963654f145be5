"""Numba CUDA backend: @cuda.jit kernels, one module per family; imported on first use.

Inputs are taken zero-copy through ``__cuda_array_interface__`` (CuPy, PyTorch, Numba
device arrays); outputs are allocated by the input's own library on its device.
Kernels launch on the stream of ``use_stream`` (the torch adapter passes torch's current
stream), else on the default stream, which orders them after work queued on the legacy
default stream by CuPy and PyTorch.
"""

import numpy as np
from numba import cuda
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
    """A device copy of the small host array ``host`` (a kernel's table or geometry), made on the
    launch stream, so it is ordered with the kernels of that stream (torch's, under torch)."""
    return cuda.to_device(host, stream=launch_stream())


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
