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


def _ddim_coefficients(schedule, t, t_prev, eta, dtype, ndim):
    """(sqrt(abar_prev), sqrt(1 - abar_prev - sigma^2), sigma) in ``dtype``, per sample, from float64:
    abar_prev = 1 for t_prev = -1, sigma = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev))."""
    abar_table = np.append(schedule.alphas_cumprod, 1.0)  # index -1 -> abar_prev = 1
    abar, abar_prev = abar_table[t], abar_table[t_prev]
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
    if eta == 0:  # exactly 0, also where the root is not real (t_prev > t: DDIM inversion)
        sigma = np.zeros_like(sigma)
    direction = np.sqrt(1 - abar_prev - sigma**2)
    shape = (-1,) + (1,) * (ndim - 1) if np.ndim(t) else ()
    return tuple(np.asarray(v, dtype).reshape(shape) for v in (np.sqrt(abar_prev), direction, sigma))


def ddim_step(model_output, xt, t, t_prev, schedule, out, *, x0_out, noise, stream, eta, prediction, clip):
    """DDIM step t -> t_prev (Song et al. 2021; diffusers' DDIMScheduler.step with
    set_alpha_to_one=True, use_clipped_model_output=False): abar_prev = 1 for t_prev = -1;
    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev)), in float64."""
    dtype, ndim = out.dtype, out.ndim
    x0, eps = _model_to_x0_eps(model_output, xt, prediction, schedule, t, dtype)
    if clip is not None:
        x0 = np.clip(x0, -clip, clip)
    sqrt_prev, direction, sigma = _ddim_coefficients(schedule, t, t_prev, eta, dtype, ndim)
    prev = sqrt_prev * x0 + direction * eps
    if eta > 0:
        prev = np.where(sigma != 0, prev + sigma * _noise(out.shape, dtype, noise, stream), prev)
    out[...] = prev
    if x0_out is not None:
        x0_out[...] = x0


# --- VJPs: the gradients, from the derivative formulas -----------------------------------------
# Every diffusion op is linear in its array arguments (up to the clamp of the steps), so each
# gradient is the cotangent times the op's per-sample coefficient, evaluated in float64 from the
# schedule and rounded once. ``grad_<name>`` is an array of the argument's shape to write, or
# None (not wanted).


def _term(c, x):
    """c x, or exactly 0 where c = 0: a term the formula does not have, so that an inf in x does
    not become 0 * inf = NaN there (the kernels' fastgauss._device.diffusion.term)."""
    with np.errstate(all="ignore"):
        return np.where(c != 0, c * x, 0.0)


def _write(grad, coefficient, g):
    if grad is not None:
        grad[...] = _term(coefficient, g)


def _linear_vjp(cotangent, t, schedule, grad_u, grad_w, a, b):
    g = np.asarray(cotangent, np.float64)
    _write(grad_u, _per_sample(a, t, np.float64, g.ndim), g)
    _write(grad_w, _per_sample(b, t, np.float64, g.ndim), g)


def q_sample_vjp(cotangent, noise_cotangent, t, schedule, grad_x0, grad_noise):
    """d x_t / d x0 = sqrt(abar_t), d x_t / d noise = sqrt(1 - abar_t); the cotangent of the returned
    noise (return_noise=True with the noise given: that output is the noise itself) adds to grad_noise."""
    _linear_vjp(cotangent, t, schedule, grad_x0, grad_noise, schedule.sqrt_alphas_cumprod, schedule.sqrt_one_minus_alphas_cumprod)
    if grad_noise is not None and noise_cotangent is not None:
        grad_noise += np.asarray(noise_cotangent, grad_noise.dtype)


def q_posterior_vjp(cotangent, t, schedule, grad_x0, grad_xt):
    """d mean / d x0 = posterior_mean_coef1[t], d mean / d x_t = posterior_mean_coef2[t]."""
    _linear_vjp(cotangent, t, schedule, grad_x0, grad_xt, schedule.posterior_mean_coef1, schedule.posterior_mean_coef2)


def predict_x0_vjp(cotangent, t, schedule, grad_xt, grad_eps):
    """d/dx_t = 1 / sqrt(abar_t), d/deps = -sqrt(1 - abar_t) / sqrt(abar_t)."""
    sa, sn = schedule.sqrt_alphas_cumprod, schedule.sqrt_one_minus_alphas_cumprod
    with np.errstate(divide="ignore"):
        _linear_vjp(cotangent, t, schedule, grad_xt, grad_eps, 1.0 / sa, -sn / sa)


def predict_eps_vjp(cotangent, t, schedule, grad_xt, grad_x0):
    """d/dx_t = 1 / sqrt(1 - abar_t), d/dx0 = -sqrt(abar_t) / sqrt(1 - abar_t)."""
    sa, sn = schedule.sqrt_alphas_cumprod, schedule.sqrt_one_minus_alphas_cumprod
    with np.errstate(divide="ignore"):
        _linear_vjp(cotangent, t, schedule, grad_xt, grad_x0, 1.0 / sn, -sa / sn)


def predict_v_vjp(cotangent, t, schedule, grad_x0, grad_eps):
    """d/dx0 = -sqrt(1 - abar_t), d/deps = sqrt(abar_t)."""
    _linear_vjp(cotangent, t, schedule, grad_x0, grad_eps, -schedule.sqrt_one_minus_alphas_cumprod, schedule.sqrt_alphas_cumprod)


