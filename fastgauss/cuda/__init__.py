"""Numba CUDA backend: @cuda.jit kernels, one module per family; imported on first use.

Inputs are taken zero-copy through ``__cuda_array_interface__`` (CuPy, PyTorch, Numba
device arrays); outputs are allocated by the input's own library on its device.
Kernels launch on the default stream, which orders them after work queued on the
legacy default stream by CuPy and PyTorch.
"""

import numpy as np
from numba import cuda
from numba.cuda.core.caching import CacheImpl

from fastgauss import _cache

_cache.install(CacheImpl)  # before any kernel is defined: cached kernels follow _device/ edits

THREADS = 256  # threads per block
MAX_GRID_X = 1024  # blocks per row: enough to fill a GPU; a grid-stride loop covers the rest
MAX_GRID_Y = 65535  # CUDA's limit for gridDim.y


def _numba_view(x):
    """A Numba device-array view of any CUDA array, without a copy."""
    if hasattr(x, "__cuda_array_interface__") and not hasattr(x, "copy_to_host"):  # CuPy, PyTorch
        return cuda.as_cuda_array(x)
    return x


def to_host(x):
    """Copy a (small) CUDA array to a NumPy array: used to validate timesteps."""
    return _numba_view(x).copy_to_host()


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
        device.copy_to_device(host)
    return device


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


def grid(rows, width, threads=THREADS):
    blocks_x = max(1, min(-(-width // threads), MAX_GRID_X))
    return (blocks_x, min(rows, MAX_GRID_Y)), threads
