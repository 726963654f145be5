"""The training objective on (64, 3, 256, 256) float32: the fused ops against what a user
would otherwise run, side by side in one run.

vlb_terms (epsilon prediction, learned_range variances, timesteps spread over [0, T) with
t = 0 included): "numpy-composition" is the bound composed from fastgauss's existing NumPy
reference ops (predict_x0, q_posterior twice, model_log_variance, normal_kl and
discretized_gaussian_log_likelihood with reduce="mean", ~10 full-size passes),
"torch-eager" improved-diffusion's formula in PyTorch eager (CPU, float32), "cpu" and
"cuda" the fused pass. Issue 12 asks cpu >= 10x numpy-composition and >= 5x torch-eager.

vlb_terms forward + backward (the same inputs; gradients for model_output and var_output, what
a training step needs): "torch-eager" the formula above and autograd's backward, "cpu"/"cuda"
vlb_terms and fastgauss.vjp.

diffusion_loss forward + backward (epsilon, min-SNR weighting): "cpu"/"cuda" run
diffusion_loss and its VJP (fastgauss.objective._vjp_diffusion_loss, d/d model_output);
"torch-eager" the same weighted mean squared error and autograd's backward. Issue 12 asks
>= 3x torch-eager.

Run once to check: python -m pytest benchmarks/bench_objective.py --benchmark-disable
"""

import math

import numpy as np
import pytest

import fastgauss
from conftest import SHAPE, gpu_ready, on_backend, run
from fastgauss import objective

B = SHAPE[0]
SCHEDULE = fastgauss.NoiseSchedule.linear(1000)
LN2 = math.log(2.0)


def inputs():
    rng = np.random.default_rng(0)
    x0 = (np.round(rng.uniform(-1, 1, SHAPE) * 127.5) / 127.5).astype(np.float32)
    noise = rng.standard_normal(SHAPE, dtype=np.float32)
    t = np.linspace(0, SCHEDULE.num_timesteps - 1, B).astype(np.int64)
    xt = fastgauss.q_sample(x0, t, SCHEDULE, noise)
    eps = noise + 0.1 * rng.standard_normal(SHAPE, dtype=np.float32)
    v = rng.uniform(-1, 1, SHAPE).astype(np.float32)
    return x0, xt, noise, eps, v, t


def numpy_composition(x0, xt, t, eps, v):
    ops = fastgauss.reference
    x0_hat = ops.predict_x0(xt, t, eps, SCHEDULE)
    true_mean, _, true_logvar = ops.q_posterior(x0, xt, t, SCHEDULE)
    mean, _, _ = ops.q_posterior(x0_hat, xt, t, SCHEDULE)
    logvar = ops.model_log_variance(v, t, SCHEDULE, kind="learned_range")
    kl = ops.normal_kl(true_mean, true_logvar, mean, logvar, reduce="mean") / LN2
    nll = -ops.discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar, reduce="mean") / LN2
    return np.where(t == 0, nll, kl)


def torch_vlb(torch, x0, xt, t, eps, v):
    def tab(table):
        return torch.tensor(np.asarray(table)[t], dtype=torch.float32).reshape(-1, 1, 1, 1)

    abar = tab(SCHEDULE.alphas_cumprod)
    x0_hat = torch.sqrt(1 / abar) * xt - torch.sqrt(1 / abar - 1) * eps
    c1, c2 = tab(SCHEDULE.posterior_mean_coef1), tab(SCHEDULE.posterior_mean_coef2)
    true_mean, true_logvar = c1 * x0 + c2 * xt, tab(SCHEDULE.posterior_log_variance_clipped)
    mean = c1 * x0_hat + c2 * xt
    frac = (v + 1) / 2
    logvar = frac * torch.log(tab(SCHEDULE.betas)) + (1 - frac) * true_logvar
    kl = 0.5 * (-1 + logvar - true_logvar + torch.exp(true_logvar - logvar) + (true_mean - mean) ** 2 * torch.exp(-logvar))

    def cdf(z):
        return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))

    inv = torch.exp(-0.5 * logvar)
    plus, minus = cdf(inv * (x0 - mean + 1 / 255)), cdf(inv * (x0 - mean - 1 / 255))
    log_p = torch.where(x0 < -0.999, torch.log(plus.clamp(min=1e-12)),
                        torch.where(x0 > 0.999, torch.log((1 - minus).clamp(min=1e-12)), torch.log((plus - minus).clamp(min=1e-12))))
    kl, nll = kl.mean(dim=(1, 2, 3)) / LN2, -log_p.mean(dim=(1, 2, 3)) / LN2
    return torch.where(torch.from_numpy(t) == 0, nll, kl)


