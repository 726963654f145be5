"""On a real GPU only: PyTorch CUDA tensors (issue 11) and CuPy chunks of Dask arrays (issue 13).

The CUDA simulator cannot take torch or CuPy device memory, so these tests skip without a GPU
(CI); ci/gpu.sh runs them on a lent one. What they hold the cuda backend to:

- torch CUDA tensors in, torch CUDA tensors out on the same device, zero-copy (``out=`` is
  written in place; results are allocated by torch), launched on torch's current stream (a
  queued fill on a side stream is seen without any synchronization);
- autograd on CUDA tensors: float64 gradcheck of a representative op of each family, and the
  gradients equal the NumPy reference's within 1e-10 relative;
- Generator methods filling a CUDA tensor;
- Dask arrays of CuPy chunks: lazy CuPy-chunked results, bitwise the in-memory CuPy call for
  any chunking (noise drawn in the kernels included), per-sample reductions within 1e-12.
"""

import numpy as np
import pytest

from conftest import SIMULATOR

import fastgauss

pytestmark = pytest.mark.skipif(SIMULATOR or "cuda" not in fastgauss.backends(), reason="needs a real GPU")

SCHEDULE = fastgauss.NoiseSchedule.linear(1000)


def _torch_cuda():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA build of torch")
    return torch


def _cupy():
    return pytest.importorskip("cupy", reason="CuPy is not installed")


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-300)


# --- torch CUDA tensors ----------------------------------------------------------------------------


def test_cuda_tensors_in_cuda_tensors_out_zero_copy():
    torch = _torch_cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    x0 = torch.randn(4, 3, 8, 8, device="cuda", generator=g)
    noise = torch.randn(4, 3, 8, 8, device="cuda", generator=g)
    t = torch.tensor([0, 10, 500, 999], device="cuda")
    xt = fastgauss.q_sample(x0, t, SCHEDULE, noise)
    assert isinstance(xt, torch.Tensor) and xt.device == x0.device and xt.dtype == torch.float32
    want = fastgauss.q_sample(x0.cpu().numpy(), t.cpu().numpy(), SCHEDULE, noise.cpu().numpy(), backend="numpy")
    assert rel_err(xt.cpu(), want) <= 1e-6
    pointer = x0.data_ptr()
    assert fastgauss.q_sample(x0, t, SCHEDULE, noise, out=x0) is x0 and x0.data_ptr() == pointer
    torch.testing.assert_close(x0, xt, rtol=0, atol=0)
    out = torch.empty(4, device="cuda")
    assert fastgauss.normal_kl(x0, 0.0, noise, 0.0, reduce="sum", out=out) is out
    want = fastgauss.normal_kl(x0.cpu().numpy(), 0.0, noise.cpu().numpy(), 0.0, reduce="sum", backend="numpy")
    assert rel_err(out.cpu(), want) <= 1e-5
    allocations = []
    real_empty = torch.empty
    try:  # results are allocated by torch, on the inputs' device
        torch.empty = lambda *a, **k: allocations.append(k.get("device")) or real_empty(*a, **k)
        result = fastgauss.normal_logpdf(x0, 0.0, 0.0)
    finally:
        torch.empty = real_empty
    assert result.device == x0.device and allocations, allocations
    assert all(d is not None and torch.device(d) == x0.device for d in allocations), allocations
    with pytest.raises(TypeError, match=r"torch tensors \(x0\).*other arrays \(noise\)"):
        fastgauss.q_sample(x0, 3, SCHEDULE, np.zeros((4, 3, 8, 8), np.float32))


def test_cuda_kernels_run_on_torchs_current_stream():
    """A side stream sleeps, then fills x; the op, called under that stream, must see the fill
    (on any other stream it would read x before the fill lands)."""
    torch = _torch_cuda()
    x = torch.zeros(1 << 22, device="cuda")
    side = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU cycles
        x.fill_(2.0)
        kl = fastgauss.normal_kl(x, 0.0, 0.0, 0.0)  # 0.5 * x**2
        total = kl.sum()
    side.synchronize()
    assert total.item() == pytest.approx(2.0 * x.numel(), rel=1e-6)


def test_generator_fills_a_cuda_tensor():
    torch = _torch_cuda()
    out = torch.empty(5, 7, device="cuda")
    assert fastgauss.default_rng(12).standard_normal(dtype=np.float32, out=out, backend="cuda") is out
    want = fastgauss.default_rng(12).standard_normal((5, 7), dtype=np.float32, backend="cuda").copy_to_host()
    np.testing.assert_array_equal(out.cpu().numpy(), want)


def _grad_pairs(torch, function, arrays, constant=0, seed=3):
    """Gradients of sum(function(*arrays) * cotangent) on CUDA tensors and on the NumPy reference,
    for every array but the first ``constant`` ones."""
    cuda_inputs = [torch.tensor(a, device="cuda", requires_grad=i >= constant) for i, a in enumerate(arrays)]
    host_inputs = [torch.tensor(a, requires_grad=i >= constant) for i, a in enumerate(arrays)]
    result = function(*cuda_inputs)
    assert result.is_cuda and result.grad_fn is not None
    cotangent = torch.from_numpy(np.random.default_rng(seed).standard_normal(tuple(result.shape)))
    got = torch.autograd.grad(result, cuda_inputs[constant:], cotangent.cuda())
    with fastgauss.use_backend("numpy"):
        want = torch.autograd.grad(function(*host_inputs), host_inputs[constant:], cotangent)
    return got, want


