"""Gradients of the multivariate normals: mvn_sample forward + backward against PyTorch eager.

The reparameterized sample x = mean + L eps (L = cholesky(cov)) of 100k 4x4 covariances,
float32, with mean and cov requiring grad: fastgauss's fused forward kernel (noise drawn in
the kernel), then its VJP (fastgauss.mvn._vjp_mvn_sample: noise regenerated from the restored
generator, factor, factor gradient and Cholesky's reverse pass in one kernel pass); against
torch.linalg.cholesky + matmul with torch.randn noise and autograd's backward, on the same
threads (torch.set_num_threads(2) on the CPU). The issue's target: >= 5x on 2 cores. The cuda
rows run on a GPU with a CUDA build of torch, else they skip.
"""

import numpy as np
import pytest

import fastgauss
from conftest import gpu_ready, on_backend, run

BATCH = 100_000
D = 4
THREADS = 2


def inputs(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((BATCH, D, D))
    cov = (a @ np.swapaxes(a, -1, -2) / D + 0.5 * np.eye(D)).astype(dtype)
    mean = rng.standard_normal((BATCH, D)).astype(dtype)
    cotangent = rng.standard_normal((BATCH, D)).astype(dtype)
    return mean, cov, cotangent


def bytes_moved(mean, cov):
    """Forward: read mean and cov, write x; backward: read the cotangent, mean's shape and cov, write
    both gradients."""
    return 3 * cov.nbytes + 4 * mean.nbytes


@pytest.mark.parametrize("backend", ["torch", "cpu", "cuda"])
def test_mvn_sample_forward_backward(benchmark, backend):
    benchmark.group = f"mvn_sample forward + backward, {BATCH // 1000}k {D}x{D} float32, grad to mean and cov (torch: cholesky + matmul + autograd)"
    benchmark.extra_info["dtype"] = "float32"
    mean, cov, cotangent = inputs()
    nbytes = bytes_moved(mean, cov)
    if backend == "torch":
        torch = pytest.importorskip("torch")
        torch.set_num_threads(THREADS)
        mean_t, cov_t = (torch.from_numpy(a).requires_grad_() for a in (mean, cov))
        g = torch.from_numpy(cotangent)
        generator = torch.Generator().manual_seed(1)

        def torch_way():
            mean_t.grad = cov_t.grad = None
            eps = torch.randn(mean_t.shape, generator=generator, dtype=mean_t.dtype)
            L = torch.linalg.cholesky(cov_t)
            x = mean_t + (L @ eps[..., None])[..., 0]
            x.backward(g)
            return mean_t.grad, cov_t.grad

        run(benchmark, "torch", torch_way, nbytes)
        return
    if backend == "cuda" and not gpu_ready():
        pytest.skip("no GPU")
    mean, cov, cotangent = on_backend(backend, mean, cov, cotangent)
    generator = fastgauss.default_rng(2)

    def fastgauss_way():
        start = generator.state
        fastgauss.mvn_sample(mean, cov, rng=generator, backend=backend)
        generator.state = start  # what the torch adapter does: the backward replays the forward's stream
        grads = fastgauss.mvn._vjp_mvn_sample(cotangent, mean, cov, rng=generator, backend=backend)
        return grads["mean"], grads["cov"]

    run(benchmark, backend, fastgauss_way, nbytes)


def test_mvn_sample_forward_backward_torch_cuda(benchmark):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    benchmark.group = f"mvn_sample forward + backward, {BATCH // 1000}k {D}x{D} float32, grad to mean and cov (torch: cholesky + matmul + autograd)"
    benchmark.extra_info["dtype"] = "float32"
    mean, cov, cotangent = inputs()
    mean_t, cov_t = (torch.from_numpy(a).cuda().requires_grad_() for a in (mean, cov))
    g = torch.from_numpy(cotangent).cuda()

    def torch_cuda():
        mean_t.grad = cov_t.grad = None
        eps = torch.randn(mean_t.shape, device="cuda", dtype=mean_t.dtype)
        x = mean_t + (torch.linalg.cholesky(cov_t) @ eps[..., None])[..., 0]
        x.backward(g)
        torch.cuda.synchronize()

    benchmark.extra_info.update(backend="torch cuda", bytes=int(bytes_moved(mean, cov)))
    benchmark(torch_cuda)