def torch_loss_step(torch, eps_hat, noise, t):
    snr = torch.tensor(SCHEDULE.snr[t], dtype=torch.float32)
    weight = (torch.minimum(snr, torch.tensor(5.0)) / snr).reshape(-1, 1, 1, 1)
    m = eps_hat.detach().requires_grad_(True)
    loss = (weight * (m - noise) ** 2).mean(dim=(1, 2, 3))
    loss.backward(torch.ones_like(loss))
    return m.grad


@pytest.fixture(params=["numpy-composition", "torch-eager", "cpu", "cuda"])
def impl(request):
    if request.param == "cuda" and not gpu_ready():
        pytest.skip("no GPU")
    if request.param == "torch-eager":
        pytest.importorskip("torch")
    return request.param


def test_vlb_terms(benchmark, impl):
    benchmark.group = "vlb_terms epsilon learned_range float32"
    x0, xt, _, eps, v, t = inputs()
    nbytes = 4 * x0.nbytes + B * 4  # four inputs read once, (B,) written
    if impl == "numpy-composition":
        run(benchmark, impl, lambda: numpy_composition(x0, xt, t, eps, v), nbytes)
        return
    if impl == "torch-eager":
        import torch

        args = [torch.from_numpy(a) for a in (x0, xt, eps, v)]
        run(benchmark, impl, lambda: torch_vlb(torch, args[0], args[1], t, args[2], args[3]), nbytes)
        return
    d_x0, d_xt, d_eps, d_v = on_backend(impl, x0, xt, eps, v)
    d_t = on_backend(impl, t)[0]
    out = on_backend(impl, np.empty(B, np.float32))[0]
    run(benchmark, impl, lambda: fastgauss.vlb_terms(d_x0, d_xt, d_t, d_eps, SCHEDULE, var_output=d_v, out=out, backend=impl), nbytes)
    exact = fastgauss.vlb_terms(*(a.astype(np.float64) for a in (x0, xt)), t, eps.astype(np.float64), SCHEDULE,
                                var_output=v.astype(np.float64), backend="numpy")
    got = out if isinstance(out, np.ndarray) else out.copy_to_host()
    deviation = float(np.max(np.abs(got / exact - 1)))
    benchmark.extra_info["max relative deviation from float64"] = deviation
    assert deviation < 1e-4


def test_vlb_terms_forward_backward(benchmark, impl):
    benchmark.group = "vlb_terms epsilon learned_range forward + backward float32"
    x0, xt, _, eps, v, t = inputs()
    nbytes = 4 * x0.nbytes + 4 * x0.nbytes + 2 * x0.nbytes  # forward reads 4; backward reads 4, writes 2
    if impl == "numpy-composition":
        pytest.skip("no NumPy backward to compare with")
    if impl == "torch-eager":
        import torch

        def step():
            m, w = (torch.from_numpy(a).requires_grad_(True) for a in (eps, v))
            terms = torch_vlb(torch, torch.from_numpy(x0), torch.from_numpy(xt), t, m, w)
            terms.backward(torch.ones_like(terms))
            return m.grad, w.grad

        run(benchmark, impl, step, nbytes)
        return
    d_x0, d_xt, d_eps, d_v = on_backend(impl, x0, xt, eps, v)
    d_t = on_backend(impl, t)[0]
    cotangent = on_backend(impl, np.ones(B, np.float32))[0]

    def step():
        fastgauss.vlb_terms(d_x0, d_xt, d_t, d_eps, SCHEDULE, var_output=d_v, backend=impl)
        return fastgauss.vjp(fastgauss.vlb_terms, cotangent, d_x0, d_xt, d_t, d_eps, SCHEDULE, var_output=d_v,
                             wrt=("model_output", "var_output"), backend=impl)

    run(benchmark, impl, step, nbytes)


def test_diffusion_loss_forward_backward(benchmark, impl):
    benchmark.group = "diffusion_loss min_snr forward + backward float32"
    x0, _, noise, eps, _, t = inputs()
    nbytes = 3 * x0.nbytes + 2 * x0.nbytes + x0.nbytes  # forward reads 2 (x0 unused by epsilon); backward reads 2, writes 1
    if impl == "numpy-composition":
        pytest.skip("no NumPy backward to compare with")
    if impl == "torch-eager":
        import torch

        args = [torch.from_numpy(a) for a in (eps, noise)]
        run(benchmark, impl, lambda: torch_loss_step(torch, args[0], args[1], t), nbytes)
        return
    d_eps, d_x0, d_noise = on_backend(impl, eps, x0, noise)
    d_t = on_backend(impl, t)[0]
    cotangent = on_backend(impl, np.ones(B, np.float32))[0]

    def step():
        fastgauss.diffusion_loss(d_eps, d_x0, d_noise, d_t, SCHEDULE, weighting="min_snr", backend=impl)
        return objective._vjp_diffusion_loss(cotangent, d_eps, d_x0, d_noise, d_t, SCHEDULE, weighting="min_snr",
                                             wrt=["model_output"], backend=impl)

    run(benchmark, impl, step, nbytes)
