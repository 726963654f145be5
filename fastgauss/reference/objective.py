"""NumPy reference for the training objective: the executable spec, written from the
formulas of improved-diffusion's GaussianDiffusion (p_mean_variance, _vb_terms_bpd,
_prior_bpd, training_losses) and composed from the KL family's reference ops.

Called by the public functions after validation: data arguments are host ndarrays of one
shape (B, ...), ``t`` an int or an int64 array (B,), ``out`` of the result's shape and
dtype. Everything is evaluated in float64 and rounded once into ``out``; the VJPs are the
derivative formulas, evaluated the same way, into the gradient arrays they are given
(None: not wanted, not computed).
"""

import math

import numpy as np

from fastgauss.reference.diffusion import _per_sample
from fastgauss.reference.kl import _finish, discretized_log_derivatives
from fastgauss.reference.kl import discretized_gaussian_log_likelihood as _discretized
from fastgauss.reference.kl import normal_kl as _normal_kl

LN2 = math.log(2.0)
BINS = 255


def _table(table, t, ndim):
    return _per_sample(np.asarray(table, dtype=np.float64), t, np.float64, ndim)


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _log_variance(v, t, schedule, kind, ndim):
    """The model's log variance as improved-diffusion's p_mean_variance computes it; also
    d logvar / d v (None for the fixed kinds)."""
    clipped = _table(schedule.posterior_log_variance_clipped, t, ndim)
    if kind == "learned":
        return v, np.ones_like(v)
    if kind == "learned_range":
        with np.errstate(invalid="ignore", divide="ignore"):
            max_log = np.log(_table(schedule.betas, t, ndim))
            frac = (v + 1) / 2
            return frac * max_log + (1 - frac) * clipped, (max_log - clipped) / 2
    if kind == "fixed_small":
        return clipped, None
    variance = np.append(schedule.posterior_variance[1], schedule.betas[1:]) if schedule.num_timesteps > 1 else schedule.betas
    return _table(np.log(variance), t, ndim), None


def model_log_variance(var_output, t, schedule, out, *, kind):
    """learned: v; learned_range: frac log(beta_t) + (1 - frac) posterior_log_variance_clipped[t],
    frac = (v + 1) / 2; fixed_small: posterior_log_variance_clipped[t]; fixed_large:
    log(append(posterior_variance[1], betas[1:]))[t]; broadcast to var_output's shape."""
    v = _f64(var_output)
    logvar, _ = _log_variance(v, t, schedule, kind, v.ndim)
    out[...] = np.broadcast_to(logvar, out.shape)


def _model_x0(xt, m, t, schedule, prediction, clip):
    """pred_xstart (improved-diffusion's _predict_xstart_from_eps for epsilon), clipped; and
    d x0_hat / d m, d x0_hat / d x_t where the clip passes it through (0 where it clips)."""
    abar = _table(schedule.alphas_cumprod, t, xt.ndim)
    if prediction == "epsilon":
        # sqrt(1/abar - 1) as sqrt(1 - abar) / sqrt(abar): 1/abar - 1 cancels near abar = 1 (4 of
        # 16 digits lost at t = 0 of the linear schedule; 1 - abar is exact there)
        ax, am = np.sqrt(1.0 / abar), -np.sqrt(1.0 - abar) / np.sqrt(abar)
    elif prediction == "sample":
        ax, am = np.zeros_like(abar), np.ones_like(abar)
    else:
        ax, am = np.sqrt(abar), -np.sqrt(1 - abar)
    x0 = ax * xt + am * m
    passes = np.ones_like(x0)
    if clip is not None:
        passes = np.where((x0 > clip) | (x0 < -clip), 0.0, 1.0)
        x0 = np.clip(x0, -clip, clip)
    return x0, passes * am, passes * ax


def _vlb_parts(x0, xt, t, m, schedule, v, prediction, var_kind, clip):
    """Everything the vlb term and its derivatives need, float64, elementwise."""
    ndim = x0.ndim
    coef1 = _table(schedule.posterior_mean_coef1, t, ndim)
    coef2 = _table(schedule.posterior_mean_coef2, t, ndim)
    true_mean = coef1 * x0 + coef2 * xt
    true_logvar = _table(schedule.posterior_log_variance_clipped, t, ndim)
    x0_hat, dx0_dm, dx0_dxt = _model_x0(xt, m, t, schedule, prediction, clip)
    mean = coef1 * x0_hat + coef2 * xt
    logvar, dlogvar_dv = _log_variance(v, t, schedule, var_kind, ndim)
    decoder = np.broadcast_to(_table(np.arange(schedule.num_timesteps) == 0, t, ndim), x0.shape)
    return dict(coef1=coef1, coef2=coef2, true_mean=true_mean, true_logvar=true_logvar, mean=mean, logvar=logvar,
                dlogvar_dv=dlogvar_dv, dx0_dm=dx0_dm, dx0_dxt=dx0_dxt, decoder=decoder)


