"""Per-element Gaussian KL, log density and discretized log-likelihood, as scalar
functions both targets compile from the same source.

The llvmlite wheels have no SVML, so ``math.exp``/``math.log``/``math.tanh`` calls
keep a CPU loop scalar (measured: a reduce="mean" KL pass over (64, 3, 256, 256) with
math.exp took 55 ms, the float32 NumPy formula 59 ms). These functions use branch-free approximations
instead (arithmetic, then selects), which LLVM vectorizes and the GPU runs as they are:

- ``exp``: Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, Taylor polynomial of
  e^r (``taylor``), then the scaling by 2**n = 2**h 2**(n - h), each factor from
  ``pow2``, here a product over the binary digits of |h| by selects;
- ``exp_excess``: e^x - 1 - x without cancellation near 0 (from the same polynomial), and
  ``exp_minus_one``: e^x - 1;
- ``log_unit``: log on [2**-63, 1]: ``split_unit`` scales into [sqrt(1/2), sqrt(2)) by
  selects, then the atanh series (``atanh_series``), as fastgauss._device.random does;
- the CDF approximation 0.5 (1 + tanh(y)) equals the logistic sigmoid of 2y exactly,
  1 / (1 + e^-2y), so it needs one exp and no tanh.

The CPU backend (fastgauss.cpu.kl) swaps in bit-cast versions of ``pow2`` and
``split_unit`` and float32 polynomials that skip the zero coefficients: the same values
from fewer vector instructions (a float32 exp in 0.31 instead of 3.2 ns an element on
one core; NumPy's: 0.32). It also swaps in a one-rounding ``fma`` (llvm.fma; a GPU uses
cuda.fma, the simulator the portable a * b + addend). Everything else is shared.

Every function takes ``c``, a :class:`Constants` of the compute dtype (``F32`` or
``F64``): Numba types it as a tuple of float32 or float64, so one source gives a
float32 and a float64 specialization and no literal silently promotes to float64.
NaN propagates through every function (comparisons with NaN are false, so the
selects keep NaN operands); the clamps are written as ``v if not (v < lo) else lo``.

Accuracy against NumPy in extended precision, asserted by tests/test_kl.py (measured
maxima in brackets, with the CPU's fma): exp within 1 ulp above the smallest normal
[0.98 float32, 1.00 float64], 0 below exp_lo and inf above exp_hi; exp_excess within 16
ulp of its value [13.5, 15, both near |x| = 0.39 where the series has handed over and
e^x - 1 - x cancels]; log_unit within 3 ulp [2.3, 2.0].
"""

import math
from typing import NamedTuple

import numpy as np


class Constants(NamedTuple):
    zero: float
    half: float
    one: float
    two: float
    # exp
    exp_lo: float  # inputs are clamped to [exp_lo, exp_hi]: results there are 0 and inf
    exp_hi: float
    log2e: float
    ln2_hi: float  # few significant bits, so n * ln2_hi is exact
    ln2_lo: float  # ln2 - ln2_hi, to the working precision
    round_magic: float  # 1.5 * 2**(mantissa bits): (y + magic) - magic rounds y to an integer
    e13: float  # 1/k!: the Taylor coefficients of e^r (0 past the dtype degree: 7 for float32, 13 for float64)
    e12: float
    e11: float
    e10: float
    e9: float
    e8: float
    e7: float
    e6: float
    e5: float
    e4: float
    e3: float
    # 2**k and 2**-k for the binary digits k of |h| (float32 never takes k >= 128: 1 there)
    k512: float
    k256: float
    k128: float
    k64: float
    k32: float
    k16: float
    k8: float
    k4: float
    k2: float
    k1: float
    p512: float
    p256: float
    p128: float
    p64: float
    p32: float
    p16: float
    p8: float
    p4: float
    p2: float
    p1: float
    q512: float
    q256: float
    q128: float
    q64: float
    q32: float
    q16: float
    q8: float
    q4: float
    q2: float
    q1: float
    # log
    sqrt_half: float
    ln2: float
    s21: float  # 1/k: log(m) = 2 s (1 + s^2/3 + s^4/5 + ...) (0 past s9 in float32)
    s19: float
    s17: float
    s15: float
    s13: float
    s11: float
    s9: float
    s7: float
    s5: float
    s3: float
    # the distributions
    log_2pi: float
    two_sqrt_2_over_pi: float  # the CDF is sigmoid(2 sqrt(2/pi) (z + 0.044715 z^3))
    gelu_cubic: float  # 0.044715
    x_low: float  # -0.999: the lowest bin integrates from -inf below it
    x_high: float  # 0.999: the highest bin integrates to +inf above it
    min_probability: float  # 1e-12


