"""The training objective (model_log_variance, vlb_terms, prior_bpd, diffusion_loss, hybrid_loss,
nll_bpd) and its VJPs: every backend against the composition of the existing ops (float64,
1e-10), closed forms, the bound of a two-step toy diffusion against numerical integration,
the min-SNR weights against their definition, gradients against torch autograd of the same
formulas (1e-10) and against finite differences.

Tolerances: float64 results 1e-10 relative to the magnitude of the per-sample terms (the
kernels evaluate the KL as two non-negative terms, the composition as written, so they
differ by cancellation in the composition: measured <= 2e-11); float32 1e-5.
"""

import math

import numpy as np
import pytest

import fastgauss
from conftest import CUDA_USABLE, to_backend, to_numpy
from fastgauss import objective

pytestmark = [
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
]

LN2 = math.log(2.0)
SCHEDULE = fastgauss.NoiseSchedule.linear(20, beta_start=0.01, beta_end=0.2)
SHAPE = (4, 2, 3, 5)
T = np.array([0, 1, 7, 19])
SIM_SHAPE = (3, 2, 3)  # tiny, for the simulator
BACKENDS = ["numpy", "cpu"] + (["cuda"] if CUDA_USABLE else [])


def data(shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    x0 = np.round(rng.uniform(-1, 1, shape) * 127.5) / 127.5
    x0.reshape(-1)[:2] = (-1.0, 1.0)  # the edge bins
    noise = rng.standard_normal(shape)
    t = T[: shape[0]] if shape[0] <= len(T) else rng.integers(0, SCHEDULE.num_timesteps, shape[0])
    xt = fastgauss.q_sample(x0, t, SCHEDULE, noise, backend="numpy")
    m = noise + 0.1 * rng.standard_normal(shape)
    v = rng.uniform(-1, 1, shape)
    return x0, xt, noise, m, v, t


def near_truth(prediction, x0, noise, t, seed=1):
    """A model output close to the prediction type's target (as a trained model's is)."""
    target = {"epsilon": noise, "sample": x0, "v": fastgauss.predict_v(x0, noise, t, SCHEDULE, backend="numpy")}[prediction]
    return target + 0.1 * np.random.default_rng(seed).standard_normal(x0.shape)


def run(function, backend, *args, **kwargs):
    """function on ``backend``, array arguments moved to the device for cuda; NumPy results."""
    move = (lambda a: to_backend(a, backend) if isinstance(a, np.ndarray) else a)
    result = function(*map(move, args), backend=backend, **{k: move(v) for k, v in kwargs.items()})
    if isinstance(result, dict):
        return {k: to_numpy(v) for k, v in result.items()}
    return to_numpy(result)


def shape_for(backend):
    return SIM_SHAPE if backend == "cuda" else SHAPE


# --- the composition of the existing ops ---------------------------------------------------


def composed_vlb(x0, xt, t, m, v, prediction, var_kind, clip):
    """_vb_terms_bpd from the existing public ops (NumPy reference), float64."""
    ops = fastgauss.reference
    x0_hat = {
        "epsilon": lambda: ops.predict_x0(xt, t, m, SCHEDULE),
        "sample": lambda: m,
        "v": lambda: ops.v_to_x0(xt, t, m, SCHEDULE),
    }[prediction]()
    if clip is not None:
        x0_hat = np.clip(x0_hat, -clip, clip)
    true_mean, _, true_logvar = ops.q_posterior(x0, xt, t, SCHEDULE)
    mean, _, _ = ops.q_posterior(x0_hat, xt, t, SCHEDULE)
    logvar = ops.model_log_variance(v, t, SCHEDULE, kind=var_kind)
    kl = ops.normal_kl(true_mean, true_logvar, mean, logvar, reduce="mean") / LN2
    nll = -ops.discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar, reduce="mean") / LN2
    return np.where(t == 0, nll, kl)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vlb_terms_equal_the_composition_of_the_existing_ops(backend):
    x0, xt, noise, m, v, t = data(shape_for(backend))
    cases = [("epsilon", "learned_range", None), ("v", "learned", 1.0), ("sample", "fixed_large", None)]
    if backend != "cuda":
        cases += [("epsilon", "fixed_small", 1.0), ("sample", "learned_range", 1.0), ("v", "fixed_small", None)]
    for prediction, var_kind, clip in cases:
        if var_kind == "learned":
            v = np.log(0.01) + 0.5 * v
        m = near_truth(prediction, x0, noise, t)
        expected = composed_vlb(x0, xt, t, m, v, prediction, var_kind, clip)
        got = run(fastgauss.vlb_terms, backend, x0, xt, t, m, SCHEDULE, prediction=prediction, var_output=v,
                  var_kind=var_kind, clip=clip)
        assert got.shape == (x0.shape[0],) and got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=1e-10, err_msg=f"{prediction} {var_kind} {clip}")
    summed = run(fastgauss.vlb_terms, backend, x0, xt, t, m, SCHEDULE, var_output=v, reduce="sum")
    elements = run(fastgauss.vlb_terms, backend, x0, xt, t, m, SCHEDULE, var_output=v, reduce=None)
    np.testing.assert_allclose(summed, elements.reshape(len(t), -1).sum(axis=1), rtol=1e-10)
    mean = run(fastgauss.vlb_terms, backend, x0, xt, t, m, SCHEDULE, var_output=v)
    np.testing.assert_allclose(mean * x0[0].size, summed, rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_log_variance_and_prior_bpd(backend):
    x0, _, _, _, v, t = data(shape_for(backend))
    expand = (-1,) + (1,) * (v.ndim - 1)
    lo, hi = SCHEDULE.posterior_log_variance_clipped[t].reshape(expand), np.log(SCHEDULE.betas[t]).reshape(expand)
    expected = {
        "learned": v,
        "learned_range": (v + 1) / 2 * hi + (1 - v) / 2 * lo,
        "fixed_small": np.broadcast_to(lo, v.shape),
        "fixed_large": np.broadcast_to(np.log(np.append(SCHEDULE.posterior_variance[1], SCHEDULE.betas[1:]))[t].reshape(expand), v.shape),
    }
    for kind, value in expected.items():
        np.testing.assert_allclose(run(fastgauss.model_log_variance, backend, v, t, SCHEDULE, kind=kind), value, rtol=1e-13, atol=1e-14)
    last = SCHEDULE.num_timesteps - 1
    mean, var = SCHEDULE.sqrt_alphas_cumprod[last] * x0, 1 - SCHEDULE.alphas_cumprod[last]
    kl = 0.5 * (-1 - math.log(var) + var + mean**2)  # KL(N(mean, var) || N(0, 1))
    np.testing.assert_allclose(run(fastgauss.prior_bpd, backend, x0, SCHEDULE), kl.reshape(len(x0), -1).mean(axis=1) / LN2, rtol=1e-12)


# --- closed forms ----------------------------------------------------------------------------


def test_the_kl_vanishes_for_the_true_posterior_and_the_decoder_for_a_perfect_mean():
    x0, xt, _, _, _, t = data()
    for backend in ("numpy", "cpu"):
        terms = run(fastgauss.vlb_terms, backend, x0, xt, t, x0, SCHEDULE, prediction="sample", var_kind="fixed_small", reduce=None)
        assert np.all(np.abs(terms[t > 0]) < 1e-12)  # the model's mean and variance are the posterior's
        tiny = np.full_like(x0, -40.0)  # log variance: sigma = 2e-9, far inside the bin of width 2/255
        decoder = run(fastgauss.vlb_terms, backend, x0[:1], xt[:1], 0, x0[:1], SCHEDULE, prediction="sample", var_output=tiny[:1],
                      var_kind="learned")
        assert 0 <= decoder[0] < 1e-9
    far = run(fastgauss.vlb_terms, "cpu", x0, xt, t, x0 + 0.5, SCHEDULE, prediction="sample", var_kind="fixed_small")
    assert np.all(far > 1e-3)  # and the test can fail: a wrong mean costs bits


def test_two_step_bound_against_numerical_integration():
    """T = 2, scalar data: prior + E_q[L_1] + E_q[L_0] (vlb_terms at Gauss-Hermite nodes) equals the
    ELBO E_q[log q(x_0', x_1' | x0) - log p(x0, x_0', x_1')] integrated directly from the densities,
    and bounds -log2 p(x0), p(x0) = the integral of p(x_1') p(x_0' | x_1') P(x0 | x_0')."""
    s = fastgauss.NoiseSchedule([0.05, 0.6])
    x0 = -51 / 127.5  # one 8-bit level
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / weights.sum()
    abar, alpha, beta = s.alphas_cumprod, s.alphas, s.betas

    def model(xt):  # an epsilon model, fixed_small variances
        return 0.5 * xt

    def mean(xt, step):
        x0_hat = (xt - math.sqrt(1 - abar[step]) * model(xt)) / math.sqrt(abar[step])
        return s.posterior_mean_coef1[step] * x0_hat + s.posterior_mean_coef2[step] * xt

    def expected_term(step):
        xt = (math.sqrt(abar[step]) * x0 + math.sqrt(1 - abar[step]) * nodes).reshape(-1, 1)
        terms = fastgauss.vlb_terms(np.full_like(xt, x0), xt, step, model(xt), s, var_kind="fixed_small", backend="cpu")
        return float(weights @ terms)

    bound = float(fastgauss.prior_bpd(np.array([[x0]]), s)[0]) + expected_term(1) + expected_term(0)

    def log_normal(x, m, var):
        return -0.5 * (np.log(2 * np.pi * var) + (x - m) ** 2 / var)

    var0, var1 = np.exp(s.posterior_log_variance_clipped)  # the model's fixed_small variances (t = 0, 1)

    def log_decoder(x0_latent):
        return fastgauss.reference.discretized_gaussian_log_likelihood(x0, mean(x0_latent, 0), 0.5 * np.log(var0))

    a = math.sqrt(abar[0]) * x0 + math.sqrt(1 - abar[0]) * nodes[:, None]  # x_0' ~ q(x_0' | x0)
    b = math.sqrt(alpha[1]) * a + math.sqrt(beta[1]) * nodes[None, :]  # x_1' ~ q(x_1' | x_0')
    log_q = log_normal(a, math.sqrt(abar[0]) * x0, 1 - abar[0]) + log_normal(b, math.sqrt(alpha[1]) * a, beta[1])
    log_p = log_normal(b, 0.0, 1.0) + log_normal(a, mean(b, 1), var1) + log_decoder(a)
    elbo_bits = float(weights @ (log_q - log_p) @ weights) / LN2
    assert bound == pytest.approx(elbo_bits, rel=1e-7, abs=1e-7)
    # -log p(x0): x_1' ~ N(0, 1), x_0' ~ p(x_0' | x_1'), then the decoder's probability of x0's bin
    latent = mean(nodes[:, None], 1) + math.sqrt(var1) * nodes[None, :]
    nll_bits = -math.log(float(weights @ np.exp(log_decoder(latent)) @ weights)) / LN2
    assert nll_bits < bound < nll_bits + 10  # a bound, and not a vacuous one
    assert bound - nll_bits == pytest.approx(bound - nll_bits)


# --- losses ----------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v"])
def test_min_snr_weights_against_their_definition(prediction):
    """The weights: min(SNR, gamma) / SNR (epsilon), / (SNR + 1) (v), min(SNR, gamma) (sample); and
    the weighted loss equals W_t ||x0 - x0_hat||^2 with W_t = min(SNR_t, gamma) (or SNR_t), x0_hat the
    x0 the model output implies: the x0-equivalent weighting both names refer to."""
    x0, xt, noise, m, _, t = data(seed=3)
    snr = SCHEDULE.snr[t]
    gamma = 5.0
    assert snr.min() < gamma < snr.max()
    weight = np.minimum(snr, gamma) / {"epsilon": snr, "v": snr + 1, "sample": 1.0}[prediction]
    plain = fastgauss.diffusion_loss(m, x0, noise, t, SCHEDULE, prediction=prediction, backend="cpu")
    for backend in ("numpy", "cpu"):
        weighted = run(fastgauss.diffusion_loss, backend, m, x0, noise, t, SCHEDULE, prediction=prediction, weighting="min_snr")
        np.testing.assert_allclose(weighted, weight * plain, rtol=1e-13)
    x0_hat = {"epsilon": lambda: fastgauss.predict_x0(xt, t, m, SCHEDULE), "sample": lambda: m,
              "v": lambda: fastgauss.v_to_x0(xt, t, m, SCHEDULE)}[prediction]()
    x0_error = ((x0 - x0_hat) ** 2).reshape(len(t), -1).mean(axis=1)
    for weighting, w in (("min_snr", np.minimum(snr, gamma)), ("snr", snr)):
        got = fastgauss.diffusion_loss(m, x0, noise, t, SCHEDULE, prediction=prediction, weighting=weighting, backend="cpu")
        np.testing.assert_allclose(got, w * x0_error, rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_losses_against_the_formulas(backend):
    x0, xt, noise, m, v, t = data(shape_for(backend))
    targets = {"epsilon": noise, "sample": x0, "v": fastgauss.predict_v(x0, noise, t, SCHEDULE, backend="numpy")}
    for prediction, target in targets.items():
        m = near_truth(prediction, x0, noise, t)
        expected = ((m - target) ** 2).reshape(len(t), -1).mean(axis=1)
        np.testing.assert_allclose(run(fastgauss.diffusion_loss, backend, m, x0, noise, t, SCHEDULE, prediction=prediction), expected,
                                   rtol=1e-12)
        vlb = composed_vlb(x0, xt, t, m, v, prediction, "learned_range", None)
        got = run(fastgauss.hybrid_loss, backend, m, v, x0, noise, t, SCHEDULE, prediction=prediction, vb_scale=0.02)
        np.testing.assert_allclose(got, expected + 0.02 * vlb, rtol=1e-10)
    elements = run(fastgauss.diffusion_loss, backend, m, x0, noise, t, SCHEDULE, reduce=None)
    np.testing.assert_allclose(elements, (m - noise) ** 2, rtol=1e-13)


def test_decoder_gradient_against_high_precision():
    """The t = 0 (decoder) term's d/d model_output and d/d var_output, epsilon prediction and
    learned_range, of the reference and the cpu kernel against the same formula differentiated
    at 40 digits (mpmath), on the 1000-step linear schedule (abar_0 = 1 - 1e-4): within 1e-13 of
    the sample's largest gradient (measured: reference 2.8e-14, cpu 3.9e-15). The reference had
    taken sqrt(1/abar - 1), which loses 4 digits there: 3.3e-13."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    schedule = fastgauss.NoiseSchedule.linear(1000)
    rng = np.random.default_rng(11)
    x0 = np.array([-1.0, -20 / 127.5, 3 / 127.5, 64 / 127.5, 1.0])
    m = rng.normal(0, 0.05, 5)  # a model output near the noise
    xt = fastgauss.q_sample(x0, 0, schedule, m + 0.01, backend="numpy")
    v = np.array([-0.9, -0.3, 0.0, 0.4, 0.8])
    shape = (1, 5)
    args = [a.reshape(shape) for a in (x0, xt, m, v)]
    grads = {backend: objective._vjp_vlb_terms(np.ones(1), args[0], args[1], 0, args[2], schedule, var_output=args[3],
                                               backend=backend) for backend in ("numpy", "cpu")}
    abar = mp.mpf(float(schedule.alphas_cumprod[0]))
    coef1, coef2 = (mp.mpf(float(a[0])) for a in (schedule.posterior_mean_coef1, schedule.posterior_mean_coef2))
    min_log, max_log = mp.mpf(float(schedule.posterior_log_variance_clipped[0])), mp.log(mp.mpf(float(schedule.betas[0])))

    def cdf(z):
        return (1 + mp.tanh(mp.sqrt(2 / mp.pi) * (z + mp.mpf("0.044715") * z**3))) / 2

    def bits(x0k, xtk, mk, vk):
        mean = coef1 * (mp.sqrt(1 / abar) * xtk - mp.sqrt(1 / abar - 1) * mk) + coef2 * xtk
        logvar = (vk + 1) / 2 * max_log + (1 - vk) / 2 * min_log
        z_plus, z_min = (x0k - mean + mp.mpf(1) / 255) * mp.exp(-logvar / 2), (x0k - mean - mp.mpf(1) / 255) * mp.exp(-logvar / 2)
        p = cdf(z_plus) if x0k < -0.999 else (1 - cdf(z_min) if x0k > 0.999 else cdf(z_plus) - cdf(z_min))
        return -mp.log(p) / mp.log(2) / len(x0)  # reduce="mean" over the sample's elements

    exact = {"model_output": [], "var_output": []}
    for k in range(len(x0)):
        x0k, xtk, mk, vk = (mp.mpf(float(a[k])) for a in (x0, xt.reshape(-1), m, v))
        exact["model_output"].append(float(mp.diff(lambda q: bits(x0k, xtk, q, vk), mk)))
        exact["var_output"].append(float(mp.diff(lambda q: bits(x0k, xtk, mk, q), vk)))
    for backend, got in grads.items():
        for name, values in exact.items():
            error = np.abs(got[name][0] - values) / np.abs(values).max()
            assert error.max() <= 1e-13, (backend, name, error)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
def test_float32_gradients_are_the_float64_gradients_rounded(backend):
    """float32 backward passes against the reference's float64 on the same float32 inputs, per
    sample, relative to that sample's largest gradient: within 1e-6, the derivatives being
    evaluated in float64 (evaluated in float32, the bound's cancellations had cost 1.7e-6 to
    5.4e-6 here, and up to 3e-5 with a 1000-step schedule)."""
    x0, xt, noise, m, v, t = data(shape_for(backend), seed=3)
    x0, xt, noise, m, v = (a.astype(np.float32) for a in (x0, xt, noise, m, v))
    cot = np.random.default_rng(4).uniform(0.5, 2.0, x0.shape[0]).astype(np.float32)
    wide = lambda *arrays: [a.astype(np.float64) for a in arrays]  # noqa: E731
    cases = {
        "vlb_terms": lambda f, b, *a: f(objective._vjp_vlb_terms, b, a[0], a[1], a[2], t, a[3], SCHEDULE, var_output=a[4]),
        "hybrid_loss": lambda f, b, *a: f(objective._vjp_hybrid_loss, b, a[0], a[3], a[4], a[1], a[5], t, SCHEDULE),
        "diffusion_loss": lambda f, b, *a: f(objective._vjp_diffusion_loss, b, a[0], a[3], a[1], a[5], t, SCHEDULE, prediction="v"),
    }
    for name, call in cases.items():
        got = call(run, backend, cot, x0, xt, m, v, noise)
        ref = call(run, "numpy", *wide(cot, x0, xt, m, v, noise))
        for k in ref:
            assert got[k].dtype == np.float32
            error = np.abs(got[k] - ref[k]).reshape(len(t), -1).max(axis=1)
            scale = np.abs(ref[k]).reshape(len(t), -1).max(axis=1)
            assert np.all(error <= 1e-6 * scale), f"{name} {k}: {error / scale}"


def test_float32_nan_out_and_errors():
    x0, xt, noise, m, v, t = data()
    f32 = [a.astype(np.float32) for a in (x0, xt, m, v)]
    exact = fastgauss.vlb_terms(*f32[:2], t, f32[2], SCHEDULE, var_output=f32[3], backend="numpy")
    got = fastgauss.vlb_terms(*f32[:2], t, f32[2], SCHEDULE, var_output=f32[3], backend="cpu")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, exact, rtol=1e-5)
    loss32 = fastgauss.diffusion_loss(f32[2], f32[0], noise.astype(np.float32), t, SCHEDULE, weighting="min_snr", backend="cpu")
    np.testing.assert_allclose(loss32, fastgauss.diffusion_loss(m, x0, noise, t, SCHEDULE, weighting="min_snr", backend="cpu"), rtol=1e-5)
    bad = m.copy()
    bad[1, 0, 0, 0] = np.nan
    assert np.isnan(fastgauss.vlb_terms(x0, xt, t, bad, SCHEDULE, var_output=v, backend="cpu")).tolist() == [False, True, False, False]
    out = np.empty(4)
    assert fastgauss.diffusion_loss(m, x0, noise, t, SCHEDULE, out=out, backend="cpu") is out
    with pytest.raises(ValueError, match="var_output"):
        fastgauss.vlb_terms(x0, xt, t, m, SCHEDULE)  # learned_range without the variance output
    with pytest.raises(ValueError, match="weighting"):
        fastgauss.diffusion_loss(m, x0, noise, t, SCHEDULE, weighting="snr2")
    with pytest.raises(ValueError, match="noise must have the shape"):
        fastgauss.diffusion_loss(m, x0, noise[:, :1], t, SCHEDULE)
    with pytest.raises(ValueError, match="kind"):
        fastgauss.model_log_variance(v, t, SCHEDULE, kind="large")
    with pytest.raises(ValueError, match="out has dtype"):
        fastgauss.prior_bpd(x0, SCHEDULE, out=np.empty(4, np.float32))
    with pytest.raises(ValueError, match="cotangent must have"):
        objective._vjp_diffusion_loss(np.ones(3), m, x0, noise, t, SCHEDULE)
    with pytest.raises(ValueError, match="wrt"):
        objective._vjp_diffusion_loss(np.ones(4), m, x0, noise, t, SCHEDULE, wrt=["noise"])


# --- gradients -------------------------------------------------------------------------------


def torch_terms(torch, x0, xt, t, m, v, prediction, var_kind, clip, noise=None, weighting=None, gamma=5.0, hybrid=False):
    """improved-diffusion's formulas in torch (float64): the vlb terms (bits, elementwise), or with
    ``noise`` the weighted squared error (plus the frozen-mean vlb for ``hybrid``)."""
    def tab(table):
        return torch.tensor(np.asarray(table)[t], dtype=torch.float64).reshape((-1,) + (1,) * (x0.dim() - 1))

    abar = tab(SCHEDULE.alphas_cumprod)

    def vlb(m, xt):
        x0_hat = {"epsilon": lambda: torch.sqrt(1 / abar) * xt - torch.sqrt(1 / abar - 1) * m, "sample": lambda: m,
                  "v": lambda: torch.sqrt(abar) * xt - torch.sqrt(1 - abar) * m}[prediction]()
        if clip is not None:
            x0_hat = x0_hat.clamp(-clip, clip)
        c1, c2 = tab(SCHEDULE.posterior_mean_coef1), tab(SCHEDULE.posterior_mean_coef2)
        true_mean, true_logvar = c1 * x0 + c2 * xt, tab(SCHEDULE.posterior_log_variance_clipped)
        mean = c1 * x0_hat + c2 * xt
        if var_kind == "learned":
            logvar = v
        else:
            frac = (v + 1) / 2
            logvar = frac * torch.log(tab(SCHEDULE.betas)) + (1 - frac) * tab(SCHEDULE.posterior_log_variance_clipped)
        kl = 0.5 * (-1 + logvar - true_logvar + torch.exp(true_logvar - logvar) + (true_mean - mean) ** 2 * torch.exp(-logvar))

        def cdf(z):
            return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))

        inv = torch.exp(-0.5 * logvar)
        plus, minus = cdf(inv * (x0 - mean + 1 / 255)), cdf(inv * (x0 - mean - 1 / 255))
        log_p = torch.where(x0 < -0.999, torch.log(plus.clamp(min=1e-12)),
                            torch.where(x0 > 0.999, torch.log((1 - minus).clamp(min=1e-12)), torch.log((plus - minus).clamp(min=1e-12))))
        return torch.where(tab(np.arange(SCHEDULE.num_timesteps) == 0) > 0, -log_p, kl) / LN2

    if noise is None:
        return vlb(m, xt)
    target = {"epsilon": noise, "sample": x0, "v": torch.sqrt(abar) * noise - torch.sqrt(1 - abar) * x0}[prediction]
    snr = tab(SCHEDULE.snr)
    w = torch.ones_like(snr) if weighting is None else torch.minimum(snr, torch.tensor(gamma, dtype=torch.float64)) / {
        "epsilon": snr, "v": snr + 1, "sample": torch.ones_like(snr)}[prediction]
    loss = w * (m - target) ** 2
    if hybrid:
        loss = loss + vlb(m.detach(), torch.sqrt(abar) * x0 + torch.sqrt(1 - abar) * noise)
    return loss


def torch_grads(torch, cot, arrays, names, build):
    leaves = {k: torch.tensor(a, requires_grad=k in names) for k, a in arrays.items()}
    values = build(leaves).reshape(cot.shape[0], -1).mean(dim=1)
    values.backward(torch.tensor(cot))
    return {k: np.zeros_like(arrays[k]) if leaves[k].grad is None else leaves[k].grad.numpy() for k in names}


@pytest.mark.parametrize("backend", BACKENDS)
def test_vjps_against_torch_autograd(backend):
    torch = pytest.importorskip("torch")
    x0, xt, noise, m, v, t = data(shape_for(backend), seed=5)
    cot = np.random.default_rng(6).standard_normal(x0.shape[0])
    arrays = dict(x0=x0, xt=xt, m=m, v=v, noise=noise)
    cases = [("epsilon", "learned_range", 1.0), ("v", "learned", None)] if backend != "cuda" else [("epsilon", "learned_range", 1.0)]
    for prediction, var_kind, clip in cases:
        vv = np.log(0.02) + 0.3 * v if var_kind == "learned" else v
        arrays["v"] = vv
        expected = torch_grads(torch, cot, arrays, ["x0", "xt", "m", "v"],
                               lambda a: torch_terms(torch, a["x0"], a["xt"], t, a["m"], a["v"], prediction, var_kind, clip))
        got = run(objective._vjp_vlb_terms, backend, cot, x0, xt, t, m, SCHEDULE, prediction=prediction, var_output=vv,
                  var_kind=var_kind, clip=clip)
        for mine, theirs in (("x0", "x0"), ("xt", "xt"), ("model_output", "m"), ("var_output", "v")):
            scale = np.abs(expected[theirs]).max()
            np.testing.assert_allclose(got[mine], expected[theirs], rtol=0, atol=1e-10 * scale, err_msg=f"{prediction} {mine}")
    arrays["v"] = v
    for prediction in ("v", "epsilon") if backend != "cuda" else ("sample",):
        expected = torch_grads(torch, cot, arrays, ["m", "x0"], lambda a: torch_terms(
            torch, a["x0"], None, t, a["m"], None, prediction, None, None, noise=a["noise"], weighting="min_snr"))
        got = run(objective._vjp_diffusion_loss, backend, cot, m, x0, noise, t, SCHEDULE, prediction=prediction, weighting="min_snr")
        np.testing.assert_allclose(got["model_output"], expected["m"], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(got["x0"], expected["x0"], rtol=1e-10, atol=1e-14)
        expected = torch_grads(torch, cot, arrays, ["m", "v"], lambda a: torch_terms(
            torch, a["x0"], None, t, a["m"], a["v"], prediction, "learned_range", None, noise=a["noise"], hybrid=True))
        got = run(objective._vjp_hybrid_loss, backend, cot, m, v, x0, noise, t, SCHEDULE, prediction=prediction)
        np.testing.assert_allclose(got["model_output"], expected["m"], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(got["var_output"], expected["v"], rtol=1e-10, atol=1e-12 * np.abs(expected["v"]).max())
    if backend != "numpy":  # the elementwise cotangent (reduce=None)
        cot_full = np.random.default_rng(7).standard_normal(x0.shape)
        ref = objective._vjp_vlb_terms(cot_full, x0, xt, t, m, SCHEDULE, var_output=v, reduce=None, backend="numpy")
        got = run(objective._vjp_vlb_terms, backend, cot_full, x0, xt, t, m, SCHEDULE, var_output=v, reduce=None)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-10 * np.abs(ref[k]).max())


@pytest.mark.parametrize("op", ["vlb_terms", "diffusion_loss", "hybrid_loss"])
def test_vjps_against_finite_differences(op):
    """gradcheck-style: <grad, d> against the central difference (f(p + h d) - f(p - h d)) / 2h of
    <cot, f> along random directions d, float64, on the cpu kernels."""
    x0, xt, noise, m, v, t = data(seed=8)
    rng = np.random.default_rng(9)
    cot = rng.standard_normal(len(t))
    if op == "vlb_terms":
        args, names = dict(x0=x0, xt=xt, model_output=m, var_output=v), ["x0", "xt", "model_output", "var_output"]

        def f(a):
            return fastgauss.vlb_terms(a["x0"], a["xt"], t, a["model_output"], SCHEDULE, var_output=a["var_output"], clip=2.0, backend="cpu")

        grads = objective._vjp_vlb_terms(cot, x0, xt, t, m, SCHEDULE, var_output=v, clip=2.0, backend="cpu")
    elif op == "diffusion_loss":
        args, names = dict(model_output=m, x0=x0), ["model_output", "x0"]

        def f(a):
            return fastgauss.diffusion_loss(a["model_output"], a["x0"], noise, t, SCHEDULE, prediction="v", weighting="snr", backend="cpu")

        grads = objective._vjp_diffusion_loss(cot, m, x0, noise, t, SCHEDULE, prediction="v", weighting="snr", backend="cpu")
    else:
        args, names = dict(model_output=m, var_output=v), ["var_output"]  # model_output: the frozen mean is not f's derivative

        def f(a):
            return fastgauss.hybrid_loss(a["model_output"], a["var_output"], x0, noise, t, SCHEDULE, backend="cpu")

        grads = objective._vjp_hybrid_loss(cot, m, v, x0, noise, t, SCHEDULE, wrt=["var_output"], backend="cpu")
    assert sorted(grads) == sorted(names)
    h = 1e-6
    for name in names:
        d = rng.standard_normal(args[name].shape)
        if name == "x0":
            d[np.abs(np.abs(x0) - 1) < 1e-3] = 0  # the edge bins' thresholds are not differentiable
        plus, minus = dict(args), dict(args)
        plus[name], minus[name] = args[name] + h * d, args[name] - h * d
        numeric = (cot @ f(plus) - cot @ f(minus)) / (2 * h)
        assert np.sum(grads[name] * d) == pytest.approx(numeric, rel=1e-6, abs=1e-9), name


# --- the dataset NLL -------------------------------------------------------------------------


def test_nll_bpd_sums_the_terms_and_keeps_partial_results():
    s = fastgauss.NoiseSchedule.linear(4, beta_start=0.05, beta_end=0.5)
    x0 = data((3, 2, 2))[0]

    def model(xt, t):
        return 0.3 * xt

    result = fastgauss.nll_bpd(model, x0, s, rng=1, var_kind="fixed_large", progress=False, backend="numpy")
    assert result.complete and result.timesteps.tolist() == [3, 2, 1, 0]
    rng = fastgauss.default_rng(1)
    expected = fastgauss.prior_bpd(x0, s).copy()
    for step in (3, 2, 1, 0):
        xt = fastgauss.q_sample(x0, np.full(3, step), s, rng=rng, backend="numpy")
        expected += fastgauss.vlb_terms(x0, xt, np.full(3, step), model(xt, step), s, var_kind="fixed_large")
    np.testing.assert_allclose(result.bpd, expected, rtol=1e-12)
    stacked = fastgauss.nll_bpd(model, x0, s, rng=1, var_kind="fixed_large", batch_timesteps=3, progress=True, backend="numpy")
    assert stacked.complete and stacked.terms.shape == (3, 4) and np.all(np.isfinite(stacked.terms))
    calls = []

    def interrupted(xt, t):
        calls.append(t)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return model(xt, t)

    with pytest.warns(RuntimeWarning, match="interrupted after 1 of 4"):
        partial = fastgauss.nll_bpd(interrupted, x0, s, rng=1, var_kind="fixed_large", progress=False, backend="numpy")
    assert not partial.complete and partial.timesteps.tolist() == [3]
    np.testing.assert_allclose(partial.bpd, partial.prior + result.terms[:, 3], rtol=1e-12)
    assert np.isnan(partial.terms[:, :3]).all()


@pytest.mark.skipif(not CUDA_USABLE, reason="cuda backend not usable")
def test_nll_bpd_on_device_arrays():
    """CUDA x0: the timesteps go to the device with the data, and the bound is the host one's."""
    s = fastgauss.NoiseSchedule.linear(3, beta_start=0.05, beta_end=0.5)
    x0 = data((2, 1, 2))[0]
    host = fastgauss.nll_bpd(lambda xt, t: 0.3 * xt, x0, s, rng=1, var_kind="fixed_large", progress=False, backend="numpy")
    device = fastgauss.nll_bpd(lambda xt, t: to_backend(0.3 * to_numpy(xt), "cuda"), to_backend(x0, "cuda"), s, rng=1,
                               var_kind="fixed_large", progress=False)
    np.testing.assert_allclose(device.bpd, host.bpd, rtol=1e-12)