def _vlb_elements(x0, p):
    """KL(q || p) for t > 0 and -log P_discretized(x0) for t = 0, elementwise, in bits."""
    shape = x0.shape
    kl = np.empty(shape)
    _normal_kl(p["true_mean"], p["true_logvar"], p["mean"], p["logvar"], shape=shape, reduce=None, out=kl)
    nll = np.empty(shape)
    _discretized(x0, p["mean"], 0.5 * p["logvar"], bins=BINS, shape=shape, reduce=None, out=nll)
    return np.where(p["decoder"], -nll, kl) / LN2


def vlb_terms(x0, xt, t, model_output, schedule, var_output, out, *, prediction, var_kind, clip, reduce):
    """improved-diffusion's _vb_terms_bpd: mean_flat(KL) / ln 2 for t > 0, mean_flat(decoder NLL) / ln 2
    at t = 0, with the model mean from the prediction and the log variance of ``var_kind``."""
    x0, xt, m = _f64(x0), _f64(xt), _f64(model_output)
    v = _f64(var_output) if var_output is not None else np.zeros_like(m)
    parts = _vlb_parts(x0, xt, t, m, schedule, v, prediction, var_kind, clip)
    _finish(_vlb_elements(x0, parts), x0.shape, reduce, out)


def prior_bpd(x0, schedule, out):
    """improved-diffusion's _prior_bpd: mean_flat(KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1))) / ln 2."""
    x0 = _f64(x0)
    last = schedule.num_timesteps - 1
    kl = np.empty(x0.shape)
    mean = schedule.sqrt_alphas_cumprod[last] * x0
    _normal_kl(mean, np.log(1.0 - schedule.alphas_cumprod[last]), 0.0, 0.0, shape=x0.shape, reduce=None, out=kl)
    _finish(kl / LN2, x0.shape, "mean", out)


def _target(x0, noise, t, schedule, prediction):
    if prediction == "epsilon":
        return noise, 0.0
    if prediction == "sample":
        return x0, 1.0
    abar = _table(schedule.alphas_cumprod, t, x0.ndim)
    return np.sqrt(abar) * noise - np.sqrt(1 - abar) * x0, -np.sqrt(1 - abar)  # v


def loss_weight(t, schedule, prediction, weighting, gamma):
    """The factor on the prediction's squared error: 1; or, for "snr" (W = SNR_t) and "min_snr"
    (W = min(SNR_t, gamma), Hang et al. 2023), W / SNR_t (epsilon), W / (SNR_t + 1) (v),
    W (sample); epsilon's W / SNR_t is 1 where W = SNR_t (also at SNR_t = 0)."""
    snr = np.asarray(schedule.snr[t], dtype=np.float64)
    if weighting is None:
        return np.ones_like(snr)
    weight = snr if weighting == "snr" else np.minimum(snr, gamma)
    if prediction == "epsilon":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(weight == snr, 1.0, weight / snr)
    if prediction == "v":
        return weight / (snr + 1)
    return weight


def _squared_error(model_output, x0, noise, t, schedule, prediction, weighting, gamma):
    m, x0, noise = _f64(model_output), _f64(x0), _f64(noise)
    target, dtarget_dx0 = _target(x0, noise, t, schedule, prediction)
    weight = _table(loss_weight(np.arange(schedule.num_timesteps), schedule, prediction, weighting, gamma), t, m.ndim)
    return weight * (m - target) ** 2, weight * (m - target), dtarget_dx0


def diffusion_loss(model_output, x0, noise, t, schedule, out, *, prediction, weighting, gamma, reduce):
    """weight_t (m - target)^2, target = noise (epsilon), x0 (sample) or sqrt(abar) noise - sqrt(1 - abar) x0 (v)."""
    values, _, _ = _squared_error(model_output, x0, noise, t, schedule, prediction, weighting, gamma)
    _finish(values, values.shape, reduce, out)


def _xt(x0, noise, t, schedule):
    abar = _table(schedule.alphas_cumprod, t, x0.ndim)
    return np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise


def hybrid_loss(model_output, var_output, x0, noise, t, schedule, out, *, prediction, var_kind, weighting, gamma, vb_scale, reduce):
    """improved-diffusion's hybrid loss: mse + vb_scale vb, x_t = q_sample(x0, t, noise)."""
    values, _, _ = _squared_error(model_output, x0, noise, t, schedule, prediction, weighting, gamma)
    x0, m, v = _f64(x0), _f64(model_output), _f64(var_output)
    xt = _xt(x0, _f64(noise), t, schedule)
    vlb = _vlb_elements(x0, _vlb_parts(x0, xt, t, m, schedule, v, prediction, var_kind, None))
    _finish(values + vb_scale * vlb, values.shape, reduce, out)


