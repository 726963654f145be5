"""The yardstick: a copy moving as many bytes as q_sample does (read + write), on the host and the GPU."""

import numpy as np
import pytest

from conftest import SHAPE, gpu_ready, run
from fastgauss import _bench


@pytest.mark.parametrize("how", ["numpy.copyto", "numba-prange", "cuda"])
def test_copy(benchmark, how, dtype):
    nbytes = 3 * int(np.prod(SHAPE)) * dtype.itemsize  # q_sample reads two arrays and writes one
    src = np.ones(nbytes // 16, np.float64)  # copying it reads and writes nbytes / 2 each
    benchmark.group = f"copy {dtype.name}"
    benchmark.extra_info["dtype"] = dtype.name
    if how == "cuda":
        if not gpu_ready():
            pytest.skip("no GPU")
        from numba import cuda

        src_d, dst_d = cuda.to_device(src), cuda.device_array_like(src)
        run(benchmark, "cuda", lambda: dst_d.copy_to_device(src_d), 2 * src.nbytes)
        return
    dst = np.empty_like(src)
    copy = _bench._cpu_parallel_copy() if how == "numba-prange" else (lambda a, b: np.copyto(b, a))
    run(benchmark, "host", lambda: copy(src, dst), 2 * src.nbytes)
