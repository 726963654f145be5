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


# --- VJPs: the gradients, from the derivative formulas -----------------------------------------
# Each takes the cotangent of the forward's result (its shape: the broadcast shape, or (B,) when
# reducing) and the forward's arguments, and writes the gradient of every argument whose
# ``grad_<name>`` is an array (the argument's own shape, broadcast axes summed); None: not wanted.


def _elementwise_cotangent(cotangent, shape, reduce):
    """The cotangent of each element of the broadcast shape, float64 (a reduction spreads its row's
    cotangent over the row, divided by the row's size for "mean")."""
    g = np.asarray(cotangent, dtype=np.float64)
    if reduce is None:
        return np.broadcast_to(g, shape)
    width = 1
    for n in shape[1:]:
        width *= n
    g = g.reshape((-1,) + (1,) * (len(shape) - 1))
    return np.broadcast_to(g / width if reduce == "mean" else g, shape)


def sum_to(values, target_shape):
    """``values`` summed over the axes along which an argument of ``target_shape`` was broadcast."""
    target_shape = tuple(target_shape)
    lead = values.ndim - len(target_shape)
    axes = tuple(range(lead)) + tuple(lead + k for k, n in enumerate(target_shape) if n == 1 and values.shape[lead + k] != 1)
    return values.sum(axis=axes).reshape(target_shape) if axes else values.reshape(target_shape)


def _write(grad, partial, g, shape):
    if grad is not None:
        with np.errstate(all="ignore"):
            grad[...] = sum_to(np.broadcast_to(partial * g, shape), grad.shape)


def normal_kl_vjp(cotangent, mean1, logvar1, mean2, logvar2, *, shape, reduce, grad_mean1, grad_logvar1, grad_mean2, grad_logvar2):
    """dKL/dmean1 = (mean1 - mean2) e^-logvar2 = -dKL/dmean2; dKL/dlogvar1 = (e^(logvar1 - logvar2) - 1) / 2;
    dKL/dlogvar2 = (1 - e^(logvar1 - logvar2) - (mean1 - mean2)^2 e^-logvar2) / 2."""
    g = _elementwise_cotangent(cotangent, shape, reduce)
    mean1, logvar1, mean2, logvar2 = _float64(mean1, logvar1, mean2, logvar2)
    with np.errstate(all="ignore"):
        d_mean = (mean1 - mean2) * np.exp(-logvar2)
        ratio = np.exp(logvar1 - logvar2)
        _write(grad_mean1, d_mean, g, shape)
        _write(grad_mean2, -d_mean, g, shape)
        _write(grad_logvar1, 0.5 * (ratio - 1.0), g, shape)
        _write(grad_logvar2, 0.5 * (1.0 - ratio - (mean1 - mean2) ** 2 * np.exp(-logvar2)), g, shape)


def normal_logpdf_vjp(cotangent, x, mean, logvar, *, shape, reduce, grad_x, grad_mean, grad_logvar):
    """d/dx = -(x - mean) e^-logvar = -d/dmean; d/dlogvar = ((x - mean)^2 e^-logvar - 1) / 2."""
    g = _elementwise_cotangent(cotangent, shape, reduce)
    x, mean, logvar = _float64(x, mean, logvar)
    with np.errstate(all="ignore"):
        d_x = -(x - mean) * np.exp(-logvar)
        _write(grad_x, d_x, g, shape)
        _write(grad_mean, -d_x, g, shape)
        _write(grad_logvar, 0.5 * ((x - mean) ** 2 * np.exp(-logvar) - 1.0), g, shape)


def approx_standard_normal_pdf(x):
    """The derivative of ``approx_standard_normal_cdf``: 0.5 sech^2(y) sqrt(2/pi) (1 + 3 0.044715 x^2),
    y = sqrt(2/pi) (x + 0.044715 x^3). sech^2 y as 1 / cosh^2 y: 1 - tanh^2 y keeps few digits
    where tanh y is near +-1 (at y = 10 about half of them)."""
    k = np.sqrt(2.0 / np.pi)
    return 0.5 / np.cosh(k * (x + 0.044715 * x**3)) ** 2 * k * (1.0 + 3.0 * 0.044715 * x**2)


