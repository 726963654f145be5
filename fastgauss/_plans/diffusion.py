"""The diffusion plan both compiled backends share: per-timestep coefficient tables and
the noise mode, as the kernels consume them.

Two kernels serve every diffusion op on each target. Every linear op is
out = a[t] u + b[t] w (``linear_plan``); the sampling steps, and q_sample with generated
noise, are the fused step (``step_plan``)

    x0  = clamp(ax u + am m, clip)          u = x_t, m = model output
    out = k0 x0 + kx u + km m + ks z        z = noise (no term where ks = 0)

All tables are float64 from the schedule; the plans cast them to the output dtype. The
NumPy reference does not use this module: it evaluates each op from its formula, and
the tests hold the kernels to it.
"""

from typing import NamedTuple

import numpy as np

from fastgauss._plans.stream import kernel_state

# What the step kernel adds as noise: nothing (deterministic DDIM), the given array, or
# normals it draws from the stream itself.
NO_NOISE, GIVEN_NOISE, GENERATED_NOISE = 0, 1, 2

def row_count(t):
    """Rows the kernels see the data as: B for timesteps t of shape (B,), 1 for a scalar t.
    Every row shares its coefficients (gathered once per row, negligible next to the data)."""
    return 1 if np.ndim(t) == 0 else len(t)


# (a, b) tables of the linear ops; the argument order (u, w) is the op's.
LINEAR = {
    "q_sample": lambda s: (s.sqrt_alphas_cumprod, s.sqrt_one_minus_alphas_cumprod),  # (x0, eps)
    "q_posterior": lambda s: (s.posterior_mean_coef1, s.posterior_mean_coef2),  # (x0, x_t)
    "predict_x0": lambda s: (1 / s.sqrt_alphas_cumprod, -s.sqrt_one_minus_alphas_cumprod / s.sqrt_alphas_cumprod),  # (x_t, eps)
    "predict_eps": lambda s: (1 / s.sqrt_one_minus_alphas_cumprod, -s.sqrt_alphas_cumprod / s.sqrt_one_minus_alphas_cumprod),  # (x_t, x0)
    "predict_v": lambda s: (-s.sqrt_one_minus_alphas_cumprod, s.sqrt_alphas_cumprod),  # (x0, eps)
    "v_to_x0": lambda s: (s.sqrt_alphas_cumprod, -s.sqrt_one_minus_alphas_cumprod),  # (x_t, v)
    "v_to_eps": lambda s: (s.sqrt_one_minus_alphas_cumprod, s.sqrt_alphas_cumprod),  # (x_t, v)
    "posterior_mean_from_eps": lambda s: (
        1 / np.sqrt(s.alphas),
        -s.betas / (s.sqrt_one_minus_alphas_cumprod * np.sqrt(s.alphas)),
    ),  # (x_t, eps)
}


def linear(op, schedule, t):
    """(a[t], b[t]) of a linear op, float64; inf where the formula divides by zero."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a, b = LINEAR[op](schedule)
    return a[t], b[t]


def _x0_from_model(prediction, abar):
    """(ax, am): x0 = ax x_t + am m for the model's parameterization."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if prediction == "epsilon":
            return 1 / np.sqrt(abar), -np.sqrt(1 - abar) / np.sqrt(abar)
        if prediction == "sample":
            return np.zeros_like(abar), np.ones_like(abar)
        return np.sqrt(abar), -np.sqrt(1 - abar)  # v