DIGITS = (512, 256, 128, 64, 32, 16, 8, 4, 2, 1)


def _constants(dtype, exp_lo, exp_hi, ln2_hi, ln2_lo, magic, taylor_degree, log_terms):
    t = np.dtype(dtype).type
    values = [0.0, 0.5, 1.0, 2.0, exp_lo, exp_hi, 1.0 / math.log(2.0), ln2_hi, ln2_lo, magic]
    values += [1.0 / math.factorial(k) if k <= taylor_degree else 0.0 for k in range(13, 2, -1)]
    values += [float(k) for k in DIGITS]
    # Digits beyond the dtype's range are never taken; their factors are 1, not inf or a
    # subnormal (a multiply giving a subnormal, even a discarded one, costs ~100 cycles).
    fits = [k < np.finfo(dtype).maxexp for k in DIGITS]
    values += [2.0**k if ok else 1.0 for k, ok in zip(DIGITS, fits)] + [0.5**k if ok else 1.0 for k, ok in zip(DIGITS, fits)]
    values += [math.sqrt(0.5), math.log(2.0)]
    values += [1.0 / k if k <= 2 * log_terms + 1 else 0.0 for k in range(21, 2, -2)]
    values += [math.log(2.0 * math.pi), 2.0 * math.sqrt(2.0 / math.pi), 0.044715, -0.999, 0.999, 1e-12]
    return Constants(*(t(v) for v in values))


# float32: exp(-110) and below round to 0, exp(90) to inf; Taylor to r^7 / 7! (error 1.2e-8 relative).
F32 = _constants(np.float32, -110.0, 90.0, 0.693145751953125, 1.4286068203094173e-06, 1.5 * 2.0**23, 7, 4)
# float64: exp(-760) is 0, exp(720) inf; Taylor to r^13 / 13! (error 4e-18 relative).
F64 = _constants(np.float64, -760.0, 720.0, 0.6931471803691238, 1.9082149292705877e-10, 1.5 * 2.0**52, 13, 10)


def constants(dtype):
    """The Constants of a compute dtype (float32 or float64), a plain tuple for the kernels."""
    return F32 if np.dtype(dtype) == np.float32 else F64


# --- exp -------------------------------------------------------------------------------


def digit(p, m, k, up, down, negative):
    """One binary digit k of |h| = m: p times 2**k (2**-k when h < 0) when m >= k."""
    take = m >= k
    scaled = p * (down if negative else up)
    return (scaled if take else p), (m - k if take else m)


def pow2(h, c):
    """2**h for an integral float h in the dtype's normal range (|h| <= 126 in float32, 1022
    in float64): the product over the binary digits of |h|, by selects. (The CPU backend
    replaces this by a bit cast into the exponent field: the same values, in 3 vector ops.)"""
    negative = h < c.zero
    m = -h if negative else h
    p = c.one
    p, m = digit(p, m, c.k512, c.p512, c.q512, negative)
    p, m = digit(p, m, c.k256, c.p256, c.q256, negative)
    p, m = digit(p, m, c.k128, c.p128, c.q128, negative)
    p, m = digit(p, m, c.k64, c.p64, c.q64, negative)
    p, m = digit(p, m, c.k32, c.p32, c.q32, negative)
    p, m = digit(p, m, c.k16, c.p16, c.q16, negative)
    p, m = digit(p, m, c.k8, c.p8, c.q8, negative)
    p, m = digit(p, m, c.k4, c.p4, c.q4, negative)
    p, m = digit(p, m, c.k2, c.p2, c.q2, negative)
    p, m = digit(p, m, c.k1, c.p1, c.q1, negative)
    return p


def fma(a, b, addend):
    """a * b + addend. The CPU backend computes it with one rounding (llvm.fma: the FMA
    instruction, or libm's fma where the ISA has none), so its bits are the same on every
    ISA level; the Horner steps below are written with it."""
    return a * b + addend