def discretized_log_derivatives(x, plus_in, min_in, half_width):
    """(d log P / d plus_in, d log P / d min_in) of the discretized likelihood's selected bin
    probability P: cdf_plus at the low edge (x < -0.999), 1 - cdf_min at the high edge
    (x > 0.999), cdf_plus - cdf_min between; 0 where the forward's P is below its clamp at 1e-12
    (torch.clamp passes no gradient there), NaN where P is NaN.

    The derivatives divide by P, which the forward computes as a difference of CDFs near 0 or 1
    in the tails, with few correct digits. Here P is cdf_plus = sigmoid(2 y+),
    1 - cdf_min = sigmoid(-2 y-), and cdf_plus - cdf_min = sinh(y+ - y-) / (2 cosh y+ cosh y-),
    where y+ - y- = sqrt(2/pi) w (1 + 0.044715 (plus_in^2 + plus_in min_in + min_in^2)) and
    w = plus_in - min_in = 2 half_width (e^-s / bins, exact in the reals). Overflow in the far
    tails gives 0 there, far below the clamp."""
    k = np.sqrt(2.0 / np.pi)
    low, high = x < -0.999, x > 0.999
    cdf_plus, cdf_min = approx_standard_normal_cdf(plus_in), approx_standard_normal_cdf(min_in)
    forward = np.where(low, cdf_plus, np.where(high, 1.0 - cdf_min, cdf_plus - cdf_min))
    y_plus, y_min = k * (plus_in + 0.044715 * plus_in**3), k * (min_in + 0.044715 * min_in**3)
    dy = k * (2.0 * half_width) * (1.0 + 0.044715 * (plus_in**2 + plus_in * min_in + min_in**2))
    middle = np.sinh(dy) / (2.0 * np.cosh(y_plus) * np.cosh(y_min))
    p = np.where(low, 1.0 / (1.0 + np.exp(-2.0 * y_plus)), np.where(high, 1.0 / (1.0 + np.exp(2.0 * y_min)), middle))
    passes = ~(forward < 1e-12)  # NaN passes (torch.clamp's mask would block it)
    d_plus = np.where(passes & ~high, approx_standard_normal_pdf(plus_in) / p, 0.0)
    d_min = np.where(passes & ~low, -approx_standard_normal_pdf(min_in) / p, 0.0)
    return d_plus, d_min


def discretized_gaussian_log_likelihood_vjp(cotangent, x, means, log_scales, *, bins, shape, reduce, grad_x, grad_means, grad_log_scales):
    """The derivative of log p for the selected p (cdf_plus, 1 - cdf_min or cdf_plus - cdf_min),
    zero where p < 1e-12 was clamped (torch.clamp passes no gradient there), NaN where p is NaN:
    dlogp/dplus_in = [p uses cdf_plus] pdf(plus_in) / p, dlogp/dmin_in = -[p uses cdf_min] pdf(min_in) / p,
    with plus_in, min_in = e^-s (x - means +- 1/bins): d/dmeans = -e^-s (dlogp/dplus_in + dlogp/dmin_in),
    d/dlog_scales = -(plus_in dlogp/dplus_in + min_in dlogp/dmin_in), d/dx = -d/dmeans."""
    g = _elementwise_cotangent(cotangent, shape, reduce)
    x, means, log_scales = _float64(x, means, log_scales)
    with np.errstate(all="ignore"):
        x, means, log_scales = np.broadcast_arrays(x, means, log_scales)
        inv_stdv = np.exp(-log_scales)
        plus_in = inv_stdv * (x - means + 1.0 / bins)
        min_in = inv_stdv * (x - means - 1.0 / bins)
        l_plus, l_min = discretized_log_derivatives(x, plus_in, min_in, inv_stdv / bins)
        d_means = -inv_stdv * (l_plus + l_min)
        _write(grad_x, -d_means, g, shape)
        _write(grad_means, d_means, g, shape)
        _write(grad_log_scales, -(l_plus * plus_in + l_min * min_in), g, shape)
