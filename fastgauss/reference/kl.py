"""NumPy reference for the KL family: the executable spec, written from the formulas.

Called by the public functions after validation: each argument is a host ndarray or a
Python scalar that broadcasts to ``shape``; ``reduce`` is None, "sum" or "mean"; ``out``
has the result's shape and dtype ((shape[0],) when reducing).

The formulas are evaluated in float64 whatever the data dtype (they subtract nearly
equal terms: -1 + e^x - x as p -> q, cdf_plus - cdf_min for a narrow bin), then rounded
once to ``out.dtype``; reductions add the float64 values. This is the "float64
evaluation" that float32 results are held to.
"""

import numpy as np


def _float64(*arrays):
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def _finish(values, shape, reduce, out):
    """Write the elementwise values, or their per-sample sum or mean over all axes but the first."""
    values = np.broadcast_to(values, shape)
    if reduce is None:
        out[...] = values
        return
    width = 1
    for n in shape[1:]:
        width *= n
    rows = values.reshape(shape[0], width)
    sums = rows.sum(axis=1)
    if reduce == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):  # no elements per sample: 0 / 0 = nan
            sums = sums / rows.shape[1]
    out[...] = sums


def normal_kl(mean1, logvar1, mean2, logvar2, *, shape, reduce, out):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, as in Ho et al. (2020):
    0.5 (-1 + logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^-logvar2)."""
    mean1, logvar1, mean2, logvar2 = _float64(mean1, logvar1, mean2, logvar2)
    with np.errstate(all="ignore"):  # inf and nan propagate as NumPy computes them
        kl = 0.5 * (-1.0 + logvar2 - logvar1 + np.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * np.exp(-logvar2))
    _finish(kl, shape, reduce, out)


def normal_logpdf(x, mean, logvar, *, shape, reduce, out):
    """log N(x; mean, e^logvar) = -0.5 (log(2 pi) + logvar + (x - mean)^2 e^-logvar)."""
    x, mean, logvar = _float64(x, mean, logvar)
    with np.errstate(all="ignore"):
        logp = -0.5 * (np.log(2.0 * np.pi) + logvar + (x - mean) ** 2 * np.exp(-logvar))
    _finish(logp, shape, reduce, out)


def approx_standard_normal_cdf(x):
    """The tanh approximation of the standard normal CDF used by improved-diffusion."""
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _clamped_log(p):
    """log(max(p, 1e-12)), with NaN kept NaN (np.maximum propagates NaN)."""
    return np.log(np.maximum(p, 1e-12))


def discretized_gaussian_log_likelihood(x, means, log_scales, *, bins, shape, reduce, out):
    """improved-diffusion's discretized_gaussian_log_likelihood, with ``bins`` bins of width 2 / bins:
    the log-probability of x's bin under N(means, e^(2 log_scales)); the lowest bin
    (x < -0.999) extends to -inf and the highest (x > 0.999) to +inf."""
    x, means, log_scales = _float64(x, means, log_scales)
    with np.errstate(all="ignore"):
        centered_x = x - means
        inv_stdv = np.exp(-log_scales)
        plus_in = inv_stdv * (centered_x + 1.0 / bins)
        cdf_plus = approx_standard_normal_cdf(plus_in)
        min_in = inv_stdv * (centered_x - 1.0 / bins)
        cdf_min = approx_standard_normal_cdf(min_in)
        log_cdf_plus = _clamped_log(cdf_plus)
        log_one_minus_cdf_min = _clamped_log(1.0 - cdf_min)
        cdf_delta = cdf_plus - cdf_min
        log_probs = np.where(x < -0.999, log_cdf_plus, np.where(x > 0.999, log_one_minus_cdf_min, _clamped_log(cdf_delta)))
    _finish(log_probs, shape, reduce, out)


# --- Gaussian algebra ---


def normal_product(mean1, logvar1, mean2, logvar2, *, shape, mean_out, logvar_out, log_scale_out):
    """N(x; m1, e^v1) N(x; m2, e^v2) = e^log_scale N(x; m, e^v), elementwise: precisions add,
    e^-v = e^-v1 + e^-v2; m = (m1 e^-v1 + m2 e^-v2) e^v; log_scale = log N(m1; m2, e^v1 + e^v2)."""
    mean1, logvar1, mean2, logvar2 = _float64(mean1, logvar1, mean2, logvar2)
    with np.errstate(all="ignore"):
        logvar = -np.logaddexp(-logvar1, -logvar2)
        mean = (mean1 * np.exp(-logvar1) + mean2 * np.exp(-logvar2)) * np.exp(logvar)
        log_total = np.logaddexp(logvar1, logvar2)
        log_scale = -0.5 * (np.log(2.0 * np.pi) + log_total + (mean1 - mean2) ** 2 * np.exp(-log_total))
    mean_out[...] = np.broadcast_to(mean, shape)
    logvar_out[...] = np.broadcast_to(logvar, shape)
    log_scale_out[...] = np.broadcast_to(log_scale, shape)
