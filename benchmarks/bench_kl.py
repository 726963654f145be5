"""The KL family with per-sample reductions: NumPy reference vs cpu (vs cuda) on (64, 3, 256, 256).

Rows per group: "numpy" is fastgauss's NumPy reference (the formula as written, several
passes with full-size temporaries, evaluated in float64 as the spec is); "numpy-float32"
(float32 groups) is the same formula in plain float32 NumPy with a float64 mean, what a
user would write without the reference's float64 evaluation, for context. Each compiled
float32 run also checks its per-sample results against the float64 evaluation (the
reference on float64 copies of the same inputs) and records the largest relative
deviation, which must stay below 1e-5.
"""

import math

import numpy as np
import pytest

import fastgauss
from conftest import SHAPE, gpu_ready, on_backend, run

B = SHAPE[0]
PER_SAMPLE = (B,) + (1,) * (len(SHAPE) - 1)


def kl_inputs(dtype, case):
    rng = np.random.default_rng(0)
    mean1, mean2 = (rng.standard_normal(SHAPE, dtype=dtype) for _ in range(2))
    shape = SHAPE if case == "full tensors" else PER_SAMPLE
    logvar1, logvar2 = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    return mean1, logvar1, mean2, logvar2


def image_inputs(dtype):
    """8-bit data in [-1, 1], log-scales around log(0.05), means within ~sigma of x."""
    rng = np.random.default_rng(1)
    x = (np.round(rng.uniform(-1, 1, SHAPE) * 127.5) / 127.5).astype(dtype)
    log_scales = (math.log(0.05) + 0.2 * rng.standard_normal(SHAPE)).astype(dtype)
    means = (x + np.exp(log_scales) * rng.standard_normal(SHAPE)).astype(dtype)
    return x, means, log_scales


def numpy_float32_kl(mean1, logvar1, mean2, logvar2):
    kl = 0.5 * (-1.0 + logvar2 - logvar1 + np.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * np.exp(-logvar2))
    return np.broadcast_to(kl, SHAPE).reshape(B, -1).mean(axis=1, dtype=np.float64)


def numpy_float32_discretized(x, means, log_scales):
    def cdf(z):
        return 0.5 * (1.0 + np.tanh(np.float32(math.sqrt(2.0 / math.pi)) * (z + np.float32(0.044715) * z**3)))

    centered, inv_stdv = x - means, np.exp(-log_scales)
    cdf_plus, cdf_min = cdf(inv_stdv * (centered + np.float32(1 / 255))), cdf(inv_stdv * (centered - np.float32(1 / 255)))
    log_probs = np.where(
        x < -0.999, np.log(np.maximum(cdf_plus, 1e-12)),
        np.where(x > 0.999, np.log(np.maximum(1.0 - cdf_min, 1e-12)), np.log(np.maximum(cdf_plus - cdf_min, 1e-12))),
    )
    return log_probs.reshape(B, -1).mean(axis=1, dtype=np.float64)


def timed(benchmark, backend, op, args, kwargs, numpy_float32, dtype, nbytes):
    """Benchmark ``op`` on ``backend`` (or the plain float32 NumPy formula), then check accuracy."""
    benchmark.extra_info["dtype"] = dtype.name
    if backend == "numpy-float32":
        if dtype != np.float32:
            pytest.skip("float32 only")
        run(benchmark, backend, lambda: numpy_float32(*args), nbytes)
        return
    host_args = args
    args = on_backend(backend, *args)
    out = on_backend(backend, np.empty(B, dtype))[0]
    function = getattr(fastgauss, op)
    run(benchmark, backend, lambda: function(*args, **kwargs, out=out, backend=backend), nbytes)
    if backend != "numpy" and dtype == np.float32:
        exact = function(*(a.astype(np.float64) for a in host_args), **kwargs, backend="numpy")
        got = out if isinstance(out, np.ndarray) else out.copy_to_host()
        deviation = float(np.max(np.abs(got / exact - 1)))
        benchmark.extra_info["max relative deviation from float64"] = deviation
        assert deviation < 1e-5


@pytest.fixture(params=["numpy", "numpy-float32", "cpu", "cuda"])
def kl_backend(request):
    if request.param == "cuda" and not gpu_ready():
        pytest.skip("no GPU")
    return request.param


@pytest.mark.parametrize("case", ["full tensors", "per-sample logvars"])
def test_normal_kl(benchmark, kl_backend, dtype, case):
    benchmark.group = f"normal_kl reduce=mean, {case} {dtype.name}"
    args = kl_inputs(dtype, case)
    nbytes = sum(a.nbytes for a in args) + B * dtype.itemsize  # inputs read once, (B,) written
    timed(benchmark, kl_backend, "normal_kl", args, {"reduce": "mean"}, numpy_float32_kl, dtype, nbytes)


def test_discretized_gaussian_log_likelihood(benchmark, kl_backend, dtype):
    benchmark.group = f"discretized_gaussian_log_likelihood reduce=mean {dtype.name}"
    args = image_inputs(dtype)
    nbytes = sum(a.nbytes for a in args) + B * dtype.itemsize
    timed(
        benchmark, kl_backend, "discretized_gaussian_log_likelihood", args, {"reduce": "mean"}, numpy_float32_discretized,
        dtype, nbytes,
    )


def test_normal_logpdf(benchmark, backend, dtype):
    benchmark.group = f"normal_logpdf reduce=sum, full tensors {dtype.name}"
    rng = np.random.default_rng(2)
    args = tuple(rng.standard_normal(SHAPE, dtype=dtype) for _ in range(3))
    nbytes = sum(a.nbytes for a in args) + B * dtype.itemsize
    timed(benchmark, backend, "normal_logpdf", args, {"reduce": "sum"}, None, dtype, nbytes)


def test_normal_kl_elementwise(benchmark, backend, dtype):
    """No reduction: the full-size KL written once (out= preallocated)."""
    benchmark.group = f"normal_kl elementwise, full tensors {dtype.name}"
    benchmark.extra_info["dtype"] = dtype.name
    args = kl_inputs(dtype, "full tensors")
    nbytes = 5 * args[0].nbytes
    out = np.empty(SHAPE, dtype)
    args, out = on_backend(backend, *args), on_backend(backend, out)[0]
    run(benchmark, backend, lambda: fastgauss.normal_kl(*args, out=out, backend=backend), nbytes)