def test_autograd_on_cuda_tensors_matches_the_reference():
    torch = _torch_cuda()
    rng = np.random.default_rng(0)
    t = np.array([3, 400, 999])
    shape = (3, 2, 5)
    a, b, c, d = (rng.standard_normal(shape) * 0.5 for _ in range(4))
    levels = np.clip(np.round(a * 127.5) / 127.5, -1, 1)
    cases = [  # (function, arrays, how many leading arrays get no gradient)
        (lambda u, w: fastgauss.q_sample(u, torch.as_tensor(t, device=u.device), SCHEDULE, w), [a, b], 0),
        (lambda *k: fastgauss.normal_kl(*k, reduce="mean"), [a, b, c, d], 0),
        (lambda m, x, n: fastgauss.ddim_step(m, x, torch.as_tensor(t, device=m.device), torch.as_tensor(t - 2, device=m.device), SCHEDULE, eta=0.5, noise=n, clip=1.0), [a, b, c], 0),
        (lambda x, m, s: fastgauss.discretized_gaussian_log_likelihood(x, m, s, reduce="sum"), [levels, b * 0.1, -1.0 + 0.1 * c], 1),
    ]
    for function, arrays, constant in cases:
        got, want = _grad_pairs(torch, function, arrays, constant)
        for g, w in zip(got, want):
            assert rel_err(g.cpu(), w) <= 1e-10
    mean = rng.standard_normal((6, 3))
    m = rng.standard_normal((6, 3, 3))
    cov = m @ np.swapaxes(m, -1, -2) + np.eye(3)
    noise = rng.standard_normal((6, 3))
    got, want = _grad_pairs(torch, lambda mu, c: fastgauss.mvn_sample(mu, c, noise=torch.as_tensor(noise, device=mu.device)), [mean, cov])
    for g, w in zip(got, want):
        assert rel_err(g.cpu(), w) <= 1e-10


def test_gradcheck_on_cuda_tensors():
    torch = _torch_cuda()
    g = torch.Generator(device="cuda").manual_seed(1)
    args = [(0.5 * torch.randn(3, 2, 4, device="cuda", dtype=torch.float64, generator=g)).requires_grad_() for _ in range(4)]
    assert torch.autograd.gradcheck(lambda *k: fastgauss.normal_kl(*k, reduce="mean"), args, fast_mode=True)
    t = torch.tensor([1, 50, 900], device="cuda")
    assert torch.autograd.gradcheck(lambda u: fastgauss.q_sample(u, t, SCHEDULE, rng=5), args[:1], fast_mode=True)


# --- CuPy and Dask arrays of CuPy chunks -------------------------------------------------------------


def test_cupy_in_cupy_out():
    cupy = _cupy()
    x0 = cupy.asarray(np.random.default_rng(1).standard_normal((4, 3, 16), dtype=np.float32))
    t = cupy.asarray([0, 5, 500, 999])
    xt = fastgauss.q_sample(x0, t, SCHEDULE, rng=7)
    assert isinstance(xt, cupy.ndarray) and xt.dtype == np.float32
    want = fastgauss.q_sample(cupy.asnumpy(x0), cupy.asnumpy(t), SCHEDULE, rng=7, backend="numpy")
    assert rel_err(cupy.asnumpy(xt), want) <= 1e-5


def _dask():
    return pytest.importorskip("dask.array", reason="dask is not installed")


@pytest.mark.parametrize("chunks", [(2, 3, 64), (1, 1, 7), (3, 2, 1)])
def test_dask_arrays_of_cupy_chunks(chunks):
    cupy, da = _cupy(), _dask()
    host = np.random.default_rng(2).standard_normal((4, 3, 64))
    x0 = cupy.asarray(host)
    t = np.array([0, 5, 500, 999])
    lazy_x0 = da.from_array(x0, chunks=chunks, asarray=False)
    lazy = fastgauss.q_sample(lazy_x0, t, SCHEDULE, rng=fastgauss.default_rng(9))
    assert isinstance(lazy._meta, cupy.ndarray)
    got = lazy.compute(scheduler="synchronous")
    assert isinstance(got, cupy.ndarray)
    want = fastgauss.q_sample(x0, cupy.asarray(t), SCHEDULE, rng=fastgauss.default_rng(9))
    np.testing.assert_array_equal(cupy.asnumpy(got), cupy.asnumpy(want))  # noise drawn in the kernel, any chunking
    kl = fastgauss.normal_kl(lazy_x0, 0.1, 0.0, -0.2, reduce="mean").compute(scheduler="threads")
    want = fastgauss.normal_kl(x0, 0.1, 0.0, -0.2, reduce="mean")
    assert isinstance(kl, cupy.ndarray) and rel_err(cupy.asnumpy(kl), cupy.asnumpy(want)) <= 1e-12
    z = fastgauss.default_rng(4).standard_normal((5, 33), np.float32, chunks=(2, 8), backend="cuda")
    assert isinstance(z._meta, cupy.ndarray)
    want = fastgauss.default_rng(4).standard_normal((5, 33), np.float32, backend="cuda").copy_to_host()
    np.testing.assert_array_equal(cupy.asnumpy(z.compute(scheduler="synchronous")), want)
