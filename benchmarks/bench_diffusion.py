"""q_sample: NumPy reference vs cpu (vs cuda) on (64, 3, 256, 256)."""

import numpy as np
import pytest

import fastgauss
from conftest import SHAPE, on_backend, run


@pytest.mark.parametrize("given_out", [True, False], ids=["out", "alloc"])
def test_q_sample(benchmark, backend, dtype, given_out):
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(SHAPE, dtype=dtype)
    noise = rng.standard_normal(SHAPE, dtype=dtype)
    t = rng.integers(0, 1000, size=SHAPE[0])
    schedule = fastgauss.NoiseSchedule.linear(1000)
    x0, noise, t, out = on_backend(backend, x0, noise, t, np.empty_like(x0))
    kwargs = dict(out=out) if given_out else {}
    benchmark.group = f"q_sample {dtype.name} {'out=' if given_out else 'allocating'}"
    benchmark.extra_info["dtype"] = dtype.name
    run(benchmark, backend, lambda: fastgauss.q_sample(x0, t, schedule, noise, backend=backend, **kwargs), 3 * x0.nbytes)