def v_to_x0_vjp(cotangent, t, schedule, grad_xt, grad_v):
    """d/dx_t = sqrt(abar_t), d/dv = -sqrt(1 - abar_t)."""
    _linear_vjp(cotangent, t, schedule, grad_xt, grad_v, schedule.sqrt_alphas_cumprod, -schedule.sqrt_one_minus_alphas_cumprod)


def v_to_eps_vjp(cotangent, t, schedule, grad_xt, grad_v):
    """d/dx_t = sqrt(1 - abar_t), d/dv = sqrt(abar_t)."""
    _linear_vjp(cotangent, t, schedule, grad_xt, grad_v, schedule.sqrt_one_minus_alphas_cumprod, schedule.sqrt_alphas_cumprod)


def posterior_mean_from_eps_vjp(cotangent, t, schedule, grad_xt, grad_eps):
    """d/dx_t = 1 / sqrt(alpha_t), d/deps = -beta_t / (sqrt(1 - abar_t) sqrt(alpha_t))."""
    root = np.sqrt(schedule.alphas)
    with np.errstate(divide="ignore"):
        b = -schedule.betas / (schedule.sqrt_one_minus_alphas_cumprod * root)
    _linear_vjp(cotangent, t, schedule, grad_xt, grad_eps, 1.0 / root, b)


def _model_jacobians(prediction, sa, sn):
    """(d x0/d x_t, d x0/d m, d eps/d x_t, d eps/d m) of the x0 and eps implied by the model output m."""
    one, zero = np.ones_like(sa), np.zeros_like(sa)
    with np.errstate(divide="ignore", invalid="ignore"):
        if prediction == "epsilon":  # x0 = (x_t - sn m) / sa, eps = m
            return 1.0 / sa, -sn / sa, zero, one
        if prediction == "sample":  # x0 = m, eps = (x_t - sa m) / sn
            return zero, one, 1.0 / sn, -sa / sn
        return sa, -sn, sn, sa  # v: x0 = sa x_t - sn m, eps = sa m + sn x_t


def _step_vjp(cotangent, x0_cotangent, model_output, xt, t, schedule, prediction, clip, coefficients, grads):
    """The step x_prev = k0 clamp(x0(m, x_t)) + kx x_t + ke eps(m, x_t) + ks z, coefficients
    (k0, kx, ke, ks) per sample: the clamp passes the gradient where -clip <= x0 <= clip, as
    torch.clamp does; the x0 cotangent (return_x0) joins k0 g before the clamp.
    grads = (model_output, xt, noise)."""
    ndim = np.ndim(xt)
    k0, kx, ke, ks = coefficients
    sa, sn = _scales(schedule, t, np.float64, ndim)
    ax, am, ex, em = _model_jacobians(prediction, sa, sn)
    g = np.zeros(np.shape(xt)) if cotangent is None else np.asarray(cotangent, np.float64)
    with np.errstate(all="ignore"):
        through = _term(k0, g) + (0.0 if x0_cotangent is None else np.asarray(x0_cotangent, np.float64))
        if clip is not None:
            raw = _term(ax, np.asarray(xt, np.float64)) + _term(am, np.asarray(model_output, np.float64))
            through = np.where((raw >= -clip) & (raw <= clip), through, 0.0)
        grad_model, grad_xt, grad_noise = grads
        _write(grad_model, 1.0, _term(am, through) + _term(ke * em, g))
        _write(grad_xt, 1.0, _term(ax, through) + _term(kx + ke * ex, g))
        _write(grad_noise, ks, g)


def ddpm_step_vjp(cotangent, model_output, xt, t, schedule, grad_model_output, grad_xt, *, x0_cotangent, grad_noise, prediction, clip, variance):
    """x_{t-1} = coef1 x0_hat + coef2 x_t + sigma z: d/dm = coef1 dx0/dm [inside the clamp],
    d/dx_t = coef2 + coef1 dx0/dx_t [inside], d/dz = sigma (0 at t = 0)."""
    ndim = np.ndim(xt)
    coef1 = _per_sample(schedule.posterior_mean_coef1, t, np.float64, ndim)
    coef2 = _per_sample(schedule.posterior_mean_coef2, t, np.float64, ndim)
    var = np.maximum(schedule.posterior_variance, 1e-20) if variance == "small" else schedule.betas
    std = _per_sample(np.where(np.arange(schedule.num_timesteps) > 0, np.sqrt(var), 0.0), t, np.float64, ndim)
    _step_vjp(cotangent, x0_cotangent, model_output, xt, t, schedule, prediction, clip, (coef1, coef2, 0.0, std),
              (grad_model_output, grad_xt, grad_noise))


def ddim_step_vjp(cotangent, model_output, xt, t, t_prev, schedule, grad_model_output, *, grad_xt, x0_cotangent, grad_noise, eta, prediction, clip):
    """x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z: the chain
    rule through x0_hat (clamped) and eps_hat (unclamped); d/dz = sigma."""
    sqrt_prev, direction, sigma = _ddim_coefficients(schedule, t, t_prev, eta, np.float64, np.ndim(xt))
    _step_vjp(cotangent, x0_cotangent, model_output, xt, t, schedule, prediction, clip, (sqrt_prev, 0.0, direction, sigma),
              (grad_model_output, grad_xt, grad_noise))