def taylor(r, c):
    """(e^r - 1 - r) / r^2 = 1/2 + r/6 + r^2/24 + ..., by Horner to the dtype's degree.

    The zero coefficients past float32's degree leave the value unchanged; the CPU
    backend replaces this by the Horner form of the dtype's own degree (same values)."""
    q = fma(c.e13, r, c.e12)
    q = fma(q, r, c.e11)
    q = fma(q, r, c.e10)
    q = fma(q, r, c.e9)
    q = fma(q, r, c.e8)
    q = fma(q, r, c.e7)
    q = fma(q, r, c.e6)
    q = fma(q, r, c.e5)
    q = fma(q, r, c.e4)
    q = fma(q, r, c.e3)
    return fma(q, r, c.half)


def atanh_series(z, c):
    """1 + z/3 + z^2/5 + ... (z = s^2), by Horner to the dtype's length (as ``taylor``)."""
    q = fma(c.s21, z, c.s19)
    q = fma(q, z, c.s17)
    q = fma(q, z, c.s15)
    q = fma(q, z, c.s13)
    q = fma(q, z, c.s11)
    q = fma(q, z, c.s9)
    q = fma(q, z, c.s7)
    q = fma(q, z, c.s5)
    q = fma(q, z, c.s3)
    return fma(q, z, c.one)


def exp_parts(x, c):
    """(n, r, t) with x = n ln2 + r, |r| <= ln2 / 2 and t = e^r - 1 - r, for x clamped
    to [exp_lo, exp_hi] (NaN stays NaN, and then n is 0 so no conversion sees a NaN)."""
    x = x if not (x < c.exp_lo) else c.exp_lo
    x = x if not (x > c.exp_hi) else c.exp_hi
    y = x * c.log2e
    n = (y + c.round_magic) - c.round_magic
    n = n if n == n else c.zero
    r = fma(-n, c.ln2_lo, x - n * c.ln2_hi)  # n ln2_hi is exact
    q = taylor(r, c)
    return n, r, r * r * q


def scale2(v, n, c):
    """v * 2**n for an integral float n, as two factors 2**h and 2**(n - h) that never overflow."""
    h = (n * c.half + c.round_magic) - c.round_magic
    return v * pow2(h, c) * pow2(n - h, c)


def exp(x, c):
    """e^x: within 2 ulp above the smallest normal; 0 below exp_lo, inf above exp_hi."""
    n, r, t = exp_parts(x, c)
    return scale2(c.one + (r + t), n, c)


def exp_excess(x, c):
    """e^x - 1 - x, accurate near 0 (the series r^2 / 2 + r^3 / 6 + ... when n = 0)."""
    n, r, t = exp_parts(x, c)
    e = scale2(c.one + (r + t), n, c)
    return t if n == c.zero else (e - c.one) - x


def exp_minus_one(x, c):
    """e^x - 1, accurate near 0 (``exp_excess`` + x there); inf at inf and -1 at -inf, where
    exp_excess(x) + x would be inf - inf."""
    n, r, t = exp_parts(x, c)
    e = scale2(c.one + (r + t), n, c)
    return t + x if n == c.zero else e - c.one


# --- log ------------------------------------------------------------------------------


def halve_step(x, e, threshold, factor, k):
    """(x * factor, e - k) where x < threshold: an exact rescaling by a power of two."""
    small = x < threshold
    scaled_x = x * factor
    scaled_e = e - k
    return (scaled_x if small else x), (scaled_e if small else e)


def split_unit(x, c):
    """(m, e) with x = m * 2**e, m in [sqrt(1/2), sqrt(2)), for x in [2**-63, 1] (NaN: m NaN)."""
    e = c.zero
    x, e = halve_step(x, e, c.q32, c.p32, c.k32)
    x, e = halve_step(x, e, c.q16, c.p16, c.k16)
    x, e = halve_step(x, e, c.q8, c.p8, c.k8)
    x, e = halve_step(x, e, c.q4, c.p4, c.k4)
    x, e = halve_step(x, e, c.q2, c.p2, c.k2)
    x, e = halve_step(x, e, c.q1, c.p1, c.k1)
    return halve_step(x, e, c.sqrt_half, c.two, c.one)


def log_unit(x, c):
    """Natural log of x in [2**-63, 1] (NaN stays NaN): log(m) = 2 atanh(s), s = (m - 1) / (m + 1)."""
    m, e = split_unit(x, c)
    s = (m - c.one) / (m + c.one)
    series = atanh_series(s * s, c)
    return fma(e, c.ln2_hi, fma(e, c.ln2_lo, c.two * s * series))


