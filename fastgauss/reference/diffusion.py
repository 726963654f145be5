"""NumPy reference for the diffusion ops: the executable spec, written from the formulas.

Called by the public functions after validation: arrays are host ndarrays, ``t`` is
an int or an int64 array of shape (B,), ``out`` has the result's shape and dtype.
"""

import numpy as np

from fastgauss.reference.random import standard_normal


def _per_sample(table, t, dtype, ndim):
    """table[t] in ``dtype``, shaped to broadcast against data of ``ndim`` axes: (B, 1, ..., 1) or 0-d."""
    values = np.asarray(table[t], dtype=dtype)
    return values.reshape((-1,) + (1,) * (ndim - 1)) if values.ndim else values


def q_sample(x0, t, schedule, noise, out, noise_out, stream):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, with the tables cast to out.dtype.

    noise None: draw it from ``stream`` = (key, offset, window) as standard_normal would, and
    write it to ``noise_out`` when given.
    """
    if noise is None:
        noise = noise_out if noise_out is not None else np.empty(out.shape, out.dtype)
        standard_normal(noise, *stream)
    signal_scale = _per_sample(schedule.sqrt_alphas_cumprod, t, out.dtype, x0.ndim)
    noise_scale = _per_sample(schedule.sqrt_one_minus_alphas_cumprod, t, out.dtype, x0.ndim)
    np.add(signal_scale * x0, noise_scale * noise, out=out)


def _scales(schedule, t, dtype, ndim):
    """sqrt(abar_t) and sqrt(1 - abar_t) in ``dtype``, shaped per sample."""
    return (
        _per_sample(schedule.sqrt_alphas_cumprod, t, dtype, ndim),
        _per_sample(schedule.sqrt_one_minus_alphas_cumprod, t, dtype, ndim),
    )


def q_posterior(x0, xt, t, schedule, out):
    """posterior_mean_coef1[t] x0 + posterior_mean_coef2[t] x_t."""
    coef1 = _per_sample(schedule.posterior_mean_coef1, t, out.dtype, out.ndim)
    coef2 = _per_sample(schedule.posterior_mean_coef2, t, out.dtype, out.ndim)
    np.add(coef1 * x0, coef2 * xt, out=out)


def predict_x0(xt, eps, t, schedule, out):
    """(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    signal, noise = _scales(schedule, t, out.dtype, out.ndim)
    np.divide(xt - noise * eps, signal, out=out)


def predict_eps(xt, x0, t, schedule, out):
    """(x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
    signal, noise = _scales(schedule, t, out.dtype, out.ndim)
    np.divide(xt - signal * x0, noise, out=out)


def predict_v(x0, eps, t, schedule, out):
    """sqrt(abar_t) eps - sqrt(1 - abar_t) x0."""
    signal, noise = _scales(schedule, t, out.dtype, out.ndim)
    np.subtract(signal * eps, noise * x0, out=out)


def v_to_x0(xt, v, t, schedule, out):
    """sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
    signal, noise = _scales(schedule, t, out.dtype, out.ndim)
    np.subtract(signal * xt, noise * v, out=out)


def v_to_eps(xt, v, t, schedule, out):
    """sqrt(abar_t) v + sqrt(1 - abar_t) x_t."""
    signal, noise = _scales(schedule, t, out.dtype, out.ndim)
    np.add(signal * v, noise * xt, out=out)


def posterior_mean_from_eps(xt, eps, t, schedule, out):
    """(x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)."""
    beta = _per_sample(schedule.betas, t, out.dtype, out.ndim)
    alpha = _per_sample(schedule.alphas, t, out.dtype, out.ndim)
    _, noise = _scales(schedule, t, out.dtype, out.ndim)
    np.divide(xt - beta / noise * eps, np.sqrt(alpha), out=out)


def _model_to_x0_eps(model_output, xt, prediction, schedule, t, dtype):
    """(x0_hat, eps_hat) implied by the model output, as diffusers' schedulers compute them,
    with sqrt(abar_t) and sqrt(1 - abar_t) from the schedule's float64 tables."""
    sa, sn = _scales(schedule, t, dtype, xt.ndim)
    with np.errstate(divide="ignore", invalid="ignore"):
        if prediction == "epsilon":
            return (xt - sn * model_output) / sa, model_output
        if prediction == "sample":
            return model_output, (xt - sa * model_output) / sn
        return sa * xt - sn * model_output, sa * model_output + sn * xt


def _noise(shape, dtype, noise, stream):
    if noise is not None:
        return noise
    z = np.empty(shape, dtype)
    standard_normal(z, *stream)
    return z


def ddpm_step(model_output, xt, t, schedule, out, *, x0_out, noise, stream, prediction, clip, variance):
    """Ancestral step t -> t-1 (diffusers' DDPMScheduler.step with the full schedule):
    x0_hat from the model output, clamped to [-clip, clip]; x_{t-1} = posterior mean
    + sqrt(var_t) z with var_t the posterior variance (clamped at 1e-20) or beta_t; no
    noise at t = 0."""
    dtype, ndim = out.dtype, out.ndim
    x0, _ = _model_to_x0_eps(model_output, xt, prediction, schedule, t, dtype)
    if clip is not None:
        x0 = np.clip(x0, -clip, clip)  # np.clip keeps NaN
    coef1 = _per_sample(schedule.posterior_mean_coef1, t, dtype, ndim)
    coef2 = _per_sample(schedule.posterior_mean_coef2, t, dtype, ndim)
    mean = coef1 * x0 + coef2 * xt
    var = np.maximum(schedule.posterior_variance, 1e-20) if variance == "small" else schedule.betas
    std_table = np.where(np.arange(schedule.num_timesteps) > 0, np.sqrt(var), 0.0)  # no noise at t = 0
    std = _per_sample(std_table, t, dtype, ndim)
    z = _noise(out.shape, dtype, noise, stream)
    out[...] = np.where(std != 0, mean + std * z, mean)
    if x0_out is not None:
        x0_out[...] = x0


def ddim_step(model_output, xt, t, t_prev, schedule, out, *, x0_out, noise, stream, eta, prediction, clip):
    """DDIM step t -> t_prev (Song et al. 2021; diffusers' DDIMScheduler.step with
    set_alpha_to_one=True, use_clipped_model_output=False): abar_prev = 1 for t_prev = -1;
    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev)), in float64."""
    dtype, ndim = out.dtype, out.ndim
    x0, eps = _model_to_x0_eps(model_output, xt, prediction, schedule, t, dtype)
    if clip is not None:
        x0 = np.clip(x0, -clip, clip)
    abar_table = np.append(schedule.alphas_cumprod, 1.0)  # index -1 -> abar_prev = 1
    abar, abar_prev = abar_table[t], abar_table[t_prev]
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
    direction = np.sqrt(1 - abar_prev - sigma**2)
    shape = (-1,) + (1,) * (ndim - 1) if np.ndim(t) else ()
    sqrt_prev, direction, sigma = (np.asarray(v, dtype).reshape(shape) for v in (np.sqrt(abar_prev), direction, sigma))
    prev = sqrt_prev * x0 + direction * eps
    if eta > 0:
        prev = np.where(sigma != 0, prev + sigma * _noise(out.shape, dtype, noise, stream), prev)
    out[...] = prev
    if x0_out is not None:
        x0_out[...] = x0
