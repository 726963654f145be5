"""Timing helpers and the copy-bandwidth yardstick, shared by ``python -m fastgauss`` and benchmarks/.

Every op is timed next to a plain copy of the same arrays in the same run, so its
speed can be stated against the memory-bandwidth floor: bytes the op must move
(each input read once, each output written once) / copy bandwidth.
"""

import time
from typing import NamedTuple

import numpy as np


def _cpu_parallel_copy():
    """A prange copy: on several cores it can beat numpy.copyto, so it is the fairer floor."""
    from fastgauss.cpu import launch, parallel_copy

    return lambda src, dst: launch(parallel_copy, src, dst)


class Timing(NamedTuple):
    """Wall times of one call: ``warm_up`` (untimed for the result: compilation, first-touch
    page faults) and the timed ``runs`` after it; ``best`` is their minimum."""

    warm_up: float
    runs: tuple

    @property
    def best(self):
        return min(self.runs)


def time_runs(fn, repeats=3, synchronize=None):
    """One untimed warm-up call of ``fn()``, then ``repeats`` (at least 3) timed calls."""

    def timed():
        start = time.perf_counter()
        fn()
        if synchronize:
            synchronize()
        return time.perf_counter() - start

    warm_up = timed()
    return Timing(warm_up, tuple(timed() for _ in range(max(3, repeats))))


def best_time(fn, repeats=3, synchronize=None):
    """Best wall time of ``fn()`` over ``repeats`` (at least 3) runs after an untimed warm-up."""
    return time_runs(fn, repeats, synchronize).best


def host_copy_bandwidth(nbytes, repeats=5):
    """Bytes/s of the faster of numpy.copyto and a parallel Numba copy, counting read + write."""
    src = np.ones(max(nbytes // 8, 1), np.float64)
    dst = np.empty_like(src)
    copy = _cpu_parallel_copy()
    seconds = min(
        best_time(lambda: np.copyto(dst, src), repeats),
        best_time(lambda: copy(src, dst), repeats),
    )
    return 2 * src.nbytes / seconds


def device_copy_bandwidth(nbytes, repeats=10):
    """Bytes/s of a device-to-device copy of ``nbytes`` on the current GPU, counting read + write."""
    from numba import cuda

    src = cuda.device_array(max(nbytes // 8, 1), np.float64)
    dst = cuda.device_array_like(src)
    seconds = best_time(lambda: dst.copy_to_device(src), repeats, synchronize=cuda.synchronize)
    return 2 * src.nbytes / seconds
