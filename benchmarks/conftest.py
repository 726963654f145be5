"""Benchmark fixtures. Run: python -m pytest benchmarks --benchmark-only --benchmark-json=bench.json

Each op is timed next to a plain copy of the same number of bytes in the same run, so
benchmarks/report.py can state it against the memory-bandwidth floor.
"""

import numpy as np
import pytest

import fastgauss

SHAPE = (64, 3, 256, 256)


def gpu_ready():
    # The simulator is for tests; benchmarks need a real GPU.
    import os

    return os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and "cuda" in fastgauss.backends()


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture(params=["numpy", "cpu", "cuda"])
def backend(request):
    if request.param == "cuda" and not gpu_ready():
        pytest.skip("no GPU")
    return request.param


def on_backend(backend, *arrays):
    if backend != "cuda":
        return arrays
    from numba import cuda

    return tuple(cuda.to_device(a) for a in arrays)


def run(benchmark, backend, fn, nbytes):
    """Benchmark fn on backend, recording the bytes it must move; cuda runs are synchronized."""
    benchmark.extra_info.update(backend=backend, bytes=int(nbytes))
    if backend == "cuda":
        from numba import cuda

        def timed():
            result = fn()
            cuda.synchronize()
            return result  # the benchmarks check it

        return benchmark(timed)
    return benchmark(fn)