# --- VJPs ------------------------------------------------------------------------------------


def _cotangent(cotangent, shape, reduce):
    """d(result)/d(element value) times the cotangent, elementwise."""
    c = _f64(cotangent)
    if reduce is None:
        return np.broadcast_to(c, shape)
    c = c.reshape((-1,) + (1,) * (len(shape) - 1))
    return c / math.prod(shape[1:]) if reduce == "mean" else c


def _vlb_partials(x0, p):
    """(d/d x0, d/d true_mean, d/d mean, d/d logvar) of the vlb elements in nats."""
    with np.errstate(all="ignore"):
        d = p["true_mean"] - p["mean"]
        inv_var = np.exp(-p["logvar"])
        kl_true = d * inv_var
        kl_logvar = 0.5 * (1 - np.exp(p["true_logvar"] - p["logvar"]) - d * d * inv_var)
        # decoder: -log P, P from the tanh CDF at z_pm = e^-s (x0 - mean +- 1/255), s = logvar / 2
        inv_stdv = np.exp(-0.5 * p["logvar"])
        z_plus = inv_stdv * (x0 - p["mean"] + 1.0 / BINS)
        z_min = inv_stdv * (x0 - p["mean"] - 1.0 / BINS)
        g_plus, g_min = discretized_log_derivatives(x0, z_plus, z_min, inv_stdv / BINS)  # d log P / d z_plus, z_min
        dec_x = -inv_stdv * (g_plus + g_min)
        dec_logvar = 0.5 * (g_plus * z_plus + g_min * z_min)
    decoder = p["decoder"]
    return (
        np.where(decoder, dec_x, 0.0),
        np.where(decoder, 0.0, kl_true),
        np.where(decoder, -dec_x, -kl_true),
        np.where(decoder, dec_logvar, kl_logvar),
    )


def _write(grad, values):
    if grad is not None:
        grad[...] = np.broadcast_to(values, grad.shape)


def vlb_terms_vjp(cotangent, x0, xt, t, model_output, schedule, var_output, *, prediction, var_kind, clip, reduce,
                  x0_grad, xt_grad, model_output_grad, var_output_grad):
    """Chain rule through true_mean = c1 x0 + c2 x_t, mean = c1 clip(x0_hat(x_t, m)) + c2 x_t, logvar(v)."""
    x0, xt, m = _f64(x0), _f64(xt), _f64(model_output)
    v = _f64(var_output) if var_output is not None else np.zeros_like(m)
    p = _vlb_parts(x0, xt, t, m, schedule, v, prediction, var_kind, clip)
    s = _cotangent(cotangent, x0.shape, reduce) / LN2
    g_x, g_true, g_mean, g_logvar = _vlb_partials(x0, p)
    _write(x0_grad, s * (g_x + p["coef1"] * g_true))
    _write(xt_grad, s * (p["coef2"] * (g_true + g_mean) + p["coef1"] * g_mean * p["dx0_dxt"]))
    _write(model_output_grad, s * p["coef1"] * g_mean * p["dx0_dm"])
    _write(var_output_grad, s * g_logvar * p["dlogvar_dv"] if p["dlogvar_dv"] is not None else 0.0)


def diffusion_loss_vjp(cotangent, model_output, x0, noise, t, schedule, *, prediction, weighting, gamma, reduce,
                       model_output_grad, x0_grad):
    """d/dm = 2 w (m - target); d/dx0 = -2 w (m - target) d target / d x0."""
    _, residual, dtarget_dx0 = _squared_error(model_output, x0, noise, t, schedule, prediction, weighting, gamma)
    s = _cotangent(cotangent, residual.shape, reduce)
    _write(model_output_grad, 2 * s * residual)
    _write(x0_grad, -2 * s * residual * dtarget_dx0)


def hybrid_loss_vjp(cotangent, model_output, var_output, x0, noise, t, schedule, *, prediction, var_kind, weighting, gamma,
                    vb_scale, reduce, model_output_grad, var_output_grad):
    """d/dm: the mse's only (the vlb term holds the model mean constant); d/dv: the vlb's."""
    _, residual, _ = _squared_error(model_output, x0, noise, t, schedule, prediction, weighting, gamma)
    s = _cotangent(cotangent, residual.shape, reduce)
    _write(model_output_grad, 2 * s * residual)
    if var_output_grad is not None:
        x0, m, v = _f64(x0), _f64(model_output), _f64(var_output)
        p = _vlb_parts(x0, _xt(x0, _f64(noise), t, schedule), t, m, schedule, v, prediction, var_kind, None)
        g_logvar = _vlb_partials(x0, p)[3]
        _write(var_output_grad, s * vb_scale / LN2 * g_logvar * p["dlogvar_dv"] if p["dlogvar_dv"] is not None else 0.0)