def _eps_from_model(prediction, abar):
    """(ex, em): eps = ex x_t + em m for the model's parameterization."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if prediction == "epsilon":
            return np.zeros_like(abar), np.ones_like(abar)
        if prediction == "sample":
            return 1 / np.sqrt(1 - abar), -np.sqrt(abar) / np.sqrt(1 - abar)
        return np.sqrt(1 - abar), np.sqrt(abar)  # v


def ddpm(schedule, t, prediction, variance):
    """(ax, am, k0, kx, km, ks) for x_{t-1} = posterior mean(x0_hat, x_t) + sqrt(var_t) z."""
    t = np.atleast_1d(t)
    ax, am = _x0_from_model(prediction, schedule.alphas_cumprod[t])
    k0, kx = schedule.posterior_mean_coef1[t], schedule.posterior_mean_coef2[t]
    var = np.maximum(schedule.posterior_variance[t], 1e-20) if variance == "small" else schedule.betas[t]
    ks = np.where(t > 0, np.sqrt(var), 0.0)  # no noise at t = 0
    return ax, am, k0, kx, np.zeros_like(k0), ks


def ddim_sigma(schedule, t, t_prev, eta):
    """sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev)), and abar_prev;
    sigma = 0 exactly for eta = 0, also where the root is not real (t_prev > t: DDIM inversion)."""
    t, t_prev = np.atleast_1d(t), np.atleast_1d(t_prev)
    abar = schedule.alphas_cumprod[t]
    abar_prev = np.where(t_prev >= 0, schedule.alphas_cumprod[np.maximum(t_prev, 0)], 1.0)
    if eta == 0:
        return np.zeros(np.broadcast_shapes(abar.shape, abar_prev.shape)), abar, abar_prev
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
    return sigma, abar, abar_prev


def ddim(schedule, t, t_prev, eta, prediction):
    """(ax, am, k0, kx, km, ks) for x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z."""
    sigma, abar, abar_prev = ddim_sigma(schedule, t, t_prev, eta)
    ax, am = _x0_from_model(prediction, abar)
    ex, em = _eps_from_model(prediction, abar)
    direction = np.sqrt(1 - abar_prev - sigma**2)
    return ax, am, np.sqrt(abar_prev), direction * ex, direction * em, sigma


def q_sample_generated(schedule, t):
    """(ax, am, k0, kx, km, ks) of q_sample with generated noise: the step with only
    kx = sqrt(abar) (on x0) and ks = sqrt(1 - abar)."""
    signal, noise_scale = linear("q_sample", schedule, np.atleast_1d(t))
    zero = np.zeros_like(signal)
    return zero, zero, zero, signal, zero, noise_scale


def linear_step(op, schedule, t):
    """(ax, am, k0, kx, km, ks) of a linear op a[t] u + b[t] w seen as the step with x_t = u and
    model output m = w: kx = a, km = b, the rest 0. The backward kernel serves every op this way."""
    a, b = linear(op, schedule, np.atleast_1d(t))
    zero = np.zeros_like(a)
    return zero, zero, zero, a, b, zero


def q_sample_vjp_step(schedule, t, noise_cotangent):
    """The step coefficients (ax, am, k0, kx, km, ks) of q_sample's backward: the cotangent of the
    returned noise (the noise itself), when there is one, enters as the step's x0 cotangent with
    am = 1 (x0 = m = noise, k0 = 0), so grad_noise = b g + noise_cotangent."""
    ax, am, k0, kx, km, ks = linear_step("q_sample", schedule, t)
    return ax, (am + 1.0 if noise_cotangent is not None else am), k0, kx, km, ks


class LinearPlan(NamedTuple):
    """One launch of the linear kernel: data seen as (rows, width), one (a, b) per row."""

    rows: int
    a: np.ndarray  # (rows,), contiguous, of the output dtype
    b: np.ndarray


def linear_plan(op, schedule, t, dtype):
    a, b = (np.ascontiguousarray(c, dtype) for c in linear(op, schedule, np.atleast_1d(t)))
    return LinearPlan(row_count(t), a, b)


class StepPlan(NamedTuple):
    """One launch of the step kernel on flat data; element e uses row e // (size // rows)."""

    rows: int
    coefficients: tuple  # (ax, am, k0, kx, km, ks): contiguous (rows,) arrays of the output dtype
    limit: np.generic  # the clamp limit in the output dtype; inf: no clamp
    noise_mode: int  # NO_NOISE, GIVEN_NOISE or GENERATED_NOISE
    state: tuple  # fastgauss._plans.stream.kernel_state: zeros unless generating


def step_plan(t, coefficients, clip, noise, stream, dtype, shape):
    """The step kernel's arguments, for coefficients from ``ddpm``, ``ddim`` or ``q_sample_generated``."""
    dtype = np.dtype(dtype)
    if noise is not None:
        mode = GIVEN_NOISE
    else:
        mode = GENERATED_NOISE if stream is not None else NO_NOISE
    return StepPlan(
        rows=row_count(t),
        coefficients=tuple(np.ascontiguousarray(c, dtype) for c in coefficients),
        limit=dtype.type(np.inf if clip is None else clip),
        noise_mode=mode,
        state=kernel_state(stream if mode == GENERATED_NOISE else None, shape),
    )
