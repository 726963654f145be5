"""ddpm_step and ddim_step on (64, 3, 256, 256) float32: cpu (and cuda) vs the NumPy reference.

With in-kernel noise the "numpy" row is the NumPy way: NumPy's generator draws the noise,
then the reference step runs.
"""

import numpy as np
import pytest

import fastgauss
from conftest import SHAPE, on_backend, run

DTYPE = np.dtype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    model, xt, noise = (rng.standard_normal(SHAPE, dtype=DTYPE) for _ in range(3))
    return model, xt, noise, rng.integers(1, 1000, size=SHAPE[0])


@pytest.mark.parametrize("op", ["ddpm_step", "ddim_step"])
def test_step_given_noise(benchmark, backend, data, op):
    model, xt, noise, t = data
    schedule = fastgauss.NoiseSchedule.linear(1000)
    benchmark.group = f"{op} given noise float32"
    benchmark.extra_info["dtype"] = DTYPE.name
    model, xt, noise, t, t_prev, out = on_backend(backend, model, xt, noise, t, t - 1, np.empty_like(xt))
    times = (t,) if op == "ddpm_step" else (t, t_prev)
    kwargs = dict(noise=noise) if op == "ddpm_step" else dict(noise=noise, eta=1.0)
    if backend != "numpy":  # the reference allocates its output, as NumPy code does
        kwargs["out"] = out
    step = getattr(fastgauss, op)
    nbytes = 4 * DTYPE.itemsize * int(np.prod(SHAPE))  # read model output, x_t, noise; write x_prev
    run(benchmark, backend, lambda: step(model, xt, *times, schedule, backend=backend, **kwargs), nbytes)


def test_ddpm_step_generated_noise(benchmark, backend, data):
    model, xt, _, t = data
    schedule = fastgauss.NoiseSchedule.linear(1000)
    benchmark.group = "ddpm_step generated noise float32"
    benchmark.extra_info["dtype"] = DTYPE.name
    nbytes = 3 * xt.nbytes  # read model output and x_t, write x_{t-1}
    if backend == "numpy":
        generator = np.random.default_rng(1)

        def numpy_way():
            return fastgauss.ddpm_step(model, xt, t, schedule, noise=generator.standard_normal(SHAPE, dtype=DTYPE), backend="numpy")

        run(benchmark, "numpy", numpy_way, nbytes)
        return
    rng = fastgauss.default_rng(1)
    model, xt, t, out = on_backend(backend, model, xt, t, np.empty_like(xt))
    run(benchmark, backend, lambda: fastgauss.ddpm_step(model, xt, t, schedule, rng=rng, out=out, backend=backend), nbytes)
