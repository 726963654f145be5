"""The reverse process: q_posterior, the parameterization conversions, ddpm_step and
ddim_step. Parity with the reference, Bayes' rule, round trips, Monte Carlo, a full
reverse chain on a Gaussian mixture, and every error."""

import math

import numpy as np
import pytest
from scipy import special, stats

import fastgauss
from conftest import CUDA_USABLE, to_backend, to_numpy

LINEAR = fastgauss.NoiseSchedule.linear(1000)
COSINE = fastgauss.NoiseSchedule.cosine(1000)
EPS = {np.float32: np.finfo(np.float32).eps, np.float64: np.finfo(np.float64).eps}


def inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape).astype(dtype) for _ in range(3))


def per_sample(table, t, ndim):
    """table[t] as float64, shaped (B, 1, ..., 1) or scalar."""
    values = np.asarray(table, np.float64)[t]
    return values.reshape((-1,) + (1,) * (ndim - 1)) if np.ndim(t) else values


def run(function, backend, *args, **kwargs):
    """Call an op on ``backend`` with every ndarray argument moved there."""
    moved = [to_backend(a, backend) if isinstance(a, np.ndarray) else a for a in args]
    kwargs = {k: to_backend(v, backend) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    result = function(*moved, **kwargs, backend=backend)
    return tuple(to_numpy(r) for r in result) if isinstance(result, tuple) else to_numpy(result)


# --- the linear ops ------------------------------------------------------------------------

# op -> (argument order, float64 coefficients (a, b) of out = a u + b w), from the formulas
# in terms of the schedule's tables sa = sqrt(abar), sn = sqrt(1 - abar) (recomputing
# 1 - abar near abar = 1 would lose digits the tables keep).
def _sa(s, t, n):
    return per_sample(s.sqrt_alphas_cumprod, t, n)


def _sn(s, t, n):
    return per_sample(s.sqrt_one_minus_alphas_cumprod, t, n)


LINEAR_OPS = {
    "predict_x0": ("u_t_w", lambda s, t, n: (1 / _sa(s, t, n), -_sn(s, t, n) / _sa(s, t, n))),
    "predict_eps": ("u_t_w", lambda s, t, n: (1 / _sn(s, t, n), -_sa(s, t, n) / _sn(s, t, n))),
    "predict_v": ("u_w_t", lambda s, t, n: (-_sn(s, t, n), _sa(s, t, n))),
    "v_to_x0": ("u_t_w", lambda s, t, n: (_sa(s, t, n), -_sn(s, t, n))),
    "v_to_eps": ("u_t_w", lambda s, t, n: (_sn(s, t, n), _sa(s, t, n))),
    "posterior_mean_from_eps": (
        "u_t_w",
        lambda s, t, n: (1 / np.sqrt(per_sample(s.alphas, t, n)), -per_sample(s.betas, t, n) / (_sn(s, t, n) * np.sqrt(per_sample(s.alphas, t, n)))),
    ),
    "q_posterior": ("u_w_t", lambda s, t, n: (per_sample(s.posterior_mean_coef1, t, n), per_sample(s.posterior_mean_coef2, t, n))),
}


def call_linear(op, backend, u, w, t, schedule):
    order = LINEAR_OPS[op][0]
    args = (u, t, w, schedule) if order == "u_t_w" else (u, w, t, schedule)
    result = run(getattr(fastgauss, op), backend, *args)
    return result[0] if op == "q_posterior" else result


@pytest.mark.parametrize("op", list(LINEAR_OPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("t_form", ["per sample", "scalar"])
def test_linear_ops_against_their_formula(backend, op, dtype, t_form):
    """Every backend within rounding of the float64 formula: |err| <= 8 eps (|a u| + |b w|)."""
    shape = (3, 2, 4, 5)
    u, w, _ = inputs(shape, dtype)
    t = np.array([1, 500, 999]) if t_form == "per sample" else 250
    got = call_linear(op, backend, u, w, t, COSINE)
    assert got.dtype == dtype and got.shape == shape
    a, b = LINEAR_OPS[op][1](COSINE, t, len(shape))
    exact = a * u.astype(np.float64) + b * w.astype(np.float64)
    scale = np.abs(a * u) + np.abs(b * w)
    assert np.all(np.abs(got - exact) <= 8 * EPS[dtype] * scale)


def test_q_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x0): precisions add, means are precision-weighted."""
    x0, xt, _ = inputs((5, 7), np.float64, seed=1)
    for schedule in (LINEAR, COSINE):
        t = np.array([1, 2, 100, 600, 998])
        mean, variance, log_variance = fastgauss.q_posterior(x0, xt, t, schedule, backend="cpu")
        alpha, beta = schedule.alphas[t][:, None], schedule.betas[t][:, None]
        abar_prev = schedule.alphas_cumprod[t - 1][:, None]
        precision = alpha / beta + 1 / (1 - abar_prev)
        expected_mean = (np.sqrt(alpha) / beta * xt + np.sqrt(abar_prev) / (1 - abar_prev) * x0) / precision
        np.testing.assert_allclose(mean, expected_mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(variance, 1 / precision, rtol=1e-10)
        np.testing.assert_allclose(log_variance, np.log(1 / precision), rtol=1e-10)
        assert variance.shape == (5, 1) and variance.dtype == np.float64


def test_q_posterior_variance_shapes_and_kinds(backend):
    x0, xt, _ = inputs((2, 3, 4), np.float32)
    mean, variance, log_variance = run(fastgauss.q_posterior, backend, x0, xt, 7, LINEAR)
    assert variance.shape == () and variance.dtype == np.float32
    assert variance == np.float32(LINEAR.posterior_variance[7])
    assert log_variance == np.float32(LINEAR.posterior_log_variance_clipped[7])
    mean, variance, log_variance = run(fastgauss.q_posterior, backend, x0, xt, np.array([0, 5]), LINEAR)
    assert variance.shape == (2, 1, 1)
    assert log_variance[0, 0, 0] == np.float32(LINEAR.posterior_log_variance_clipped[1])  # the clipped entry 0


def test_conversion_round_trips():
    x0, eps, _ = inputs((4, 6), np.float64, seed=2)
    t = np.array([0, 10, 500, 999])
    for schedule in (LINEAR, COSINE):
        xt = fastgauss.q_sample(x0, t, schedule, eps)
        np.testing.assert_allclose(fastgauss.predict_x0(xt, t, eps, schedule), x0, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(fastgauss.predict_eps(xt, t, x0, schedule), eps, rtol=1e-9, atol=1e-9)
        v = fastgauss.predict_v(x0, eps, t, schedule)
        np.testing.assert_allclose(fastgauss.v_to_x0(xt, t, v, schedule), x0, atol=1e-12)
        np.testing.assert_allclose(fastgauss.v_to_eps(xt, t, v, schedule), eps, atol=1e-12)
        # the posterior mean from the true noise is the posterior mean given the true x0
        t1 = t[1:]
        mean = fastgauss.q_posterior(x0[1:], xt[1:], t1, schedule)[0]
        np.testing.assert_allclose(fastgauss.posterior_mean_from_eps(xt[1:], t1, eps[1:], schedule), mean, atol=1e-9)


# --- ddpm_step and ddim_step -------------------------------------------------------------------


def implied(prediction, m, xt, abar):
    """(x0, eps, |x0| scale, |eps| scale) implied by the model output, float64."""
    sa, sn = np.sqrt(abar), np.sqrt(1 - abar)
    if prediction == "epsilon":
        return (xt - sn * m) / sa, m, (np.abs(xt) + sn * np.abs(m)) / sa, np.abs(m)
    if prediction == "sample":
        return m, (xt - sa * m) / sn, np.abs(m), (np.abs(xt) + sa * np.abs(m)) / sn
    return sa * xt - sn * m, sa * m + sn * xt, sa * np.abs(xt) + sn * np.abs(m), sa * np.abs(m) + sn * np.abs(xt)


def ddpm_exact(m, xt, z, t, schedule, prediction, clip, variance):
    """ddpm_step from the formulas in float64, with the magnitude of its terms (for tolerances)."""
    n = xt.ndim
    m, xt, z = (a.astype(np.float64) for a in (m, xt, z))
    x0, _, x0_scale, _ = implied(prediction, m, xt, per_sample(schedule.alphas_cumprod, t, n))
    if clip is not None:
        x0 = np.clip(x0, -clip, clip)
    c1, c2 = per_sample(schedule.posterior_mean_coef1, t, n), per_sample(schedule.posterior_mean_coef2, t, n)
    var = np.maximum(schedule.posterior_variance, 1e-20) if variance == "small" else schedule.betas
    std = per_sample(np.sqrt(var), t, n) * (per_sample(np.arange(schedule.num_timesteps), t, n) > 0)
    out = c1 * x0 + c2 * xt + std * z
    return out, x0, c1 * x0_scale + c2 * np.abs(xt) + std * np.abs(z), x0_scale


def ddim_exact(m, xt, z, t, t_prev, schedule, eta, prediction, clip):
    n = xt.ndim
    m, xt, z = (a.astype(np.float64) for a in (m, xt, z))
    table = np.append(schedule.alphas_cumprod, 1.0)
    abar, abar_prev = per_sample(table, t, n), per_sample(table, t_prev, n)
    x0, eps, x0_scale, eps_scale = implied(prediction, m, xt, abar)
    if clip is not None:
        x0 = np.clip(x0, -clip, clip)
    sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
    direction = np.sqrt(1 - abar_prev - sigma**2)
    out = np.sqrt(abar_prev) * x0 + direction * eps + sigma * z
    return out, x0, np.sqrt(abar_prev) * x0_scale + direction * eps_scale + sigma * np.abs(z), x0_scale


STEP_CASES = [(p, c) for p in ("epsilon", "sample", "v") for c in (None, 1.5)]


@pytest.mark.parametrize("prediction, clip", STEP_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_step_against_its_formula(backend, prediction, clip, dtype, variance):
    shape = (4, 3, 5)
    m, xt, z = inputs(shape, dtype, seed=3)
    for t in (np.array([0, 1, 400, 999]), 300):
        got, x0 = run(fastgauss.ddpm_step, backend, m, xt, t, LINEAR, prediction=prediction, clip=clip,
                      variance=variance, noise=z, return_x0=True)
        exact, exact_x0, scale, x0_scale = ddpm_exact(m, xt, z, t, LINEAR, prediction, clip, variance)
        assert got.dtype == dtype and x0.dtype == dtype
        assert np.all(np.abs(x0 - exact_x0) <= 8 * EPS[dtype] * x0_scale)
        assert np.all(np.abs(got - exact) <= 16 * EPS[dtype] * scale)


@pytest.mark.parametrize("prediction, clip", STEP_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_ddim_step_against_its_formula(backend, prediction, clip, dtype, eta):
    shape = (4, 3, 5)
    m, xt, z = inputs(shape, dtype, seed=4)
    for t, t_prev in ((np.array([0, 10, 500, 999]), np.array([-1, 0, 480, 949])), (700, 600)):
        got, x0 = run(fastgauss.ddim_step, backend, m, xt, t, t_prev, COSINE, eta=eta, prediction=prediction,
                      clip=clip, noise=z, return_x0=True)
        exact, exact_x0, scale, x0_scale = ddim_exact(m, xt, z, t, t_prev, COSINE, eta, prediction, clip)
        assert np.all(np.abs(x0 - exact_x0) <= 8 * EPS[dtype] * x0_scale)
        assert np.all(np.abs(got - exact) <= 16 * EPS[dtype] * scale)


@pytest.mark.parametrize("op", ["ddpm_step", "ddim_step"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_generated_noise_equals_standard_normal(backend, op, dtype):
    shape = (3, 37)  # 111 elements: a partial last block
    m, xt, _ = inputs(shape, dtype, seed=5)
    t = np.array([0, 500, 999])
    times = (t,) if op == "ddpm_step" else (t, t - 1)
    kwargs = {} if op == "ddpm_step" else {"eta": 0.8}
    rng = fastgauss.default_rng(17)
    got = run(getattr(fastgauss, op), backend, m, xt, *times, LINEAR, rng=rng, **kwargs)
    twin = fastgauss.default_rng(17)
    z = to_numpy(twin.standard_normal(shape, dtype=dtype, backend=backend))
    expected = run(getattr(fastgauss, op), backend, m, xt, *times, LINEAR, noise=z, **kwargs)
    np.testing.assert_array_equal(got, expected)
    assert rng.state == twin.state
    # and the reference given the reference's noise: the formula's rounding (as in the formula tests)
    # plus the compiled normals' 1e-6 / 1e-14 (relative to max(1, |z|)) times the noise's coefficient
    z_ref = fastgauss.default_rng(17).standard_normal(shape, dtype=dtype, backend="numpy")
    reference = getattr(fastgauss.reference, op)(m, xt, *times, LINEAR, noise=z_ref, **kwargs)
    if op == "ddpm_step":
        _, _, scale, _ = ddpm_exact(m, xt, z_ref, t, LINEAR, "epsilon", None, "small")
        sigma = per_sample(np.sqrt(np.maximum(LINEAR.posterior_variance, 1e-20)), t, 2) * (t[:, None] > 0)
    else:
        _, _, scale, _ = ddim_exact(m, xt, z_ref, t, t - 1, LINEAR, 0.8, "epsilon", None)
        abar, abar_prev = per_sample(np.append(LINEAR.alphas_cumprod, 1.0), t, 2), per_sample(np.append(LINEAR.alphas_cumprod, 1.0), t - 1, 2)
        sigma = 0.8 * np.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
    normal_tolerance = {np.float32: 1e-6, np.float64: 1e-14}[dtype] * np.maximum(1.0, np.abs(z_ref)) * sigma
    assert np.all(np.abs(got - reference) <= 32 * EPS[dtype] * scale + normal_tolerance)


def test_mixed_dtypes_follow_result_type(backend):
    m, xt, z = inputs((2, 9), np.float64, seed=9)
    z32 = z.astype(np.float32)
    got = run(fastgauss.ddpm_step, backend, m, xt, np.array([3, 700]), LINEAR, noise=z32)
    assert got.dtype == np.float64
    expected = fastgauss.ddpm_step(m, xt, np.array([3, 700]), LINEAR, noise=z32.astype(np.float64), backend="numpy")
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    xt32 = run(fastgauss.ddim_step, backend, m.astype(np.float32), xt.astype(np.float32), 500, 480, LINEAR)
    assert xt32.dtype == np.float32


def test_no_noise_at_t_zero():
    m, xt, _ = inputs((2, 50), np.float64, seed=6)
    nan_noise = np.full((2, 50), np.nan)
    x0 = fastgauss.reference.predict_x0(xt, 0, m, LINEAR)
    expected = fastgauss.reference.q_posterior(x0, xt, 0, LINEAR)[0]
    np.testing.assert_allclose(expected, LINEAR.posterior_mean_coef1[0] * x0 + LINEAR.posterior_mean_coef2[0] * xt, rtol=1e-12)
    for backend in ("numpy", "cpu"):
        got = fastgauss.ddpm_step(m, xt, np.array([0, 0]), LINEAR, noise=nan_noise, backend=backend)
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_ddim_eta_zero_is_deterministic_and_draws_nothing():
    m, xt, z = inputs((3, 40), np.float64, seed=7)
    t, t_prev = np.array([999, 500, 20]), np.array([979, 480, -1])
    rng = fastgauss.default_rng(1)
    before = rng.state
    first = fastgauss.ddim_step(m, xt, t, t_prev, COSINE, rng=rng, backend="cpu")
    second = fastgauss.ddim_step(m, xt, t, t_prev, COSINE, noise=z * np.nan, backend="cpu")  # noise unused
    np.testing.assert_array_equal(first, second)
    assert rng.state == before
    abar = COSINE.alphas_cumprod[t][:, None]
    abar_prev = np.append(COSINE.alphas_cumprod, 1.0)[t_prev][:, None]
    x0 = (xt - np.sqrt(1 - abar) * m) / np.sqrt(abar)
    np.testing.assert_allclose(first, np.sqrt(abar_prev) * x0 + np.sqrt(1 - abar_prev) * m, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(first[2], x0[2], rtol=1e-12)  # t_prev = -1 returns the x0 estimate


def test_ancestral_step_mean_and_variance_by_monte_carlo():
    """x_{t-1} | x_t ~ N(posterior mean of (x0_hat, x_t), var_t): check both moments."""
    n, t = 400_000, 250
    xt = np.full(n, 0.8)
    m = np.full(n, -0.3)
    for variance, var_table in (("small", LINEAR.posterior_variance), ("large", LINEAR.betas)):
        samples = fastgauss.ddpm_step(m, xt, t, LINEAR, variance=variance, rng=t, backend="cpu")
        x0 = (0.8 - math.sqrt(1 - LINEAR.alphas_cumprod[t]) * -0.3) / math.sqrt(LINEAR.alphas_cumprod[t])
        mean = LINEAR.posterior_mean_coef1[t] * x0 + LINEAR.posterior_mean_coef2[t] * 0.8
        var = var_table[t]
        # the step itself: mean + sqrt(var) z for the reference's z from the same seed (1e-14 normals)
        z = fastgauss.default_rng(t).standard_normal(n, backend="numpy")
        np.testing.assert_allclose(samples, mean + math.sqrt(var) * z, rtol=0, atol=1e-13)
        assert abs(samples.mean() - mean) < 5 * math.sqrt(var / n)
        assert abs(samples.var() - var) < 5 * var * math.sqrt(2 / n)


# --- end to end: the reverse chain samples a Gaussian mixture ------------------------------------

WEIGHTS, MEANS, STDS = np.array([0.3, 0.7]), np.array([-2.0, 1.5]), np.array([0.3, 0.5])


def mixture_eps(x, abar):
    """The exact noise prediction for the mixture: -sqrt(1 - abar) d/dx log p_t(x), where
    p_t = sum_k w_k N(sqrt(abar) mu_k, abar s_k^2 + 1 - abar)."""
    means, variances = math.sqrt(abar) * MEANS, abar * STDS**2 + (1 - abar)
    log_w = np.log(WEIGHTS) - 0.5 * np.log(variances) - 0.5 * (x[:, None] - means) ** 2 / variances
    responsibility = np.exp(log_w - special.logsumexp(log_w, axis=1, keepdims=True))
    return math.sqrt(1 - abar) * np.sum(responsibility * (x[:, None] - means) / variances, axis=1)


def mixture_cdf(x):
    return np.sum(WEIGHTS * stats.norm.cdf((np.asarray(x)[:, None] - MEANS) / STDS), axis=1)


@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_reverse_chain_samples_the_mixture(schedule):
    n = 20_000
    rng = fastgauss.default_rng(2024)
    T = schedule.num_timesteps
    abar = schedule.alphas_cumprod[T - 1]  # start from the exact marginal at t = T - 1
    component = fastgauss.default_rng(1).random(n) < WEIGHTS[0]
    start = np.where(component, MEANS[0], MEANS[1]) + np.where(component, STDS[0], STDS[1]) * rng.standard_normal(n)
    x = math.sqrt(abar) * start + math.sqrt(1 - abar) * rng.standard_normal(n)
    for t in range(T - 1, -1, -1):
        x = fastgauss.ddpm_step(mixture_eps(x, schedule.alphas_cumprod[t]), x, t, schedule, rng=rng, out=x, backend="cpu")
    result = stats.kstest(x, mixture_cdf)
    assert result.pvalue > 1e-3, result
    assert abs(np.mean(x < 0) - WEIGHTS[0]) < 5 * math.sqrt(0.21 / n)


def test_ddim_chain_with_50_steps_samples_the_mixture():
    n = 20_000
    steps = np.linspace(999, 0, 50).round().astype(int)
    rng = fastgauss.default_rng(7)
    x = rng.standard_normal(n)  # abar_999 of the linear schedule is 4e-5: N(0, 1) up to 0.1%
    for t, t_prev in zip(steps, list(steps[1:]) + [-1]):
        x = fastgauss.ddim_step(mixture_eps(x, LINEAR.alphas_cumprod[t]), x, int(t), int(t_prev), LINEAR, eta=1.0, rng=rng, backend="cpu")
    assert abs(np.mean(x < 0) - WEIGHTS[0]) < 0.02
    assert abs(x[x > 0].mean() - MEANS[1]) < 0.05 and abs(x[x < 0].mean() - MEANS[0]) < 0.05


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(prediction="x0"), ValueError, r"prediction must be one of \('epsilon', 'sample', 'v'\); got 'x0'"),
        (dict(variance="learned"), ValueError, r"variance must be one of \('small', 'large'\)"),
        (dict(clip=0), ValueError, r"clip must be None or a positive number; got 0"),
        (dict(clip=float("nan")), ValueError, r"clip must be None or a positive number"),
        (dict(clip="1"), TypeError, r"clip must be None or a positive number"),
        (dict(noise=np.zeros((2, 3)), rng=1), ValueError, r"pass either noise or rng, not both"),
        (dict(noise=np.zeros((2, 4))), ValueError, r"noise must have the shape of xt \(2, 3\); got \(2, 4\)"),
        (dict(t=1000), ValueError, r"t must be in \[0, 1000\); got 1000"),
        (dict(model_output=np.zeros((3, 2))), ValueError, r"model_output must have the shape of xt \(2, 3\)"),
        (dict(out=np.zeros((2, 3), np.float32)), ValueError, r"out has dtype float32"),
    ],
)
def test_ddpm_step_errors(kwargs, exc, match):
    args = dict(model_output=np.zeros((2, 3)), xt=np.zeros((2, 3)), t=5)
    for key in list(args):
        if key in kwargs:
            args[key] = kwargs.pop(key)
    out = kwargs.get("out")
    before = None if out is None else out.copy()
    rng = fastgauss.default_rng(0)
    state = rng.state
    with pytest.raises(exc, match=match):
        fastgauss.ddpm_step(args["model_output"], args["xt"], args["t"], LINEAR, **{"rng": rng, **kwargs} if "noise" not in kwargs else kwargs)
    assert rng.state == state
    if out is not None:
        np.testing.assert_array_equal(out, before)


@pytest.mark.parametrize(
    "t_prev, eta, exc, match",
    [
        (-2, 0.0, ValueError, r"t_prev must be in \[-1, 1000\); got -2"),
        (1000, 0.0, ValueError, r"t_prev must be in \[-1, 1000\)"),
        (np.array([1.0, 2.0]), 0.0, TypeError, r"t_prev must be an integer"),
        (3, -0.5, ValueError, r"eta must be a number >= 0"),
        (3, 5.0, ValueError, r"eta = 5.0 is too large"),
        (np.array([3, 600]), 0.5, ValueError, r"t_prev > t \(a DDIM inversion step, first at sample 1\) needs eta = 0"),
    ],
)
def test_ddim_step_errors(t_prev, eta, exc, match):
    with pytest.raises(exc, match=match):
        fastgauss.ddim_step(np.zeros((2, 3)), np.zeros((2, 3)), 500, t_prev, LINEAR, eta=eta)
    if exc is ValueError and "eta" in match:  # the gradient checks the same (t, t_prev, eta)
        with pytest.raises(exc, match=match):
            fastgauss.vjp(fastgauss.ddim_step, np.ones((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)), 500, t_prev, LINEAR, eta=eta)


def test_ddim_inversion_steps_toward_noise_and_back(backend):
    """t_prev > t with eta = 0 is DDIM inversion: x_next = sqrt(abar_next) x0_hat + sqrt(1 - abar_next)
    eps_hat (sigma exactly 0, where eta times the root of a negative number was NaN); stepping back
    with the same eps_hat returns x_t, to rounding."""
    m, xt, _ = inputs((3, 40), np.float64, seed=8)
    t, t_next = np.array([0, 480, 20]), np.array([20, 500, 999])
    inverted = run(fastgauss.ddim_step, backend, m, xt, t, t_next, COSINE)
    abar, abar_next = COSINE.alphas_cumprod[t][:, None], COSINE.alphas_cumprod[t_next][:, None]
    x0 = (xt - np.sqrt(1 - abar) * m) / np.sqrt(abar)
    np.testing.assert_allclose(inverted, np.sqrt(abar_next) * x0 + np.sqrt(1 - abar_next) * m, rtol=1e-9, atol=1e-9)
    back = run(fastgauss.ddim_step, backend, m, inverted, t_next, t, COSINE)
    np.testing.assert_allclose(back, xt, rtol=1e-9, atol=1e-9)


def test_linear_op_errors():
    with pytest.raises(ValueError, match=r"eps must have the shape of xt \(2, 3\); got \(3, 3\)"):
        fastgauss.predict_x0(np.zeros((2, 3)), 1, np.zeros((3, 3)), LINEAR)
    with pytest.raises(TypeError, match="t must be an integer"):
        fastgauss.v_to_x0(np.zeros((2, 3)), np.array([0.5, 1.0]), np.zeros((2, 3)), LINEAR)
    with pytest.raises(ValueError, match=r"out has shape"):
        fastgauss.q_posterior(np.zeros((2, 3)), np.zeros((2, 3)), 1, LINEAR, out=np.zeros(6))


@pytest.mark.skipif(not CUDA_USABLE, reason="cuda backend not usable")
def test_step_on_device_returns_device_arrays():
    from numba import cuda

    m, xt, _ = inputs((2, 3), np.float32)
    out, x0 = fastgauss.ddpm_step(cuda.to_device(m), cuda.to_device(xt), 5, LINEAR, rng=0, return_x0=True)
    assert not isinstance(out, np.ndarray) and not isinstance(x0, np.ndarray)
    mean, variance, _ = fastgauss.q_posterior(cuda.to_device(m), cuda.to_device(xt), cuda.to_device(np.array([1, 2])), LINEAR)
    assert not isinstance(variance, np.ndarray) and variance.shape == (2, 1)
