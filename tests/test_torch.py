"""PyTorch interop (issue 11): tensors in and out, autograd through fastgauss's backward kernels.

- torch.autograd.gradcheck (float64) of every differentiable op I/O of the diffusion and KL
  families, every argument, reduce mode and broadcast form, on the NumPy reference (no compile)
  and a representative set on the cpu kernels;
- fastgauss.vjp against torch autograd of the same formula written in torch ops, float64,
  1e-10 relative to the gradient's largest magnitude, on numpy and cpu;
- the adapter: tensors out, zero-copy views and out=, torch-allocated results, TypeErrors
  for mixing and for float16/bfloat16, no torch import by fastgauss, no backward work and no
  saved tensors without requires_grad, double backward refused;
- the mvn part (and the VAE training smoke test) once the mvn VJPs are merged.
"""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install fastgauss[torch])")

import fastgauss  # noqa: E402
from fastgauss import mvn  # noqa: E402

SCHEDULE = fastgauss.NoiseSchedule.cosine(50)
T = torch.tensor([3, 25, 49])
B, C, W = 3, 2, 4  # tiny: gradcheck evaluates the forward twice per input element


def randn(*shape, dtype=torch.float64, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed + 7 * len(shape) + sum(shape))
    return (scale * torch.randn(tuple(shape), generator=g, dtype=dtype)).requires_grad_()


def table(name, t=T, ndim=3):
    """schedule.<name>[t] as a float64 tensor shaped (B, 1, ..., 1)."""
    return torch.from_numpy(getattr(SCHEDULE, name)[t.numpy()]).reshape((-1,) + (1,) * (ndim - 1))


# --- the formulas in torch (the improved-diffusion / diffusers expressions) -----------------------