# --- the per-element formulas ---------------------------------------------------------------


def normal_kl(mean1, logvar1, mean2, logvar2, c):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) for one element.

    0.5 (-1 + logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^-logvar2),
    evaluated as 0.5 (g(logvar1 - logvar2) + d^2 e^-logvar2) with g(x) = e^x - 1 - x:
    two non-negative terms, so the result keeps its relative accuracy as p -> q.
    """
    d = mean1 - mean2
    return c.half * (exp_excess(logvar1 - logvar2, c) + d * d * exp(-logvar2, c))


def normal_logpdf(x, mean, logvar, c):
    """log N(x; mean, e^logvar) = -0.5 (log(2 pi) + logvar + (x - mean)^2 e^-logvar)."""
    d = x - mean
    return -c.half * (c.log_2pi + logvar + d * d * exp(-logvar, c))


def sigmoid(a, c):
    return c.one / (c.one + exp(-a, c))


def bin_edges(x, mean, log_scale, half_bin, c):
    """(e^-s, plus_in, min_in, a, b) of x's bin: the standardized edges
    plus_in, min_in = e^-s (x - mean +- half_bin) and the CDF arguments a, b with
    cdf_plus = sigmoid(a), cdf_min = sigmoid(b), a = 2 sqrt(2/pi) (z + 0.044715 z^3)."""
    inv_stdv = exp(-log_scale, c)
    plus_in = inv_stdv * ((x - mean) + half_bin)
    min_in = inv_stdv * ((x - mean) - half_bin)
    a = c.two_sqrt_2_over_pi * (plus_in + c.gelu_cubic * plus_in * plus_in * plus_in)
    b = c.two_sqrt_2_over_pi * (min_in + c.gelu_cubic * min_in * min_in * min_in)
    return inv_stdv, plus_in, min_in, a, b


def discretized_gaussian_log_likelihood(x, mean, log_scale, half_bin, c):
    """log P(bin of x) under N(mean, e^(2 log_scale)), bins of width 2 half_bin (see the reference).

    The CDF 0.5 (1 + tanh(y)) is evaluated as sigmoid(2 y). Where the bin lies above the
    mean (a + b > 0) both tails are taken from the top, 1 - cdf = sigmoid(-2 y), so the
    probability is a difference of small numbers, not of two numbers near 1.
    """
    inv_stdv, plus_in, min_in, a, b = bin_edges(x, mean, log_scale, half_bin, c)
    flip = a + b > c.zero
    upper = -b if flip else a  # sigmoid(upper) - sigmoid(lower) = cdf_plus - cdf_min
    lower = -a if flip else b
    s_upper = sigmoid(upper, c)
    s_lower = sigmoid(lower, c)
    cdf_plus = (c.one - s_lower) if flip else s_upper
    one_minus_cdf_min = s_upper if flip else (c.one - s_lower)
    p = s_upper - s_lower
    p = one_minus_cdf_min if x > c.x_high else p
    p = cdf_plus if x < c.x_low else p
    p = p if not (p < c.min_probability) else c.min_probability
    return log_unit(p, c)


# --- Gaussian algebra ---


def normal_product(mean1, logvar1, mean2, logvar2, c):
    """(mean, logvar, log_scale) of one element of N(x; mean1, e^logvar1) N(x; mean2, e^logvar2)
    = e^log_scale N(x; mean, e^logvar).

    With lo <= hi the two log-variances (mean_lo the mean of the narrower factor) and
    e = e^(lo - hi) in [0, 1], s = 1 / (1 + e):

        mean = s (mean_lo + e mean_hi),   logvar = lo - log(1 + e),
        log_scale = log N(mean1; mean2, e^lo + e^hi)
                  = -0.5 (log 2 pi + hi + log(1 + e) + (mean1 - mean2)^2 e^-hi s)

    one exp of a non-positive number, one of -hi and one log on [1/2, 1] (log(1 + e) =
    -log s): no overflow of e^-logvar for tiny variances, and a convex combination of
    the means. NaN propagates (a NaN log-variance makes e NaN).
    """
    first = not (logvar2 < logvar1)  # factor 1 is the narrower (or NaN is involved)
    lo = logvar1 if first else logvar2
    hi = logvar2 if first else logvar1
    near = mean1 if first else mean2
    far = mean2 if first else mean1
    e = exp(lo - hi, c)
    s = c.one / (c.one + e)
    log1pe = -log_unit(s, c)
    diff = mean1 - mean2
    mean = s * fma(e, far, near)
    logvar = lo - log1pe
    log_scale = -c.half * (c.log_2pi + hi + log1pe + diff * diff * exp(-hi, c) * s)
    return mean, logvar, log_scale


# --- the gradients (backward kernels: each returns the partial derivatives of one element) ----
# The backward kernels evaluate these in float64 (c = F64) for every data dtype and round once
# to the gradient's dtype, so float32 gradients carry no float32 cancellation.


def normal_kl_vjp(mean1, logvar1, mean2, logvar2, c):
    """(dKL/dmean1, dKL/dlogvar1, dKL/dmean2, dKL/dlogvar2) of ``normal_kl``:
    d e^-v2, (e^(v1 - v2) - 1) / 2, -d e^-v2, (1 - e^(v1 - v2) - d^2 e^-v2) / 2 with
    d = mean1 - mean2 (e^x - 1 from ``exp_minus_one``, accurate as p -> q)."""
    d = mean1 - mean2
    q = d * exp(-logvar2, c)
    expm1 = exp_minus_one(logvar1 - logvar2, c)
    return q, c.half * expm1, -q, -c.half * (expm1 + d * q)


def normal_logpdf_vjp(x, mean, logvar, c):
    """(d/dx, d/dmean, d/dlogvar, 0) of ``normal_logpdf``: -(x - mean) e^-v, (x - mean) e^-v,
    ((x - mean)^2 e^-v - 1) / 2."""
    d = x - mean
    q = d * exp(-logvar, c)
    return -q, q, c.half * (d * q - c.one), c.zero


def sigmoid_pair(a, c):
    """(sigmoid(a), sigmoid(-a)) from one exp of -|a|, neither from a 1 - s (NaN stays NaN)."""
    positive = a >= c.zero
    e = exp(a if not positive else -a, c)
    small = e / (c.one + e)
    big = c.one / (c.one + e)
    return (big if positive else small), (small if positive else big)


def discretized_gaussian_log_likelihood_vjp(x, mean, log_scale, half_bin, c):
    """(d/dx, d/dmean, d/dlog_scale, 0) of ``discretized_gaussian_log_likelihood``: the
    derivative of the log of the selected probability p (cdf_plus below -0.999, 1 - cdf_min
    above 0.999, cdf_plus - cdf_min between), 0 where p was clamped at 1e-12 (as
    torch.clamp(min=1e-12) passes no gradient there) and NaN where p is NaN (torch's mask
    would give 0 there: here NaN propagates, as in fastgauss._device.objective); x enters
    through x - mean, so d/dx = -d/dmean."""
    inv_stdv, plus_in, min_in, a, b = bin_edges(x, mean, log_scale, half_bin, c)
    s_a, s_not_a = sigmoid_pair(a, c)
    s_b, s_not_b = sigmoid_pair(b, c)
    # as in the forward: above the mean, the difference of the upper tails
    p = (s_not_b - s_not_a) if a + b > c.zero else (s_a - s_b)
    three_cubic = (c.two + c.one) * c.gelu_cubic
    dp_plus = s_a * s_not_a * c.two_sqrt_2_over_pi * (c.one + three_cubic * plus_in * plus_in)  # d cdf_plus / d plus_in
    dp_min = -(s_b * s_not_b * c.two_sqrt_2_over_pi * (c.one + three_cubic * min_in * min_in))  # d(-cdf_min) / d min_in
    p = s_not_b if x > c.x_high else p
    dp_plus = c.zero if x > c.x_high else dp_plus
    p = s_a if x < c.x_low else p
    dp_min = c.zero if x < c.x_low else dp_min
    clamped = p < c.min_probability  # NaN p is not clamped: its gradient is NaN, as its value
    l_plus = c.zero if clamped else dp_plus / p
    l_min = c.zero if clamped else dp_min / p
    d_mean = -inv_stdv * (l_plus + l_min)
    d_log_scale = -(l_plus * plus_in + l_min * min_in)
    return -d_mean, d_mean, d_log_scale, c.zero
