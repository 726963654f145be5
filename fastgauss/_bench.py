"""Timing helpers and the copy-bandwidth yardstick, shared by ``python -m fastgauss`` and benchmarks/.

Every op is timed next to a plain copy of the same arrays in the same run, so its
speed can be stated against the memory-bandwidth floor: bytes the op must move
(each input read once, each output written once) / copy bandwidth.
"""

import time

import numpy as np

def _cpu_parallel_copy():
    """A prange copy: on several cores it can beat numpy.copyto, so it is the fairer floor."""
    from fastgauss.cpu import launch, parallel_copy

    return lambda src, dst: launch(parallel_copy, src, dst)


def best_time(fn, repeats, min_seconds=0.0, synchronize=None, max_seconds=None, warm_up=True):
    """Best wall time of ``fn()`` over ``repeats`` runs (more while under ``min_seconds``;
    fewer, but at least one, once ``max_seconds`` are spent)."""
    if warm_up:  # compilation and first-touch page faults stay out of the numbers
        fn()
        if synchronize:
            synchronize()
    best, spent, runs = float("inf"), 0.0, 0
    while runs < repeats or spent < min_seconds:
        start = time.perf_counter()
        fn()
        if synchronize:
            synchronize()
        elapsed = time.perf_counter() - start
        best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
        if max_seconds is not None and spent >= max_seconds:
            break
    return best


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
