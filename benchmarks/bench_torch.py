"""Forward + backward through the torch adapter against PyTorch eager of the same formula (issue 11).

Each group times one training-step fragment in float32, side by side in one run: the op on leaf
tensors that require grad, ``.sum()`` of the result, and ``torch.autograd.grad`` of it. Rows:
"fastgauss" (the op through fastgauss.interop.torch: the forward kernel, then the fused backward
kernel) and "torch" (the formula written with torch ops, autograd's own backward), with
torch.set_num_threads(2) for the CPU rows. On a lent GPU the same groups run with CUDA tensors
("cuda" rows, against torch CUDA eager). Targets (issue 11): normal_kl reduce="mean" >= 5x,
discretized_gaussian_log_likelihood reduce="mean" >= 10x, q_sample >= 3x, mvn_sample on 100k
4x4 covariances (mean and cov requiring grad) >= 5x torch's cholesky + matmul.

Run: python -m pytest benchmarks/bench_torch.py --benchmark-only --benchmark-json=bench.json
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install fastgauss[torch])")

import fastgauss  # noqa: E402
from fastgauss import mvn  # noqa: E402
from conftest import SHAPE  # noqa: E402

SCHEDULE = fastgauss.NoiseSchedule.linear(1000)
MVN_BATCH, MVN_DIM = 100_000, 4


@pytest.fixture(autouse=True, scope="module")
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA build of torch or no GPU")
    return torch.device(request.param)


def leaf(a, device, grad=True):
    return torch.from_numpy(np.ascontiguousarray(a)).to(device).requires_grad_(grad)


def fragment(function, inputs):
    """Forward, sum, backward: the gradients of every input that requires grad."""

    def run():
        loss = function(*inputs).sum()
        grads = torch.autograd.grad(loss, [a for a in inputs if a.requires_grad])
        if grads[0].is_cuda:
            torch.cuda.synchronize()
        return grads

    return run


def bench(benchmark, group, implementation, device, run):
    benchmark.group = f"{group} float32 forward+backward"
    benchmark.extra_info.update(implementation=implementation, device=device.type, shape=str(SHAPE))
    benchmark(run)


# --- the formulas in torch ops -------------------------------------------------------------


def torch_normal_kl_mean(mean1, logvar1, mean2, logvar2):
    kl = 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))
    return kl.reshape(kl.shape[0], -1).mean(1)


def torch_discretized_mean(x, means, log_scales):
    def cdf(z):
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))

    centered, inv_stdv = x - means, torch.exp(-log_scales)
    cdf_plus, cdf_min = cdf(inv_stdv * (centered + 1.0 / 255)), cdf(inv_stdv * (centered - 1.0 / 255))
    log_probs = torch.where(
        x < -0.999, torch.log(cdf_plus.clamp(min=1e-12)),
        torch.where(x > 0.999, torch.log((1.0 - cdf_min).clamp(min=1e-12)), torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return log_probs.reshape(log_probs.shape[0], -1).mean(1)


# --- the groups ---------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["fastgauss", "torch"])
def test_normal_kl_mean(benchmark, implementation, device):
    rng = np.random.default_rng(0)
    inputs = [leaf(rng.standard_normal(SHAPE, dtype=np.float32), device) for _ in range(4)]
    function = (lambda *a: fastgauss.normal_kl(*a, reduce="mean")) if implementation == "fastgauss" else torch_normal_kl_mean
    bench(benchmark, "normal_kl reduce=mean", implementation, device, fragment(function, inputs))


@pytest.mark.parametrize("implementation", ["fastgauss", "torch"])
def test_discretized_mean(benchmark, implementation, device):
    rng = np.random.default_rng(1)
    x = (np.round(rng.uniform(-1, 1, SHAPE) * 127.5) / 127.5).astype(np.float32)
    log_scales = (math.log(0.05) + 0.2 * rng.standard_normal(SHAPE)).astype(np.float32)
    means = (x + np.exp(log_scales) * rng.standard_normal(SHAPE)).astype(np.float32)
    inputs = [leaf(x, device, grad=False), leaf(means, device), leaf(log_scales, device)]
    if implementation == "fastgauss":
        function = lambda *a: fastgauss.discretized_gaussian_log_likelihood(*a, reduce="mean")  # noqa: E731
    else:
        function = torch_discretized_mean
    bench(benchmark, "discretized_gaussian_log_likelihood reduce=mean", implementation, device, fragment(function, inputs))


@pytest.mark.parametrize("implementation", ["fastgauss", "torch"])
def test_q_sample(benchmark, implementation, device):
    rng = np.random.default_rng(2)
    x0, noise = (leaf(rng.standard_normal(SHAPE, dtype=np.float32), device) for _ in range(2))
    t = torch.from_numpy(rng.integers(0, 1000, SHAPE[0])).to(device)
    if implementation == "fastgauss":
        function = lambda a, b: fastgauss.q_sample(a, t, SCHEDULE, b)  # noqa: E731
    else:
        shape = (-1,) + (1,) * (len(SHAPE) - 1)
        signal = torch.from_numpy(SCHEDULE.sqrt_alphas_cumprod.astype(np.float32)).to(device)[t].reshape(shape)
        scale = torch.from_numpy(SCHEDULE.sqrt_one_minus_alphas_cumprod.astype(np.float32)).to(device)[t].reshape(shape)
        function = lambda a, b: signal * a + scale * b  # noqa: E731
    bench(benchmark, "q_sample (noise given)", implementation, device, fragment(function, [x0, noise]))


@pytest.mark.skipif(not hasattr(mvn, "_vjp_mvn_sample"), reason="mvn vjps not merged yet")
@pytest.mark.parametrize("implementation", ["fastgauss", "torch"])
def test_mvn_sample(benchmark, implementation, device):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((MVN_BATCH, MVN_DIM, MVN_DIM)).astype(np.float32)
    cov = a @ a.transpose(0, 2, 1) + MVN_DIM * np.eye(MVN_DIM, dtype=np.float32)
    inputs = [leaf(rng.standard_normal((MVN_BATCH, MVN_DIM), dtype=np.float32), device), leaf(cov, device)]
    noise = torch.from_numpy(rng.standard_normal((MVN_BATCH, MVN_DIM), dtype=np.float32)).to(device)
    if implementation == "fastgauss":
        function = lambda m, c: fastgauss.mvn_sample(m, c, noise=noise)  # noqa: E731
    else:
        function = lambda m, c: m + (torch.linalg.cholesky(c) @ noise.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    benchmark.extra_info["batch"] = f"{MVN_BATCH} x {MVN_DIM}x{MVN_DIM}"
    bench(benchmark, "mvn_sample (mean, cov require grad)", implementation, device, fragment(function, inputs))