def torch_normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def torch_normal_logpdf(x, mean, logvar):
    return -0.5 * (np.log(2 * np.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def torch_cdf(x):
    return 0.5 * (1.0 + torch.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def torch_discretized(x, means, log_scales, bins=255):
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = torch_cdf(inv_stdv * (centered + 1.0 / bins))
    cdf_min = torch_cdf(inv_stdv * (centered - 1.0 / bins))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def reduced(values, reduce):
    if reduce is None:
        return values
    rows = values.reshape(values.shape[0], -1)
    return rows.sum(1) if reduce == "sum" else rows.mean(1)


def torch_linear(op, u, w):
    sa, sn = table("sqrt_alphas_cumprod"), table("sqrt_one_minus_alphas_cumprod")
    return {
        "q_sample": lambda: sa * u + sn * w,
        "q_posterior": lambda: table("posterior_mean_coef1") * u + table("posterior_mean_coef2") * w,
        "predict_x0": lambda: (u - sn * w) / sa,
        "predict_eps": lambda: (u - sa * w) / sn,
        "predict_v": lambda: sa * w - sn * u,
        "v_to_x0": lambda: sa * u - sn * w,
        "v_to_eps": lambda: sa * w + sn * u,
        "posterior_mean_from_eps": lambda: (u - table("betas") / sn * w) / torch.sqrt(table("alphas")),
    }[op]()


def torch_x0_eps(model, xt, prediction, sa, sn):
    if prediction == "epsilon":
        return (xt - sn * model) / sa, model
    if prediction == "sample":
        return model, (xt - sa * model) / sn
    return sa * xt - sn * model, sa * model + sn * xt


def torch_ddpm(model, xt, noise, prediction, clip):
    x0, _ = torch_x0_eps(model, xt, prediction, table("sqrt_alphas_cumprod"), table("sqrt_one_minus_alphas_cumprod"))
    x0 = x0 if clip is None else x0.clamp(-clip, clip)
    std = torch.sqrt(table("posterior_variance").clamp(min=1e-20))
    return table("posterior_mean_coef1") * x0 + table("posterior_mean_coef2") * xt + std * noise


def torch_ddim(model, xt, noise, prediction, clip, eta, t_prev):
    abar = table("alphas_cumprod")
    abar_prev = table("alphas_cumprod", t_prev)
    x0, eps = torch_x0_eps(model, xt, prediction, abar.sqrt(), (1 - abar).sqrt())
    x0 = x0 if clip is None else x0.clamp(-clip, clip)
    sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
    return abar_prev.sqrt() * x0 + torch.sqrt(1 - abar_prev - sigma**2) * eps + sigma * noise


LINEAR = {
    "q_sample": ("x0", "noise"),
    "q_posterior": ("x0", "xt"),
    "predict_x0": ("xt", "eps"),
    "predict_eps": ("xt", "x0"),
    "predict_v": ("x0", "eps"),
    "v_to_x0": ("xt", "v"),
    "v_to_eps": ("xt", "v"),
    "posterior_mean_from_eps": ("xt", "eps"),
}


def linear_call(op, u, w, t=T):
    """fastgauss.<op> with its two arrays u, w (in LINEAR's order) and t, in its own argument order."""
    function = getattr(fastgauss, op)
    if op in ("q_sample",):
        return function(u, t, SCHEDULE, w)
    if op in ("q_posterior", "predict_v"):
        result = function(u, w, t, SCHEDULE)
        return result[0] if op == "q_posterior" else result
    return function(u, t, w, SCHEDULE)


def assert_close(got, want, rtol):
    got, want = (np.asarray(a.detach() if isinstance(a, torch.Tensor) else a, np.float64) for a in (got, want))
    scale = max(np.abs(want).max(), 1e-300)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= rtol * scale, (np.abs(got - want).max() / scale, got, want)


# --- gradcheck: every op, argument, reduce mode and broadcast form ---------------------------------


@pytest.mark.parametrize("op", list(LINEAR))
def test_gradcheck_linear_ops(op):
    u, w = randn(B, C, W), randn(B, C, W, seed=1)
    with fastgauss.use_backend("numpy"):
        assert torch.autograd.gradcheck(lambda a, b: linear_call(op, a, b), (u, w))
        assert torch.autograd.gradcheck(lambda a, b: linear_call(op, a, b, t=7), (u, w))  # scalar t


def test_gradcheck_q_sample_forms():
    x0, noise = randn(B, C, W), randn(B, C, W, seed=1)
    with fastgauss.use_backend("numpy"):
        assert torch.autograd.gradcheck(lambda a: fastgauss.q_sample(a, T, SCHEDULE, rng=5), (x0,))  # generated noise
        # return_noise with the noise given: the returned noise is the noise, its cotangent adds to the gradient
        assert torch.autograd.gradcheck(lambda a, b: fastgauss.q_sample(a, T, SCHEDULE, b, return_noise=True), (x0, noise))
        assert torch.autograd.gradcheck(lambda a: fastgauss.q_sample(a, T, SCHEDULE, rng=5, return_noise=True), (x0,))
    # q_posterior's variance outputs do not depend on the inputs: their gradients are zero
    with fastgauss.use_backend("numpy"):
        assert torch.autograd.gradcheck(lambda a, b: fastgauss.q_posterior(a, b, T, SCHEDULE), (x0, noise))


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v"])
@pytest.mark.parametrize("op", ["ddpm_step", "ddim_step"])
def test_gradcheck_steps(op, prediction):
    """model_output, xt and the given noise; clip active on about half the elements (x0 far from the
    clip limit, so the finite differences do not straddle it); generated noise; return_x0."""
    model, xt, noise = randn(B, C, W, seed=2), randn(B, C, W, seed=3), randn(B, C, W, seed=4)
    function = getattr(fastgauss, op)
    times = (T,) if op == "ddpm_step" else (T, T - 2)
    extra = {} if op == "ddpm_step" else {"eta": 0.7}
    with torch.no_grad():
        x0 = function(model, xt, *times, SCHEDULE, noise=noise, prediction=prediction, return_x0=True, **extra)[1]
    clip = float(np.median(np.abs(x0.numpy())))
    clip = clip if np.abs(np.abs(x0.numpy()) - clip).min() > 1e-4 else clip * 1.01
    with fastgauss.use_backend("numpy"):
        for kwargs in ({"noise": noise}, {"noise": noise, "clip": clip}, {"rng": 3, "clip": clip, "return_x0": True}):
            arrays = (model, xt, noise) if "noise" in kwargs else (model, xt)

            def f(*a, kwargs=kwargs):
                k = dict(kwargs, **({"noise": a[2]} if len(a) == 3 else {}))
                return function(a[0], a[1], *times, SCHEDULE, prediction=prediction, **extra, **k)

            assert torch.autograd.gradcheck(f, arrays)


# data on 16 levels (bins=15) across [-1, 1], both edge bins included; with scales around e^-0.5
# every bin has probability >~ 1e-2, far from the 1e-12 clamp (finite differences stay smooth)
LEVELS = torch.tensor(np.round((np.linspace(-1, 1, B * C * W) + 1) * 7.5) / 7.5 - 1).reshape(B, C, W)

KL_FORMS = {  # shapes of the arguments, broadcast against (B, C, W)
    "full": (B, C, W),
    "per sample": (B, 1, 1),
    "shared": (C, W),
    "per channel": (1, C, 1),
    "0-d": (),
}


@pytest.mark.parametrize("reduce", [None, "mean", "sum"])
@pytest.mark.parametrize("form", list(KL_FORMS))
def test_gradcheck_kl_family(form, reduce):
    """Each argument in turn takes the broadcast form, the others full (and a Python scalar, which
    gets no gradient, for the last)."""
    shape = KL_FORMS[form]
    with fastgauss.use_backend("numpy"):
        for k in range(4):
            args = [randn(*(shape if i == k else (B, C, W)), seed=i, scale=0.5) for i in range(4)]
            assert torch.autograd.gradcheck(lambda *a: fastgauss.normal_kl(*a, reduce=reduce), args)
        assert torch.autograd.gradcheck(lambda a, b: fastgauss.normal_kl(a, b, 0.3, -0.2, reduce=reduce), args[:2])
        for k in range(3):
            args = [randn(*(shape if i == k else (B, C, W)), seed=i, scale=0.5) for i in range(3)]
            assert torch.autograd.gradcheck(lambda *a: fastgauss.normal_logpdf(*a, reduce=reduce), args)
        for k in (1, 2):
            args = [LEVELS, randn(*(shape if k == 1 else (B, C, W)), scale=0.1), -0.5 + randn(*(shape if k == 2 else (B, C, W)), scale=0.2)]
            args = [a.detach().requires_grad_(i > 0) for i, a in enumerate(args)]
            f = lambda *a: fastgauss.discretized_gaussian_log_likelihood(*a, reduce=reduce, bins=15)  # noqa: E731
            assert torch.autograd.gradcheck(f, args)


def test_gradcheck_on_the_cpu_kernels():
    """The compiled backward kernels, one representative call each (fast_mode: each forward run is a
    parallel launch): the KL kernel with every gradient plan (direct, per-row sums and the sums of
    a shared and a per-channel argument), the step kernel with clip and noise, and the linear ops
    (the same kernel) with the cotangent of a returned noise."""
    args = [randn(B, C, W, scale=0.5), randn(B, 1, 1, seed=1), randn(C, W, seed=2), randn(1, C, 1, seed=3, scale=0.5)]
    model, xt, noise = randn(B, C, W, seed=2), randn(B, C, W, seed=3), randn(B, C, W, seed=4)
    with fastgauss.use_backend("cpu"):
        assert torch.autograd.gradcheck(lambda *a: fastgauss.normal_kl(*a, reduce="mean"), args, fast_mode=True)
        assert torch.autograd.gradcheck(
            lambda m, x, n: fastgauss.ddim_step(m, x, T, T - 2, SCHEDULE, eta=0.5, noise=n, clip=1.5, prediction="v"),
            (model, xt, noise), fast_mode=True,
        )
        assert torch.autograd.gradcheck(lambda a, b: fastgauss.q_sample(a, T, SCHEDULE, b, return_noise=True), (model, xt), fast_mode=True)


# --- fastgauss.vjp against torch autograd of the same formula ----------------------------------------


def torch_grads(formula, inputs, cotangent):
    result = formula(*inputs)
    return torch.autograd.grad(result, inputs, cotangent)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_vjp_equals_torch_autograd(backend):
    """float64, 1e-10 relative to each gradient's largest magnitude (the NumPy reference evaluates
    the same expressions; the cpu kernels' exp and log are within a few ulp)."""
    rng = np.random.default_rng(1)
    u, w, g = (rng.standard_normal((B, C, W)) for _ in range(3))
    for op, names in LINEAR.items():
        got = fastgauss.vjp(op, g, *_linear_args(op, u, w), backend=backend)
        want = torch_grads(lambda a, b: torch_linear(op, a, b), [torch.tensor(u, requires_grad=True), torch.tensor(w, requires_grad=True)], torch.tensor(g))
        for name, expected in zip(names, want):
            assert_close(got[name], expected, 1e-10)
    noise = rng.standard_normal((B, C, W))
    for prediction in ("epsilon", "sample", "v"):
        inputs = [torch.tensor(a, requires_grad=True) for a in (u, w, noise)]
        got = fastgauss.vjp("ddpm_step", g, u, w, T.numpy(), SCHEDULE, noise=noise, prediction=prediction, clip=1.0, backend=backend)
        want = torch_grads(lambda m, x, z: torch_ddpm(m, x, z, prediction, 1.0), inputs, torch.tensor(g))
        for name, expected in zip(("model_output", "xt", "noise"), want):
            assert_close(got[name], expected, 1e-10)
        got = fastgauss.vjp("ddim_step", g, u, w, T.numpy(), T.numpy() - 2, SCHEDULE, eta=0.5, noise=noise, prediction=prediction, clip=1.0, backend=backend)
        want = torch_grads(lambda m, x, z: torch_ddim(m, x, z, prediction, 1.0, 0.5, T - 2), inputs, torch.tensor(g))
        for name, expected in zip(("model_output", "xt", "noise"), want):
            assert_close(got[name], expected, 1e-10)
    shapes = [(B, C, W), (B, 1, 1), (C, W), (1, C, 1)]
    args = [rng.standard_normal(s) * 0.5 for s in shapes]
    for reduce in (None, "mean", "sum"):
        g = rng.standard_normal((B, C, W) if reduce is None else (B,))
        inputs = [torch.tensor(a, requires_grad=True) for a in args]
        got = fastgauss.vjp("normal_kl", g, *args, reduce=reduce, backend=backend)
        want = torch_grads(lambda *a: reduced(torch_normal_kl(*a), reduce), inputs, torch.tensor(g))
        for name, expected in zip(("mean1", "logvar1", "mean2", "logvar2"), want):
            assert_close(got[name], expected, 1e-10)
        if backend == "cpu" and reduce != "mean":
            continue  # one compiled specialization each for the two ops below (compile time)
        got = fastgauss.vjp("normal_logpdf", g, *args[:3], reduce=reduce, backend=backend)
        want = torch_grads(lambda *a: reduced(torch_normal_logpdf(*a), reduce), inputs[:3], torch.tensor(g))
        for name, expected in zip(("x", "mean", "logvar"), want):
            assert_close(got[name], expected, 1e-10)
        # 8-bit data, scales around 0.05, means within a standard deviation: bins of probability
        # >~ 1e-3, where torch's literal 1 + tanh does not cancel (the kernels use the sigmoid form)
        x = np.round(rng.uniform(-1, 1, (B, C, W)) * 127.5) / 127.5
        x[0, 0, :2] = (-1.0, 1.0)
        log_scales = np.log(0.05) + 0.2 * rng.standard_normal((B, 1, 1))
        means = x + 0.5 * np.exp(log_scales) * rng.standard_normal((B, C, W))
        inputs = [torch.tensor(a, requires_grad=True) for a in (x, means, log_scales)]
        got = fastgauss.vjp("discretized_gaussian_log_likelihood", g, x, means, log_scales, reduce=reduce, backend=backend)
        want = torch_grads(lambda *a: reduced(torch_discretized(*a), reduce), inputs, torch.tensor(g))
        for name, expected in zip(("x", "means", "log_scales"), want):
            assert_close(got[name], expected, 1e-10)


def _linear_args(op, u, w):
    t = T.numpy()
    if op == "q_sample":
        return u, t, SCHEDULE, w
    if op in ("q_posterior", "predict_v"):
        return u, w, t, SCHEDULE
    return u, t, w, SCHEDULE


def test_float32_gradients_match_float64():
    """float32 gradients of the cpu kernels within 1e-5 of the float64 ones, relative to each
    gradient's largest magnitude (the kernels evaluate the derivatives in float64 and round once;
    the float64 run sees the same float32-rounded data)."""
    rng = np.random.default_rng(2)
    shapes = [(B, C, 16), (B, 1, 1), (C, 16), (1, C, 1)]
    data = [(0.5 * rng.standard_normal(s)).astype(np.float32) for s in shapes]
    x = (np.round(rng.uniform(-1, 1, (B, C, 16)) * 127.5) / 127.5).astype(np.float32)
    means = (x + 0.02 * rng.standard_normal(x.shape)).astype(np.float32)
    log_scales = (-3.0 + 0.1 * rng.standard_normal((B, 1, 1))).astype(np.float32)
    g_rows = rng.standard_normal(B).astype(np.float32)
    g_full = rng.standard_normal((B, C, 16)).astype(np.float32)
    calls = [
        ("normal_kl", (g_rows, *data), {"reduce": "mean"}),
        ("discretized_gaussian_log_likelihood", (g_rows, x, means, log_scales), {"reduce": "mean"}),
        ("ddpm_step", (g_full, data[0], x, T.numpy(), SCHEDULE), {"noise": means, "clip": 0.5}),
    ]
    for op, args, kwargs in calls:
        low = fastgauss.vjp(op, *args, **kwargs, backend="cpu")
        high = fastgauss.vjp(op, *(a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype == np.float32 else a for a in args), **kwargs, backend="cpu")
        assert set(low) == set(high)
        for name in low:
            assert low[name].dtype == np.float32 and high[name].dtype == np.float64
            assert_close(low[name], high[name], 1e-5)


# --- the adapter ------------------------------------------------------------------------------


@pytest.fixture
def reference():
    """The adapter's tests run the NumPy reference: what they check is the adapter, not a kernel."""
    with fastgauss.use_backend("numpy"):
        yield


def test_tensors_in_tensors_out_zero_copy(reference):
    x0 = torch.randn(B, C, W)
    noise = torch.randn(B, C, W)
    xt = fastgauss.q_sample(x0, T, SCHEDULE, noise)
    assert isinstance(xt, torch.Tensor) and xt.dtype == torch.float32 and xt.device.type == "cpu"
    np.testing.assert_array_equal(xt.numpy(), fastgauss.q_sample(x0.numpy(), T.numpy(), SCHEDULE, noise.numpy()))
    pointer = x0.data_ptr()
    assert fastgauss.q_sample(x0, T, SCHEDULE, noise, out=x0) is x0 and x0.data_ptr() == pointer  # in place, no copy
    np.testing.assert_array_equal(x0.numpy(), xt.numpy())
    out = torch.empty(B)
    assert fastgauss.normal_kl(x0, 0.0, noise, 0.0, reduce="sum", out=out) is out
    strided = torch.randn(B, C, 2 * W)[:, :, ::2]  # a non-contiguous view is read in place
    np.testing.assert_array_equal(fastgauss.normal_kl(strided, 0.0, 0.0, 0.0).numpy(), fastgauss.normal_kl(strided.numpy(), 0.0, 0.0, 0.0))
    # results are allocated by torch (the op writes into the tensor's own memory)
    allocations = []
    real_empty = torch.empty
    try:
        torch.empty = lambda *a, **k: allocations.append(a) or real_empty(*a, **k)
        result = fastgauss.normal_logpdf(x0, 0.0, 0.0)
    finally:
        torch.empty = real_empty
    assert allocations == [((B, C, W),)] and result.shape == (B, C, W)
    mean, variance, log_variance = fastgauss.q_posterior(x0, noise, T, SCHEDULE)
    assert all(isinstance(a, torch.Tensor) for a in (mean, variance, log_variance)) and variance.shape == (B, 1, 1)


def test_generator_methods_accept_tensor_out():
    out = torch.empty(2, 5)
    assert fastgauss.default_rng(3).standard_normal(dtype=np.float32, out=out) is out
    np.testing.assert_array_equal(out.numpy(), fastgauss.default_rng(3).standard_normal((2, 5), dtype=np.float32))
    out64 = torch.empty(7, dtype=torch.float64)
    assert fastgauss.default_rng(4).random(out=out64) is out64
    np.testing.assert_array_equal(out64.numpy(), fastgauss.default_rng(4).random(7))


def test_errors_name_the_arguments(reference):
    x = torch.randn(B, C, W)
    with pytest.raises(TypeError, match=r"torch tensors \(x0\).*other arrays \(noise\)"):
        fastgauss.q_sample(x, 3, SCHEDULE, np.zeros((B, C, W), np.float32))
    fastgauss.q_sample(x, 3, SCHEDULE, x)  # Python scalars and schedules are fine
    assert fastgauss.normal_kl(x, 0.0, 1, np.float32(0.5)).dtype == torch.float32
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match=f"mean2 has dtype {dtype}"):
            fastgauss.normal_kl(x, x, x.to(dtype), 0.0)
    with pytest.raises(RuntimeError, match="out= does not support automatic differentiation"):
        fastgauss.normal_kl(x.requires_grad_(), 0.0, 0.0, 0.0, out=torch.empty(B, C, W))
    x = x.detach()
    with pytest.raises(TypeError, match="mean2 has layout torch.sparse_coo"):
        fastgauss.normal_kl(x, x, x.to_sparse(), 0.0)
    for transform in (torch.vmap, torch.func.grad):  # wrapped tensors have no data to view
        with pytest.raises(TypeError, match="mean1 is a tensor without storage"):
            transform(lambda a: fastgauss.normal_kl(a, 0.0, 0.0, 0.0).sum())(x)


def test_torch_compile_runs_the_ops_as_graph_breaks(reference):
    """Under torch.compile (the aot_eager backend: Dynamo and AOTAutograd, no C++ compiler) a
    fastgauss call is a graph break that runs eagerly: the loss and the gradient equal the eager
    ones bit for bit, and a Generator fills a tensor out=. (Dynamo used to trace into the call and
    chose the cuda backend for CPU tensors.)"""
    weight = torch.randn(C, C, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(B, C, W, dtype=torch.float64)
    noise = torch.randn(B, C, W, dtype=torch.float64)

    def loss(weight):
        h = torch.einsum("bcw,cd->bdw", x0, weight)
        xt = fastgauss.q_sample(h, T, SCHEDULE, noise)
        return fastgauss.normal_kl(xt, 0.0, h, 0.0, reduce="mean").sum() + (xt**2).mean()

    def value_and_gradient(function):
        weight.grad = None
        value = function(weight)
        value.backward()
        return value.detach(), weight.grad.clone()

    eager = value_and_gradient(loss)
    torch._dynamo.reset()
    compiled = value_and_gradient(torch.compile(loss, backend="aot_eager"))
    assert torch.equal(compiled[0], eager[0]) and torch.equal(compiled[1], eager[1])
    out = torch.empty(5, dtype=torch.float64)
    drawn = torch.compile(lambda o: fastgauss.default_rng(2).standard_normal(out=o) * 1, backend="aot_eager")(out)
    np.testing.assert_array_equal(drawn.numpy(), fastgauss.default_rng(2).standard_normal(5))


def test_eager_calls_do_not_import_dynamo_and_a_later_compile_still_works():
    """The adapter wraps its entry in torch.compiler.disable only once torch._dynamo is loaded
    (importing it costs about a second), so an eager program never imports it; a torch.compile
    after eager calls must still see the wrapped entry. A fresh process: no other test's imports."""
    code = (
        "import sys, torch, fastgauss\n"
        "s = fastgauss.NoiseSchedule.cosine(50)\n"
        "x, t = torch.randn(2, 3, dtype=torch.float64), torch.tensor([3, 9])\n"
        "f = lambda a: fastgauss.q_sample(a, t, s, x, backend='numpy') * 2\n"
        "eager = f(x)\n"
        "print('torch._dynamo' in sys.modules)\n"
        "print(torch.equal(torch.compile(f, backend='aot_eager')(x), eager))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def test_import_fastgauss_does_not_import_torch():
    code = "import sys, numpy, fastgauss; fastgauss.normal_kl(numpy.zeros(3), 0.0, 0.0, 0.0, backend='numpy'); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_without_requires_grad_no_backward_work(monkeypatch, reference):
    """No Function, no grad_fn, nothing saved, and no VJP is ever looked up; with requires_grad the
    graph holds one fastgauss node whose backward runs the VJP once."""
    import fastgauss.interop.torch as adapter

    calls = []
    real = adapter._lookup
    monkeypatch.setattr(adapter, "_lookup", lambda name: calls.append(name) or real(name))
    x = torch.randn(B, C, W, dtype=torch.float64)
    y = fastgauss.normal_kl(x, 0.0, 0.0, 0.0, reduce="mean")
    assert y.grad_fn is None and not y.requires_grad
    with torch.no_grad():
        assert fastgauss.normal_kl(x.requires_grad_(), 0.0, 0.0, 0.0).grad_fn is None
    assert calls == []
    y = fastgauss.normal_kl(x, 0.0, 0.0, 0.0, reduce="mean")
    assert type(y.grad_fn).__name__ == "_OpFunctionBackward"
    assert [t is x for t in y.grad_fn.saved_tensors] == [True]  # the inputs only
    y.sum().backward()
    assert calls == ["normal_kl"]
    assert_close(x.grad, x.detach() / (C * W), 1e-14)


def test_double_backward_is_refused(reference):
    x = torch.randn(B, C, W, dtype=torch.float64, requires_grad=True)
    y = fastgauss.normal_kl(x, 0.0, 0.0, 0.0, reduce="sum")
    (g,) = torch.autograd.grad(y, x, torch.ones(B, dtype=torch.float64, requires_grad=True), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


def test_vjp_with_tensors_returns_tensors(reference):
    x = torch.randn(B, C, W, dtype=torch.float64)
    grads = fastgauss.vjp(fastgauss.normal_logpdf, torch.ones(B, dtype=torch.float64), x, 0.0, torch.zeros(()), reduce="sum")
    assert set(grads) == {"x", "logvar"} and isinstance(grads["x"], torch.Tensor)
    assert_close(grads["x"], -x, 1e-15)


# --- mvn (after the mvn VJPs are merged) ----------------------------------------------------------

mvn_vjps = pytest.mark.skipif(not hasattr(mvn, "_vjp_mvn_sample"), reason="mvn vjps not merged yet")


@mvn_vjps
def test_gradcheck_mvn_sample():
    mean = randn(4, 2)
    a = torch.randn(4, 2, 2, dtype=torch.float64)
    cov = (a @ a.transpose(-1, -2) + 0.5 * torch.eye(2, dtype=torch.float64)).requires_grad_()
    noise = torch.randn(4, 2, dtype=torch.float64)
    # A covariance's gradient is symmetric (torch.linalg.cholesky's convention) while the op reads
    # its lower triangle, so the finite differences perturb it symmetrically, as torch's own
    # gradcheck of cholesky does.
    sym = lambda c: (c + c.transpose(-1, -2)) / 2  # noqa: E731
    with fastgauss.use_backend("numpy"):
        assert torch.autograd.gradcheck(lambda m, c: fastgauss.mvn_sample(m, sym(c), noise=noise), (mean, cov))
        assert torch.autograd.gradcheck(lambda m, c: fastgauss.mvn_sample(m, sym(c), rng=2), (mean, cov))


@mvn_vjps
def test_vae_training_matches_pure_torch():
    """A small VAE on 2-D data, reparameterized through mvn_sample and regularized by normal_kl,
    trained for 300 steps; the same model with torch ops alone (the same noise) reaches the same
    loss within 1%."""
    torch.manual_seed(0)
    data = torch.randn(256, 2, dtype=torch.float64) @ torch.tensor([[1.0, 0.0], [0.8, 0.3]], dtype=torch.float64)
    noise = torch.randn(300, 256, 2, dtype=torch.float64)

    def train(use_fastgauss):
        torch.manual_seed(1)
        encoder = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).double()
        decoder = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
        optimizer = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=1e-2)
        for step in range(300):
            mean, logvar = encoder(data).chunk(2, dim=1)
            std = torch.exp(0.5 * logvar)
            if use_fastgauss:
                cov = torch.diag_embed(std**2)
                z = fastgauss.mvn_sample(mean, cov, noise=noise[step])
                kl = fastgauss.normal_kl(mean, logvar, 0.0, 0.0, reduce="sum")
            else:
                z = mean + std * noise[step]
                kl = torch_normal_kl(mean, logvar, torch.zeros(()), torch.zeros(())).sum(1)
            loss = ((decoder(z) - data) ** 2).sum(1).mean() + kl.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return loss.item()

    ours, theirs = train(True), train(False)
    assert abs(ours - theirs) <= 0.01 * abs(theirs), (ours, theirs)


# --- the training objective (issue 12) through the adapter ----------------------------------------


@pytest.mark.parametrize(
    "op, kwargs",
    [
        ("diffusion_loss", {"weighting": "min_snr"}),
        ("diffusion_loss", {"prediction": "v", "reduce": None}),
        ("vlb_terms", {"var_kind": "learned_range"}),
        ("hybrid_loss", {}),
    ],
)
def test_gradcheck_of_the_objective_through_torch(op, kwargs):
    """The objective's ops take tensors and differentiate through fastgauss.vjp (reference
    backend: the kernels are held to it in tests/test_objective.py); t = 0 is included, where
    vlb_terms is the decoder term."""
    schedule = fastgauss.NoiseSchedule.linear(1000)
    x0 = (torch.rand(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    noise = randn(2, 3, 4, 4, seed=4).detach()  # no gradient to the noise (not a differentiable argument)
    t = torch.tensor([0, 500])
    model_output = randn(2, 3, 4, 4, seed=5).requires_grad_()
    var_output = (torch.rand(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * 1.8 - 0.9).requires_grad_()
    with fastgauss.use_backend("numpy"):
        if op == "diffusion_loss":
            function = lambda m: fastgauss.diffusion_loss(m, x0, noise, t, schedule, **kwargs)  # noqa: E731
            inputs = (model_output,)
        elif op == "vlb_terms":
            xt = fastgauss.q_sample(x0, t, schedule, noise)
            function = lambda m, v: fastgauss.vlb_terms(x0, xt, t, m, schedule, var_output=v, **kwargs)  # noqa: E731
            inputs = (model_output, var_output)
        else:
            function = lambda m, v: fastgauss.hybrid_loss(m, v, x0, noise, t, schedule, **kwargs)  # noqa: E731
            inputs = (model_output, var_output)
        assert isinstance(function(*inputs), torch.Tensor)
        if op == "hybrid_loss":  # the bound's mean is held constant: d/dm is the MSE's alone
            (grad_m,) = torch.autograd.grad(function(*inputs).sum(), model_output)
            mse = fastgauss.diffusion_loss(model_output, x0, noise, t, schedule)
            (want,) = torch.autograd.grad(mse.sum(), model_output)
            torch.testing.assert_close(grad_m, want, rtol=1e-12, atol=1e-12)
            inputs = (model_output.detach(), var_output)
            function = (lambda f, m: lambda v: f(m, v))(function, inputs[0])
            inputs = (var_output,)
        assert torch.autograd.gradcheck(function, inputs)


def test_the_adapter_runs_the_undecorated_op_on_its_views(monkeypatch, reference):
    """CUDA tensors are viewed as (detached) tensors, not arrays: the op the adapter runs on its
    views must be the undecorated one, or the call comes back to the adapter without end (it did,
    on a real GPU). Imitated on the CPU by views that are detached tensors."""
    import fastgauss.interop.torch as adapter

    monkeypatch.setattr(adapter, "_as_array", lambda tensor: tensor.detach())
    x0, noise = torch.randn(B, C, W, dtype=torch.float64), torch.randn(B, C, W, dtype=torch.float64)
    xt = fastgauss.q_sample(x0, T, SCHEDULE, noise)
    np.testing.assert_allclose(np.asarray(xt), fastgauss.q_sample(x0.numpy(), T.numpy(), SCHEDULE, noise.numpy()), rtol=1e-15)
