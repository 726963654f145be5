"""Gaussian noise: fastgauss's Generator vs NumPy's, and q_sample with in-kernel noise vs the
NumPy way (NumPy's generator, then the reference q_sample), on (64, 3, 256, 256).

In these groups the "numpy" row is NumPy's own numpy.random.Generator (PCG64, ziggurat).
"""

import numpy as np
import pytest

import fastgauss
from conftest import SHAPE, on_backend, run


def test_standard_normal(benchmark, backend, dtype):
    benchmark.group = f"standard_normal {dtype.name}"
    benchmark.extra_info["dtype"] = dtype.name
    nbytes = int(np.prod(SHAPE)) * dtype.itemsize  # the output, written once
    if backend == "numpy":
        generator = np.random.default_rng(0)
        run(benchmark, "numpy", lambda: generator.standard_normal(SHAPE, dtype=dtype), nbytes)
        return
    rng = fastgauss.default_rng(0)
    (out,) = on_backend(backend, np.empty(SHAPE, dtype))
    run(benchmark, backend, lambda: rng.standard_normal(SHAPE, dtype=dtype, out=out, backend=backend), nbytes)


@pytest.mark.parametrize("return_noise", [False, True], ids=["x_t", "x_t+noise"])
def test_q_sample_with_generated_noise(benchmark, backend, dtype, return_noise):
    benchmark.group = f"q_sample generated noise {dtype.name} {'returning noise' if return_noise else ''}".strip()
    benchmark.extra_info["dtype"] = dtype.name
    x0 = np.random.default_rng(0).standard_normal(SHAPE, dtype=dtype)
    t = np.random.default_rng(1).integers(0, 1000, size=SHAPE[0])
    schedule = fastgauss.NoiseSchedule.linear(1000)
    nbytes = (3 if return_noise else 2) * x0.nbytes  # read x0, write x_t (and the noise)
    if backend == "numpy":  # the NumPy way: NumPy's generator, then the reference
        generator = np.random.default_rng(2)

        def numpy_way():
            noise = generator.standard_normal(SHAPE, dtype=dtype)
            xt = fastgauss.q_sample(x0, t, schedule, noise, backend="numpy")
            return (xt, noise) if return_noise else xt

        run(benchmark, "numpy", numpy_way, nbytes)
        return
    rng = fastgauss.default_rng(3)
    x0, t, out = on_backend(backend, x0, t, np.empty_like(x0))
    call = lambda: fastgauss.q_sample(x0, t, schedule, rng=rng, out=out, return_noise=return_noise, backend=backend)  # noqa: E731
    run(benchmark, backend, call, nbytes)
