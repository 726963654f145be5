"""The training-objective plan both compiled backends share: one row of coefficients per
sample (its timestep's), in the columns fastgauss._device.objective reads.

All values are float64 from the schedule's tables, cast once to the compute dtype; the
NumPy reference does not use this module (it evaluates each term from its formula).
"""

import math

import numpy as np

from fastgauss._device import objective as element
from fastgauss._plans.diffusion import _x0_from_model

LN2 = math.log(2.0)
HALF_BIN = 1.0 / 255.0  # improved-diffusion's 8-bit decoder: 255 bins across [-1, 1]


def log_variance(schedule, t, kind):
    """(lv_a, lv_b) per timestep: the model log variance is lv_a + lv_b v (improved-diffusion's
    four kinds; learned_range's frac max + (1 - frac) min with frac = (v + 1) / 2 written out)."""
    t = np.asarray(t)
    if kind == "learned":
        return np.zeros(t.shape), np.ones(t.shape)
    clipped = schedule.posterior_log_variance_clipped[t]
    if kind == "learned_range":
        with np.errstate(invalid="ignore"):
            high = np.log(schedule.betas[t])
            return 0.5 * (high + clipped), 0.5 * (high - clipped)
    if kind == "fixed_small":
        return clipped, np.zeros(t.shape)
    return fixed_large_log_variance(schedule)[t], np.zeros(t.shape)


def fixed_large_log_variance(schedule):
    """log(append(posterior_variance[1], betas[1:])): beta_t, with the posterior variance of
    t = 1 at t = 0 (improved-diffusion, for a better decoder likelihood); log beta for T = 1."""
    variance = schedule.betas.copy()
    if schedule.num_timesteps > 1:
        variance[0] = schedule.posterior_variance[1]
    return np.log(variance)


def target_coefficients(schedule, t, prediction):
    """(tp, tq): the regression target is tp x0 + tq noise."""
    t = np.asarray(t)
    if prediction == "epsilon":
        return np.zeros(t.shape), np.ones(t.shape)
    if prediction == "sample":
        return np.ones(t.shape), np.zeros(t.shape)
    return -schedule.sqrt_one_minus_alphas_cumprod[t], schedule.sqrt_alphas_cumprod[t]  # v


def loss_weights(schedule, t, prediction, weighting, gamma):
    """The per-sample factor of the prediction's squared error. "snr" and "min_snr" weight the
    x0 error by SNR_t and min(SNR_t, gamma); the prediction's error is the x0 error times
    SNR_t (epsilon), SNR_t + 1 (v) or 1 (sample), so the factor is that weight over it."""
    t = np.asarray(t)
    if weighting is None:
        return np.ones(t.shape)
    snr = schedule.snr[t]
    x0_weight = snr if weighting == "snr" else np.minimum(snr, gamma)
    if prediction == "epsilon":
        return np.where(snr <= x0_weight, 1.0, x0_weight / np.where(snr > 0, snr, 1.0))  # 1 at SNR 0 (the limit)
    if prediction == "v":
        return x0_weight / (snr + 1.0)
    return x0_weight


# The kernel op code of each public op.
OP_CODES = {
    "model_log_variance": element.LOGVAR,
    "vlb_terms": element.VLB,
    "hybrid_loss": element.HYBRID,
    "prior_bpd": element.PRIOR,
    "diffusion_loss": element.LOSS,
}


def table(op, schedule, t, rows, dtype, *, prediction="epsilon", var_kind="fixed_small", clip=None,
          weighting=None, gamma=5.0, vb_scale=1.0):
    """The (rows, COLUMNS) coefficient table of one launch for the public op ``op``, C-contiguous,
    in ``dtype``."""
    t = np.broadcast_to(np.asarray(t, dtype=np.int64), (rows,))
    k = np.zeros((rows, element.COLUMNS))
    abar = schedule.alphas_cumprod[t]
    k[:, element.LIMIT] = np.inf if clip is None else clip
    k[:, element.HALF_BIN] = HALF_BIN
    k[:, element.SA] = schedule.sqrt_alphas_cumprod[t]
    k[:, element.SN] = schedule.sqrt_one_minus_alphas_cumprod[t]
    if op == "model_log_variance":
        k[:, element.LV_A], k[:, element.LV_B] = log_variance(schedule, t, var_kind)
    if op in ("vlb_terms", "hybrid_loss"):
        k[:, element.AX], k[:, element.AM] = _x0_from_model(prediction, abar)
        k[:, element.C1] = schedule.posterior_mean_coef1[t]
        k[:, element.C2] = schedule.posterior_mean_coef2[t]
        k[:, element.TRUE_LOGVAR] = schedule.posterior_log_variance_clipped[t]
        k[:, element.LV_A], k[:, element.LV_B] = log_variance(schedule, t, var_kind)
        k[:, element.DECODER] = t == 0
        k[:, element.WEIGHT] = vb_scale / LN2
    if op == "vlb_terms":  # x_t is given; the gradient reaches the model through the mean
        k[:, element.XB], k[:, element.MEAN_GRAD] = 1.0, 1.0
    if op == "hybrid_loss":  # x_t = sa x0 + sn noise; the bound holds the model mean constant
        k[:, element.XA], k[:, element.XB] = k[:, element.SA], k[:, element.SN]
    if op == "prior_bpd":  # the bound's KL with true mean sa x0 and a model of mean 0, log variance 0
        last = schedule.num_timesteps - 1
        k[:, element.C1] = schedule.sqrt_alphas_cumprod[last]
        k[:, element.TRUE_LOGVAR] = np.log(1.0 - schedule.alphas_cumprod[last])
        k[:, element.WEIGHT] = 1.0 / LN2
    if op in ("diffusion_loss", "hybrid_loss"):
        k[:, element.TP], k[:, element.TQ] = target_coefficients(schedule, t, prediction)
        k[:, element.MSE_WEIGHT] = loss_weights(schedule, t, prediction, weighting, gamma)
    return np.ascontiguousarray(k, dtype=dtype)
