"""The KL family (normal_kl, normal_logpdf, discretized_gaussian_log_likelihood): parity of
every backend with the reference over dtypes and broadcast forms, closed forms against
numerical integration, Monte Carlo and scipy, the discretized likelihood as a
distribution, stability where the literal formulas cancel, NaN, thread-count
determinism of the reductions, errors, and the accuracy of the vectorizable exp/log.

Tolerances are first-order error bounds: a small multiple of the evaluation dtype's eps
times the magnitude of the terms each formula adds (stated with each helper below).
"""

import math

import numba
import numpy as np
import pytest
from scipy import integrate, stats

import fastgauss
from conftest import assert_same_digest_for_thread_counts, CUDA_USABLE, SIMULATOR, to_backend, to_numpy
from fastgauss import _device
from fastgauss._device import kl as _kl
from fastgauss.cpu.kl import _fma as cpu_fma

# The CUDA simulator evaluates the device functions with NumPy scalars, which warn where the
# GPU (and the CPU kernels) silently produce inf and nan, as the tests ask them to.
pytestmark = [
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

EPS = {np.dtype(np.float32): float(np.finfo(np.float32).eps), np.dtype(np.float64): float(np.finfo(np.float64).eps)}
EPS64 = EPS[np.dtype(np.float64)]
DTYPES = [np.float32, np.float64]
SHAPE = (3, 4, 5, 6)  # B = 3, 120 elements per sample: tiny, for the simulator too


def compiled_backends():
    return ["cpu", "cuda"] if CUDA_USABLE else ["cpu"]


def call(op, args, backend, **kwargs):
    """fastgauss.<op> on ``backend`` with host arrays moved to the device for cuda; NumPy result."""
    args = [to_backend(a, backend) for a in args]
    return to_numpy(getattr(fastgauss, op)(*args, backend=backend, **kwargs))


def f64(a):
    return np.asarray(a, dtype=np.float64)


# --- error bounds ------------------------------------------------------------------------


def kl_terms(mean1, logvar1, mean2, logvar2):
    """Magnitude of what the KL evaluation adds and rounds: 1 + |v1| + |v2| + (1 + |v1 - v2|) e^(v1 - v2)
    + d^2 e^-v2 (the factor 1 + |v1 - v2| covers the rounding of v1 - v2 inside the exp)."""
    m1, v1, m2, v2 = (f64(a) for a in (mean1, logvar1, mean2, logvar2))
    delta = v1 - v2
    with np.errstate(over="ignore"):
        return 1 + np.abs(v1) + np.abs(v2) + (1 + np.abs(delta)) * np.exp(delta) + (m1 - m2) ** 2 * np.exp(-v2)


def logpdf_terms(x, mean, logvar):
    """log(2 pi) + |v| + (x - mu)^2 e^-v, with (1 + |v|) on the last term for the rounding of -v."""
    x, m, v = (f64(a) for a in (x, mean, logvar))
    return math.log(2 * math.pi) + np.abs(v) + (1 + np.abs(v)) * (x - m) ** 2 * np.exp(-v)


def approx_cdf(z):
    """The tanh CDF approximation, written as 1 / (1 + e^-2y): accurate in both tails (float64)."""
    y = math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-2.0 * y))


def approx_pdf(z):
    y = math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)
    return 0.5 * (1 - np.tanh(y) ** 2) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * z**2)


def discretized_condition(x, means, log_scales, bins):
    """(p, kappa): the bin probability and the condition number of log p in the rounding of its
    evaluation: the tails subtracted to get p (the smaller side of each CDF) and the sensitivity
    to the rounding of z = (x - mu +- 1/bins) e^-s, all relative to p."""
    x, mu, s = (f64(a) for a in np.broadcast_arrays(x, means, log_scales))
    inv = np.exp(-s)
    z_plus, z_min = inv * (x - mu + 1.0 / bins), inv * (x - mu - 1.0 / bins)
    upper, lower = approx_cdf(z_plus), approx_cdf(z_min)
    p = np.where(x < -0.999, upper, np.where(x > 0.999, approx_cdf(-z_min), upper - lower))
    p = np.maximum(p, 1e-12)
    tails = np.minimum(upper, 1 - upper) + np.minimum(lower, 1 - lower)
    slope = approx_pdf(z_plus) * (1 + np.abs(z_plus) + np.abs(s)) + approx_pdf(z_min) * (1 + np.abs(z_min) + np.abs(s))
    slope *= 1 + inv * (np.abs(x) + np.abs(mu)) / np.maximum(np.abs(x - mu) * inv, 1.0)  # rounding of x - mu
    return p, (tails + slope) / p


def discretized_bound(x, means, log_scales, bins, ref, dtype):
    """32 eps (1 + |log p| + kappa) for the compiled evaluation, plus the literal float64 formula's
    own error in the reference: 4 eps64 / p (1 - cdf and cdf_plus - cdf_min near 1)."""
    p, kappa = discretized_condition(x, means, log_scales, bins)
    return 32 * EPS[np.dtype(dtype)] * (1 + np.abs(ref) + kappa) + 4 * EPS64 / p


def reduced(values, reduce):
    """The reference reduction of elementwise float64 values (or bounds), shape (B,)."""
    rows = np.asarray(values, np.float64).reshape(values.shape[0], -1)
    return rows.sum(axis=1) / (rows.shape[1] if reduce == "mean" else 1)


def assert_within(got, ref, bound, dtype, reduce=None):
    """|got - ref| <= bound elementwise; for reductions the summed bound plus one final rounding."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    if reduce is not None:
        bound = reduced(np.broadcast_to(bound, bound.shape), reduce) + 2 * EPS[np.dtype(dtype)] * np.abs(ref)
    excess = np.abs(got - ref) - bound
    assert np.all(excess <= 0), f"max excess {np.max(excess):.3g} at {np.unravel_index(np.argmax(excess), excess.shape)}"


# --- broadcast forms -----------------------------------------------------------------------

B, C, H, W = SHAPE
FORMS = {
    "full": SHAPE,
    "per-sample": (B, 1, 1, 1),
    "shared by all samples": (1, C, H, W),
    "no batch axis": (C, H, W),
    "per channel (materialized)": (1, C, 1, 1),
    "per sample and channel (materialized)": (B, C, 1, 1),
    "0-d array": (),
    "numpy scalar": "numpy",
    "python scalar": "python",
}


def make(form, dtype, rng, low=-2.0, high=2.0):
    shape = FORMS[form]
    if shape == "python":
        return float(rng.uniform(low, high))
    if shape == "numpy":
        return np.dtype(dtype).type(rng.uniform(low, high))
    return rng.uniform(low, high, shape).astype(dtype)


KL_CASES = [
    ("full", "full", "full", "full"),
    ("full", "per-sample", "full", "per-sample"),
    ("full", "full", "python scalar", "python scalar"),
    ("shared by all samples", "full", "no batch axis", "per-sample"),
    ("full", "per channel (materialized)", "per sample and channel (materialized)", "0-d array"),
    ("per-sample", "per-sample", "per-sample", "numpy scalar"),
]
THREE_CASES = [
    ("full", "full", "full"),
    ("full", "full", "per-sample"),
    ("full", "python scalar", "0-d array"),
    ("no batch axis", "per channel (materialized)", "shared by all samples"),
]


def _cuda_or_skip(backend):
    if backend == "cuda" and not CUDA_USABLE:
        pytest.skip("cuda backend not usable")


def reductions(backend, case_index):
    """All three on the host; on the simulator (slow) elementwise and one reduction, alternating."""
    if backend == "cuda" and SIMULATOR:
        return (None, ("mean", "sum")[case_index % 2])
    return (None, "mean", "sum")


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("forms", KL_CASES, ids=lambda f: "+".join(f))
def test_normal_kl_parity_over_broadcast_forms(backend, dtype, forms):
    _cuda_or_skip(backend)
    rng = np.random.default_rng(0)
    args = [make(form, dtype, rng) for form in forms]
    for reduce in reductions(backend, KL_CASES.index(forms)):
        ref = fastgauss.normal_kl(*args, reduce=reduce, backend="numpy")
        got = call("normal_kl", args, backend, reduce=reduce)
        assert got.dtype == ref.dtype == np.dtype(dtype) and got.shape == ref.shape
        bound = 16 * EPS[np.dtype(dtype)] * np.broadcast_to(kl_terms(*args), np.broadcast_shapes(*(np.shape(a) for a in args)))
        assert_within(got, ref, bound, dtype, reduce)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("forms", THREE_CASES, ids=lambda f: "+".join(f))
def test_normal_logpdf_parity_over_broadcast_forms(backend, dtype, forms):
    _cuda_or_skip(backend)
    rng = np.random.default_rng(1)
    args = [make(form, dtype, rng) for form in forms]
    shape = np.broadcast_shapes(*(np.shape(a) for a in args))
    for reduce in reductions(backend, THREE_CASES.index(forms)):
        ref = fastgauss.normal_logpdf(*args, reduce=reduce, backend="numpy")
        got = call("normal_logpdf", args, backend, reduce=reduce)
        assert got.dtype == ref.dtype == np.dtype(dtype) and got.shape == ref.shape
        assert_within(got, ref, 16 * EPS[np.dtype(dtype)] * np.broadcast_to(logpdf_terms(*args), shape), dtype, reduce)


def image_like(form_x, form_means, form_scales, dtype, rng):
    """x on the 8-bit grid of [-1, 1] (with both edge bins), means within ~2 sigma, scales 0.01..0.5."""
    x = make(form_x, dtype, rng, -1, 1)
    x = np.round(np.asarray(x, np.float64) * 127.5) / 127.5
    x = x.astype(dtype) if np.ndim(x) else float(x)
    if np.ndim(x) >= 1:
        x.reshape(-1)[:2] = (-1.0, 1.0)
    log_scales = make(form_scales, dtype, rng, math.log(0.01), math.log(0.5))
    shift = make(form_means, dtype, rng, -2, 2)
    means = np.asarray(x + np.exp(f64(log_scales)) * f64(shift)).astype(dtype) if np.ndim(shift) else shift
    return x, means, log_scales


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("forms", THREE_CASES, ids=lambda f: "+".join(f))
def test_discretized_parity_over_broadcast_forms(backend, dtype, forms):
    _cuda_or_skip(backend)
    rng = np.random.default_rng(2)
    args = image_like(*forms, dtype, rng)
    shape = np.broadcast_shapes(*(np.shape(a) for a in args))
    runs = {None: 255, "mean": 255, "sum": 15}  # bins
    for reduce in reductions(backend, THREE_CASES.index(forms)):
        bins = runs[reduce]
        ref = fastgauss.discretized_gaussian_log_likelihood(*args, reduce=reduce, bins=bins, backend="numpy")
        got = call("discretized_gaussian_log_likelihood", args, backend, reduce=reduce, bins=bins)
        assert got.dtype == ref.dtype == np.dtype(dtype) and got.shape == ref.shape
        elementwise = fastgauss.discretized_gaussian_log_likelihood(*args, bins=bins, backend="numpy")
        bound = np.broadcast_to(discretized_bound(*args, bins, elementwise, dtype), shape)
        assert_within(got, ref, bound, dtype, reduce)


@pytest.mark.parametrize(
    "make_args, expected",
    [
        (lambda: (np.ones(4, np.float32), 0.5, 1, 2.0), np.float32),  # Python scalars do not promote
        (lambda: (np.ones(4, np.float32), np.float64(0.5), 0.0, 0.0), np.float64),  # a NumPy scalar does (NumPy 2)
        (lambda: (np.ones(4, np.float32), np.zeros(4), 0.0, 0.0), np.float64),
        (lambda: (np.ones(4, np.int32), np.zeros(4, np.int64), 0, 0), np.float64),  # integer data -> float64
        (lambda: (np.ones(4, np.int16), np.zeros(4, np.float32), 0.0, 0.0), np.float32),  # result_type(int16, float32)
        (lambda: (np.ones(4, bool), 0.0, 0.0, 0.0), np.float64),
        (lambda: (1.0, 0.5, 0.0, 0.0), np.float64),  # scalars only
    ],
)
def test_output_dtype_is_result_type_of_the_arrays(backend, make_args, expected):
    args = make_args()
    if backend == "cuda" and all(np.ndim(a) == 0 for a in args):
        got = to_numpy(fastgauss.normal_kl(*args, backend="cuda"))
    else:
        got = call("normal_kl", args, backend)
    ref = fastgauss.normal_kl(*(f64(a) if isinstance(a, np.ndarray) else a for a in args), backend="numpy")
    assert got.dtype == np.dtype(expected)
    np.testing.assert_allclose(got, ref, rtol=16 * EPS[np.dtype(expected)], atol=16 * EPS[np.dtype(expected)])


# --- first principles ----------------------------------------------------------------------------

UNIVARIATE = [(0.0, 0.0, 0.0, 0.0), (0.3, -1.0, -0.5, 0.7), (2.0, 1.5, -1.0, -0.5), (-1.0, -3.0, 1.0, 2.0), (0.1, 0.2, 0.1, 0.2001)]


def kl_by_quadrature(m1, v1, m2, v2):
    p, q = stats.norm(m1, math.exp(0.5 * v1)), stats.norm(m2, math.exp(0.5 * v2))
    sd = math.exp(0.5 * v1)
    value, error = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), m1 - 40 * sd, m1 + 40 * sd, epsabs=1e-14, epsrel=1e-12, limit=200)
    assert error < 1e-10
    return value


@pytest.mark.parametrize("params", UNIVARIATE)
@pytest.mark.parametrize("dtype", DTYPES)
def test_univariate_kl_matches_numerical_integration(backend, params, dtype):
    """KL = integral of p log(p / q), by adaptive quadrature at the dtype's rounded parameters;
    float64 within quadrature's 1e-11 relative, float32 within 16 eps32 times the terms."""
    rounded = [float(np.dtype(dtype).type(v)) for v in params]
    expected = kl_by_quadrature(*rounded)
    got = call("normal_kl", [np.full(3, v, dtype) for v in rounded], backend)
    tol = 1e-11 * abs(expected) + 1e-13 + (16 * EPS[np.dtype(dtype)] * kl_terms(*rounded) if dtype == np.float32 else 0)
    assert np.all(np.abs(got - expected) <= tol)


@pytest.mark.parametrize("params", UNIVARIATE[1:4])
def test_univariate_kl_matches_monte_carlo(params):
    m1, v1, m2, v2 = params
    rng = np.random.default_rng(7)
    samples = rng.normal(m1, math.exp(0.5 * v1), 400_000)
    log_ratio = stats.norm.logpdf(samples, m1, math.exp(0.5 * v1)) - stats.norm.logpdf(samples, m2, math.exp(0.5 * v2))
    estimate, standard_error = log_ratio.mean(), log_ratio.std(ddof=1) / math.sqrt(samples.size)
    for backend in ["numpy"] + compiled_backends():
        got = call("normal_kl", [np.full(2, v) for v in params], backend)
        assert abs(got[0] - estimate) < 5 * standard_error  # 5 standard errors of the MC mean


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_of_p_with_itself_is_zero_and_kl_is_never_negative(backend, dtype):
    rng = np.random.default_rng(3)
    mean, logvar = (rng.uniform(-5, 5, (4, 50)).astype(dtype) for _ in range(2))
    same = call("normal_kl", [mean, logvar, mean, logvar], backend)
    if backend == "numpy":  # (-1 + v) - v + 1 rounds: zero within the rounding of the terms
        assert np.all(np.abs(same) <= 4 * EPS[np.dtype(dtype)] * kl_terms(mean, logvar, mean, logvar))
    else:
        assert np.all(same == 0)  # exactly: g(0) = 0 and d = 0
    other_mean = (mean + rng.normal(0, 1e-3, mean.shape)).astype(dtype)
    other_logvar = np.where(rng.random(mean.shape) < 0.5, logvar, logvar + rng.normal(0, 1e-3, mean.shape)).astype(dtype)
    got = call("normal_kl", [mean, logvar, other_mean, other_logvar], backend)
    if backend == "numpy":  # the literal formula cancels: negative by at most its rounding
        assert np.all(got >= -4 * EPS[np.dtype(dtype)] * kl_terms(mean, logvar, other_mean, other_logvar))
    else:  # a sum of two non-negative terms, each evaluated without cancellation
        assert np.all(got >= 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_keeps_relative_accuracy_as_q_approaches_p(dtype):
    """KL = 0.5 (e^d - 1 - d) + ... for logvar1 - logvar2 = d -> 0, where -1 + e^d - d cancels; the
    compiled backends keep 1e-5 relative in float32 (the issue's bar) and 1e-12 in float64."""
    logvar2 = np.zeros(6, dtype)
    delta = np.array([1e-2, 1e-3, 1e-4, -1e-4, 3e-6, -0.4], dtype)
    logvar1 = logvar2 + delta
    exact = 0.5 * (np.expm1(f64(delta)) - f64(delta))  # expm1 - d loses at most log10(2/d) of 16 digits
    exact = np.where(np.abs(delta) < 1e-3, 0.5 * (f64(delta) ** 2 / 2 + f64(delta) ** 3 / 6 + f64(delta) ** 4 / 24), exact)
    for backend in compiled_backends():
        got = call("normal_kl", [np.zeros(6, dtype), logvar1, np.zeros(6, dtype), logvar2], backend)
        np.testing.assert_allclose(got, exact, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_logpdf_matches_scipy(backend, dtype):
    rng = np.random.default_rng(4)
    x, mean = (rng.normal(0, 3, (5, 40)).astype(dtype) for _ in range(2))
    logvar = rng.uniform(-6, 4, (5, 40)).astype(dtype)
    expected = stats.norm.logpdf(f64(x), f64(mean), np.exp(0.5 * f64(logvar)))
    got = call("normal_logpdf", [x, mean, logvar], backend)
    assert np.all(np.abs(got - expected) <= 16 * EPS[np.dtype(dtype)] * logpdf_terms(x, mean, logvar))
    total = call("normal_logpdf", [x, mean, logvar], backend, reduce="sum")
    assert_within(total, expected.sum(axis=1), 16 * EPS[np.dtype(dtype)] * logpdf_terms(x, mean, logvar), dtype, "sum")


@pytest.mark.parametrize("bins", [255, 15, 1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_discretized_probabilities_sum_to_one_over_all_bins(backend, dtype, bins):
    """The bins partition the line (edge bins reach +-inf): sum_k P(x_k) = 1, up to the 1e-12
    clamp of each bin, the rounding of the bin edges and of each probability."""
    levels = (np.arange(bins + 1) * (2.0 / bins) - 1.0).astype(dtype)
    means = np.array([[-1.2], [-0.3], [0.0], [0.51], [1.0]], dtype)
    log_scales = np.log(np.array([[0.002], [0.05], [0.3], [1.0], [4.0]])).astype(dtype)
    logp = call("discretized_gaussian_log_likelihood", [levels, means, log_scales], backend, bins=bins)
    assert logp.shape == (5, bins + 1)
    total = np.exp(logp.astype(np.float64)).sum(axis=1)
    tol = (bins + 1) * 1e-12 + (1e-9 if dtype == np.float64 else 2e-5)
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=tol)


def test_discretized_edge_bins_integrate_to_infinity(backend):
    x = np.array([-1.0, 1.0, -0.5])
    means = np.array([-0.9, 0.8, 0.1])
    scale = 0.2
    got = call("discretized_gaussian_log_likelihood", [x, means, math.log(scale)], backend)
    z = (x - means + np.array([1, -1, 1]) / 255) / scale
    expected = [math.log(approx_cdf(z[0])), math.log(approx_cdf(-z[1])), math.log(approx_cdf(z[2]) - approx_cdf((x[2] - means[2] - 1 / 255) / scale))]
    np.testing.assert_allclose(got, expected, rtol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_discretized_is_accurate_in_the_tails(dtype):
    """Bins many sigma from the mean, on both sides, probabilities down to the 1e-12 clamp: the
    compiled backends match a tail-accurate float64 evaluation (1 - cdf as cdf(-z)) within their
    conditioning bound; float32 keeps 1e-5 relative on log p (the literal formula in float32 would
    lose everything once cdf rounds to 1)."""
    x = np.repeat(np.round(np.linspace(-0.9, 0.9, 9) * 127.5) / 127.5, 12).astype(dtype)
    offsets = np.tile(np.array([-7, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 7], np.float64), 9)
    scale = 0.04
    means = (x - offsets * scale).astype(dtype)
    log_scales = np.full(x.shape, math.log(scale), dtype)
    xs, mu, s = f64(x), f64(means), f64(log_scales)
    z_plus, z_min = (xs - mu + 1 / 255) * np.exp(-s), (xs - mu - 1 / 255) * np.exp(-s)
    above = z_plus + z_min > 0
    p = np.where(above, approx_cdf(-z_min) - approx_cdf(-z_plus), approx_cdf(z_plus) - approx_cdf(z_min))
    expected = np.log(np.maximum(p, 1e-12))
    assert expected.min() < -20  # reaches p ~ 1e-9 and below
    _, kappa = discretized_condition(x, means, log_scales, 255)
    for backend in compiled_backends():
        got = call("discretized_gaussian_log_likelihood", [x, means, log_scales], backend)
        assert np.all(np.abs(got - expected) <= 32 * EPS[np.dtype(dtype)] * (1 + np.abs(expected) + kappa))
        if dtype == np.float32:
            np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_reference_discretized_gradient_is_accurate_in_the_tails():
    """d log P / d means and d / d log_scales, middle bins 1 to 6 sigma out and both edge bins,
    of the reference and the cpu kernel against the same tanh-CDF formula differentiated at 40
    digits (mpmath): within 1e-11 relative (measured: cpu 5e-13). Divided by the forward's P (a
    difference of CDFs near 0 or 1) and with the density as 1 - tanh^2, the reference had lost
    up to 1.6e-8 here."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    scale = 0.04
    offsets = np.array([-6, -5, -4, -3, -1, 1, 3, 4, 5, 6, 0.5, -0.5])
    x = np.concatenate((np.full(10, 20 / 127.5), [-1.0, 1.0]))
    means = x - offsets * scale
    log_scales = np.full(x.shape, math.log(scale))
    grads = {backend: fastgauss.kl._vjp_discretized_gaussian_log_likelihood(np.ones_like(x), x, means, log_scales, backend=backend)
             for backend in ("numpy", "cpu")}

    def cdf(z):
        return (1 + mp.tanh(mp.sqrt(2 / mp.pi) * (z + mp.mpf("0.044715") * z**3))) / 2

    def log_p(xi, mean, log_scale):
        z_plus, z_min = (xi - mean + mp.mpf(1) / 255) * mp.exp(-log_scale), (xi - mean - mp.mpf(1) / 255) * mp.exp(-log_scale)
        return mp.log(cdf(z_plus) if xi < -0.999 else (1 - cdf(z_min) if xi > 0.999 else cdf(z_plus) - cdf(z_min)))

    for k in range(x.size):
        xi, mean, log_scale = (mp.mpf(float(a[k])) for a in (x, means, log_scales))
        assert log_p(xi, mean, log_scale) > math.log(1e-11)  # above the clamp
        for name, exact in (("means", mp.diff(lambda m: log_p(xi, m, log_scale), mean)),
                            ("log_scales", mp.diff(lambda s: log_p(xi, mean, s), log_scale))):
            for backend, got in grads.items():
                assert abs(got[name][k] - float(exact)) <= 1e-11 * abs(float(exact)), (backend, name, offsets[k], got[name][k], exact)


@pytest.mark.parametrize("dtype", DTYPES)
def test_float32_reductions_within_1e5_of_the_float64_evaluation(dtype):
    """Per-sample means on realistic data (the simulator on a smaller sample)."""
    rng = np.random.default_rng(5)
    for backend in compiled_backends():
        shape = (2, 3, 8, 8) if backend == "cuda" and SIMULATOR else (4, 3, 32, 32)
        kl_args = [rng.standard_normal(shape).astype(dtype) for _ in range(4)]
        x = (np.round(rng.uniform(-1, 1, shape) * 127.5) / 127.5).astype(dtype)
        log_scales = (math.log(0.05) + 0.3 * rng.standard_normal(shape)).astype(dtype)
        means = (x + np.exp(log_scales) * rng.standard_normal(shape)).astype(dtype)
        for op, args in (("normal_kl", kl_args), ("normal_logpdf", kl_args[:3]), ("discretized_gaussian_log_likelihood", [x, means, log_scales])):
            exact = getattr(fastgauss.reference, op)(*(f64(a) for a in args), reduce="mean")
            got = call(op, args, backend, reduce="mean")
            np.testing.assert_allclose(got, exact, rtol=1e-5 if dtype == np.float32 else 1e-12)


# Mixed magnitudes for the float64-accumulation test: large terms (|B| = 2048, or the discretized
# likelihood's clamp log(1e-12) = -27.6) where the accumulators start, small ones (0.2-0.45 ulp(B))
# after them. On the CPU the first 64 elements of every work chunk are large, so every lane of a
# vectorized sum (up to 64 lanes) starts with a large term; on a GPU the first THREADS * MAX_GRID_X
# elements of a row are (one per thread of the grid-stride loop) and rows hold 64 elements a
# thread. A float32 accumulator then rounds every small term away: tens of ulps of the total.
MIXED_OPS = ["normal_kl", "normal_logpdf", "discretized_gaussian_log_likelihood"]


def mixed_magnitude_args(op, shape, big, small, rng):
    """float32 arguments of ``op`` whose terms are B where ``big`` and of magnitude ``small`` elsewhere."""
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    if op == "normal_kl":  # 0.5 (mean1 - 0)^2 with unit variances
        return [np.where(big, 64.0, sign * np.sqrt(2 * small)).astype(np.float32), 0.0, 0.0, 0.0]
    if op == "normal_logpdf":  # -0.5 (log 2 pi + v + x^2 e^-v) = -pi x^2 for v = -log 2 pi
        x = np.where(big, math.sqrt(2048 / math.pi), sign * np.sqrt(small / math.pi)).astype(np.float32)
        return [x, 0.0, float(np.float32(-math.log(2 * math.pi)))]
    # x = 0 in a bin of width 2/255: log p ~ -small for a narrow Gaussian at 0, the clamp far from it
    scales = np.geomspace(5e-4, 2e-3, 2000)
    minus_log_p = -fastgauss.reference.discretized_gaussian_log_likelihood(np.zeros(scales.size), 0.0, np.log(scales))
    inside = np.log(np.interp(small, minus_log_p, scales))
    log_scales = np.where(big, math.log(0.01), inside).astype(np.float32)
    return [np.zeros(shape, np.float32), np.where(big, 0.5, 0.0).astype(np.float32), log_scales]


def float32_lane_sums(terms, chunk, lanes):
    """What a float32 accumulator would give: per chunk, ``lanes`` interleaved float32 sums (1:
    sequential), the lanes and chunks then added in float64."""
    totals = []
    for row in terms:
        total = 0.0
        for start in range(0, row.size, chunk):
            part = row[start : start + chunk]
            part = np.concatenate([part, np.zeros(-part.size % lanes, np.float32)]).reshape(-1, lanes)
            total += np.cumsum(part, axis=0, dtype=np.float32)[-1].astype(np.float64).sum()
        totals.append(total)
    return np.array(totals)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
@pytest.mark.parametrize("op", MIXED_OPS)
def test_float32_sums_accumulate_in_float64(backend, op):
    """A float32 reduce="sum" is the exact sum of its float32 terms (math.fsum of the elementwise
    results), rounded once: within 2 float32 ulps of the total, where float32 accumulation (emulated
    below, to show that the data can tell) is off by 10 ulps or more. The simulator runs one row of
    300 (two CUDA blocks, one element a thread): there only the block and row sums are exercised."""
    _cuda_or_skip(backend)
    from fastgauss.cpu import CHUNK
    from fastgauss.cuda import MAX_GRID_X, THREADS

    rng = np.random.default_rng(15)
    if backend == "cpu" or SIMULATOR:
        shape = (2, 2 * CHUNK + 7_232) if backend == "cpu" else (1, 300)
        big = np.arange(shape[1]) % CHUNK < 64
    else:
        shape = (1, 64 * THREADS * MAX_GRID_X)
        big = np.arange(shape[1]) < THREADS * MAX_GRID_X
    large = 27.63102 if op == "discretized_gaussian_log_likelihood" else 2048.0
    small = rng.uniform(0.2, 0.45, shape) * float(np.spacing(np.float32(large)))
    args = mixed_magnitude_args(op, shape, np.broadcast_to(big, shape), small, rng)
    terms = call(op, args, backend)
    assert terms.dtype == np.float32 and terms.shape == shape
    exact = np.array([math.fsum(row) for row in terms.astype(np.float64)])
    tolerance = 2 * np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    got = call(op, args, backend, reduce="sum")
    assert got.dtype == np.float32
    np.testing.assert_array_less(np.abs(got - exact), tolerance)
    if backend == "cpu":  # the data can tell: a float32 accumulator on 1, 16 or 64 lanes is far off
        for lanes in (1, 16, 64):
            assert np.all(np.abs(float32_lane_sums(terms, CHUNK, lanes) - exact) >= 10 * tolerance), lanes
    elif not SIMULATOR:  # a float32 per-thread accumulator of the grid-stride loop
        per_thread = np.cumsum(terms[0].reshape(-1, THREADS * MAX_GRID_X), axis=0, dtype=np.float32)[-1]
        assert abs(per_thread.astype(np.float64).sum() - exact[0]) >= 10 * tolerance[0]


# --- NaN, inf, edge shapes -----------------------------------------------------------------------


@pytest.mark.parametrize("op, arity", [("normal_kl", 4), ("normal_logpdf", 3), ("discretized_gaussian_log_likelihood", 3)])
def test_nan_propagates_from_every_argument(backend, op, arity):
    """Argument k holds a NaN at (k, k + 1): exactly those elements, and those samples' reductions, are NaN."""
    args = [np.full((arity + 1, 6), 0.25) for _ in range(arity)]
    for k in range(arity):
        args[k][k, k + 1] = np.nan
    got = call(op, args, backend)
    expected_nan = np.zeros(got.shape, bool)
    expected_nan[np.arange(arity), np.arange(arity) + 1] = True
    np.testing.assert_array_equal(np.isnan(got), expected_nan)
    assert np.isfinite(got[~expected_nan]).all()
    sums = call(op, args, backend, reduce="mean")
    np.testing.assert_array_equal(np.isnan(sums), np.arange(arity + 1) < arity)


def test_nan_is_not_clamped_in_the_discretized_likelihood(backend):
    """max(cdf, 1e-12) must keep NaN: NaN in x or in the scales at the edge bins too."""
    x = np.array([-1.0, 1.0, 0.0, np.nan])
    means = np.array([np.nan, 0.0, 0.0, 0.0])
    log_scales = np.array([0.0, np.nan, np.nan, 0.0])
    got = call("discretized_gaussian_log_likelihood", [x, means, log_scales], backend)
    assert np.isnan(got).all()


@pytest.mark.parametrize("op, arity", [("normal_kl", 4), ("normal_logpdf", 3), ("discretized_gaussian_log_likelihood", 3)])
def test_nan_propagates_into_the_gradients(backend, op, arity):
    """A NaN in argument k at (k, k + 1) makes that element's gradients NaN and no other: the
    discretized likelihood's clamp at 1e-12 passes no gradient below the floor, but NaN is not
    below it (torch.clamp's mask would give 0 there), as in the training objective."""
    args = [np.full((arity + 1, 6), 0.25) for _ in range(arity)]
    for k in range(arity):
        args[k][k, k + 1] = np.nan
    cotangent = np.ones((arity + 1, 6))
    device_args = [to_backend(a, backend) for a in (cotangent, *args)]
    grads = fastgauss.vjp(getattr(fastgauss, op), *device_args, backend=backend)
    # the arguments each gradient depends on (normal_kl: d/dmean = +-(mean1 - mean2) e^-logvar2,
    # d/dlogvar1 = (e^(logvar1 - logvar2) - 1) / 2); in the other two ops, every argument
    depends = {"mean1": (0, 2, 3), "logvar1": (1, 3), "mean2": (0, 2, 3)} if op == "normal_kl" else {}
    assert len(grads) == arity
    for name, grad in grads.items():
        expected_nan = np.zeros((arity + 1, 6), bool)
        for k in depends.get(name, range(arity)):
            expected_nan[k, k + 1] = True
        np.testing.assert_array_equal(np.isnan(to_numpy(grad)), expected_nan, err_msg=name)


def test_infinities_follow_numpy(backend):
    inf = np.inf
    cases = np.array(
        [  # mean1, logvar1, mean2, logvar2
            [0.0, -inf, 0.0, 0.0],  # point mass against N(0, 1): +inf
            [0.0, 0.0, inf, 0.0],  # infinitely far mean: +inf
            [0.0, inf, 0.0, inf],  # inf - inf: nan
            [0.0, 200.0, 0.0, 0.0],  # e^200 overflows float64? no: 7e86, finite
            [0.0, 800.0, 0.0, 0.0],  # overflows: +inf
        ]
    )
    ref = fastgauss.normal_kl(*cases.T, backend="numpy")
    got = call("normal_kl", list(cases.T.copy()), backend)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got[~np.isnan(ref)], ref[~np.isnan(ref)], rtol=1e-13)
    assert list(got[:2]) == [inf, inf] and got[4] == inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_gradients_at_infinite_log_variances_are_the_limits(backend, dtype):
    """d/dlogvar1 = (e^(v1 - v2) - 1) / 2 and d/dlogvar2 = (1 - e^(v1 - v2) - d^2 e^-v2) / 2
    (d = mean1 - mean2 = 0.2) have limits at v = +-inf: -1/2 and 1/2, or +-inf. e^x - 1 taken
    as (e^x - 1 - x) + x was inf - inf = NaN there."""
    inf = np.inf
    logvar1 = np.array([-inf, inf, 0.5, 0.5], dtype)
    logvar2 = np.array([0.2, 0.2, inf, -inf], dtype)
    mean1, mean2 = np.full(4, 0.3, dtype), np.full(4, 0.1, dtype)
    args = [to_backend(a, backend) for a in (np.ones(4, dtype), mean1, logvar1, mean2, logvar2)]
    grads = {k: to_numpy(v) for k, v in fastgauss.vjp(fastgauss.normal_kl, *args, backend=backend).items()}
    assert list(grads["logvar1"]) == [-0.5, inf, -0.5, inf]
    assert list(grads["logvar2"]) == pytest.approx([0.5 - 0.02 * math.exp(-0.2), -inf, 0.5, -inf], rel=1e-6)
    assert list(grads["mean1"][:3]) == pytest.approx([0.2 * math.exp(-0.2)] * 2 + [0.0], rel=1e-6)
    assert grads["mean1"][3] == inf


def test_empty_and_zero_dimensional(backend):
    got = call("normal_logpdf", [np.zeros((0, 3)), 0.0, 0.0], backend)
    assert got.shape == (0, 3)
    assert call("normal_logpdf", [np.zeros((0, 3)), 0.0, 0.0], backend, reduce="sum").shape == (0,)
    sums = call("normal_logpdf", [np.zeros((2, 0)), 0.0, 0.0], backend, reduce="sum")
    means = call("normal_logpdf", [np.zeros((2, 0)), 0.0, 0.0], backend, reduce="mean")
    assert list(sums) == [0.0, 0.0] and np.isnan(means).all()  # as numpy: an empty mean is nan
    scalar = to_numpy(fastgauss.normal_kl(1.0, 0.0, 0.0, 0.0, backend=backend))
    assert scalar.shape == () and scalar.dtype == np.float64 and scalar == 0.5


# --- out=, in place, device arrays --------------------------------------------------------------


def test_out_is_filled_and_returned_in_place_allowed(backend):
    rng = np.random.default_rng(8)
    mean1, logvar1, mean2, logvar2 = (rng.standard_normal((3, 10)) for _ in range(4))
    ref = fastgauss.normal_kl(mean1, logvar1, mean2, logvar2, backend="numpy")
    for target in range(4):  # out may be exactly any one of the inputs
        args = [to_backend(a.copy(), backend) for a in (mean1, logvar1, mean2, logvar2)]
        result = fastgauss.normal_kl(*args, out=args[target], backend=backend)
        assert result is args[target]
        assert_within(to_numpy(result), ref, 16 * EPS64 * kl_terms(mean1, logvar1, mean2, logvar2), np.float64)
    sums = to_backend(np.full(3, np.nan), backend)
    assert fastgauss.normal_kl(*args[:2], 0.0, 0.0, reduce="sum", out=sums, backend=backend) is sums
    ref = fastgauss.normal_kl(mean1, logvar1, 0.0, 0.0, reduce="sum", backend="numpy")
    assert_within(to_numpy(sums), ref, 16 * EPS64 * kl_terms(mean1, logvar1, 0.0, 0.0), np.float64, "sum")


def test_non_contiguous_host_inputs_and_out(backend):
    if backend == "cuda":
        pytest.skip("host layouts only")
    rng = np.random.default_rng(9)
    big = rng.standard_normal((3, 8, 10))
    x = big[:, ::2, ::3]  # trailing axes do not merge
    logvar = np.asfortranarray(rng.standard_normal(x.shape))
    ref = fastgauss.normal_logpdf(np.ascontiguousarray(x), 0.5, np.ascontiguousarray(logvar), backend="numpy")
    out_base = np.full(x.shape + (2,), 7.0)
    out = out_base[..., 0]
    assert fastgauss.normal_logpdf(x, 0.5, logvar, out=out, backend=backend) is out
    np.testing.assert_allclose(out, ref, rtol=1e-14)
    assert np.all(out_base[..., 1] == 7.0)
    sums_base = np.zeros((3, 2))
    assert fastgauss.normal_logpdf(x, 0.5, logvar, reduce="sum", out=sums_base[:, 1], backend=backend) is not None
    np.testing.assert_allclose(sums_base[:, 1], ref.reshape(3, -1).sum(axis=1), rtol=1e-13)
    assert np.all(sums_base[:, 0] == 0)


def test_device_arrays_in_device_arrays_out():
    if not CUDA_USABLE:
        pytest.skip("cuda backend not usable")
    from numba import cuda

    x = cuda.to_device(np.zeros((2, 3), np.float32))
    got = fastgauss.normal_logpdf(x, 0.0, 0.0)  # auto picks cuda
    assert fastgauss._dispatch.is_device_array(got) and not isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_allclose(got.copy_to_host(), -0.5 * math.log(2 * math.pi), rtol=1e-6)
    only_scalars = fastgauss.normal_kl(1.0, 0.0, 0.0, 0.0, backend="cuda")
    assert fastgauss._dispatch.is_device_array(only_scalars) and only_scalars.copy_to_host() == 0.5


def test_cuda_reductions_are_identical_run_to_run_and_match_the_reference():
    if not CUDA_USABLE:
        pytest.skip("cuda backend not usable")
    rng = np.random.default_rng(10)
    args = [rng.standard_normal((2, 300)).astype(np.float32) for _ in range(4)]  # two blocks a row
    first = call("normal_kl", args, "cuda", reduce="sum")
    assert np.array_equal(first, call("normal_kl", args, "cuda", reduce="sum"))
    ref = fastgauss.reference.normal_kl(*args, reduce="sum")
    assert_within(first, ref, 16 * EPS[np.dtype(np.float32)] * kl_terms(*args), np.float32, "sum")


# --- thread-count determinism ----------------------------------------------------------------------

# Reductions over rows that span several chunks (width 3 * 100 * 90 = 27,000 > 16,384) and rows
# narrower than a chunk (several rows per work item), every op, both dtypes, full and per-sample.
DIGEST_SCRIPT = """
import hashlib, numpy as np, numba, fastgauss
rng = np.random.default_rng(11)
digest = hashlib.sha256()
for dtype in (np.float32, np.float64):
    for shape in ((3, 3, 100, 90), (50, 7, 3)):
        a, b, c, d = (rng.standard_normal(shape).astype(dtype) for _ in range(4))
        per_sample = rng.standard_normal((shape[0],) + (1,) * (len(shape) - 1)).astype(dtype)
        for reduce in ("sum", "mean"):
            for result in (
                fastgauss.normal_kl(a, b, c, d, reduce=reduce, backend="cpu"),
                fastgauss.normal_kl(a, per_sample, c, 0.0, reduce=reduce, backend="cpu"),
                fastgauss.normal_logpdf(a, b, per_sample, reduce=reduce, backend="cpu"),
                fastgauss.discretized_gaussian_log_likelihood(np.clip(a, -1, 1), b, per_sample - 3, reduce=reduce, backend="cpu"),
            ):
                digest.update(result.tobytes())
print(numba.get_num_threads(), digest.hexdigest())
"""


def test_reductions_are_bitwise_identical_for_any_thread_count():
    assert_same_digest_for_thread_counts(DIGEST_SCRIPT, ("1", "2", "3"))


# --- errors: raised before anything is written, naming the argument ------------------------------


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(mean2=np.zeros((2, 4))), ValueError, r"shapes do not broadcast together: mean1 \(2, 3\), logvar1 \(2, 3\), mean2 \(2, 4\), logvar2 \(\)"),
        (dict(reduce="max"), ValueError, r"reduce must be None, 'mean' or 'sum'; got 'max'"),
        (dict(reduce=1), ValueError, r"reduce must be None, 'mean' or 'sum'; got 1"),
        (dict(out_shape=(3, 2)), ValueError, r"out has shape \(3, 2\); the result has shape \(2, 3\)"),
        (dict(out_shape=(2, 3), reduce="mean"), ValueError, r"out has shape \(2, 3\); the result has shape \(2,\)"),
        (dict(out_dtype=np.float32), ValueError, r"out has dtype float32; the result has dtype float64"),
        (dict(out_readonly=True), ValueError, r"out is read-only"),
        (dict(mean2=np.zeros((2, 3), np.float16)), TypeError, r"unsupported dtype float16 for mean2"),
        (dict(mean2=np.zeros((2, 3), np.complex128)), TypeError, r"unsupported dtype complex128 for mean2"),
        (dict(logvar2=1j), TypeError, r"unsupported dtype complex for logvar2"),
        (dict(backend="gpu"), ValueError, r"unknown backend 'gpu'"),
    ],
)
def test_bad_input_raises_before_writing(backend, change, exc, match):
    if change.get("out_readonly") and backend == "cuda":
        pytest.skip("host read-only flag has no device counterpart")
    out_host = np.full(change.get("out_shape", (2, 3)), 5.0, change.get("out_dtype", np.float64))
    out_host.flags.writeable = not change.get("out_readonly", False)
    before = out_host.copy()
    out = to_backend(out_host, backend)
    mean1 = to_backend(np.zeros((2, 3)), backend)
    mean2 = change.get("mean2", np.ones((2, 3)))
    kwargs = dict(reduce=change.get("reduce"), out=out, backend=change.get("backend", backend))
    with pytest.raises(exc, match=match):
        fastgauss.normal_kl(mean1, mean1, to_backend(mean2, backend), change.get("logvar2", 0.0), **kwargs)
    np.testing.assert_array_equal(to_numpy(out), before)


@pytest.mark.parametrize(
    "bins, exc, match",
    [(0, ValueError, r"bins must be a positive integer; got 0"), (-3, ValueError, r"got -3"),
     (2.5, TypeError, r"bins must be a positive integer; got float 2.5"), (True, TypeError, r"got bool True"),
     ("255", TypeError, r"got str '255'")],
)
def test_bad_bins(bins, exc, match):
    out = np.full(3, 5.0)
    with pytest.raises(exc, match=match):
        fastgauss.discretized_gaussian_log_likelihood(np.zeros(3), 0.0, 0.0, bins=bins, out=out, backend="cpu")
    assert np.all(out == 5.0)


def test_reduce_needs_a_batch_axis():
    with pytest.raises(ValueError, match=r"reduce='sum' .* need at least one axis; they broadcast to shape \(\)"):
        fastgauss.normal_logpdf(0.0, np.float32(1.0), np.zeros(()), reduce="sum", backend="cpu")


def test_out_overlapping_an_input_is_rejected():
    buffer = np.zeros((2, 8))
    with pytest.raises(ValueError, match="out overlaps x without being the same array"):
        fastgauss.normal_logpdf(buffer[:, :4], 0.0, 0.0, out=buffer[:, 2:6], backend="cpu")
    assert np.all(buffer == 0)


def test_broadcast_helpers():
    from fastgauss import _checks

    assert _checks.broadcast_shape(a=(3, 1, 5), b=(4, 1), c=()) == (3, 4, 5)
    assert _checks.broadcast_kind((), (3, 4, 5)) == ("row", 1)
    assert _checks.broadcast_kind((3, 1, 1), (3, 4, 5)) == ("row", 3)
    assert _checks.broadcast_kind((4, 5), (3, 4, 5)) == ("full", 1)
    assert _checks.broadcast_kind((3, 4, 5), (3, 4, 5)) == ("full", 3)
    assert _checks.broadcast_kind((1, 4, 1), (3, 4, 5)) == ("other", None)
    assert _checks.broadcast_kind((5,), (3, 4, 5)) == ("other", None)
    assert _checks.broadcast_kind((3, 1), (3, 1)) == ("row", 3)


# --- the vectorizable exp and log, portable (selects) and CPU (bit casts) ----------------------------

# What the GPU runs (with its one-rounding fma, as on a GPU), compiled for the CPU.
PORTABLE = _device.compile_for(numba.njit(error_model="numpy"), _kl, overrides={"fma": cpu_fma})


def _cpu_functions():
    from fastgauss.cpu import kl as cpu_kl

    return cpu_kl._d


def _apply(function):
    @numba.njit(error_model="numpy")
    def apply(x, c, out):
        for i in range(x.size):
            out[i] = function(x[i], c)

    def run(x):
        out = np.empty_like(x)
        apply(x, _kl.constants(x.dtype), out)
        return out

    return run


def ulp_error(got, exact, dtype):
    exact = np.asarray(exact, np.float64)
    return np.abs(got.astype(np.float64) - exact) / np.spacing(np.abs(exact).astype(dtype)).astype(np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_within_1_ulp_and_the_same_from_both_sources(dtype):
    rng = np.random.default_rng(12)
    top = 88.7 if dtype == np.float32 else 709.7
    x = np.concatenate([rng.uniform(-top, top, 400_000), rng.uniform(-1, 1, 100_000), [0.0, -0.0, 1e-30, 0.34657, 0.34658]]).astype(dtype)
    portable, cpu = _apply(PORTABLE.exp)(x), _apply(_cpu_functions().exp)(x)
    assert np.array_equal(portable, cpu)  # 2**n is exact either way
    exact = np.exp(x.astype(np.longdouble))
    normal = exact >= np.finfo(dtype).tiny
    assert ulp_error(cpu[normal], exact[normal], dtype).max() <= 1.0  # measured 0.98 (float32) / 1.00 (float64)
    specials = np.array([np.inf, -np.inf, np.nan, top + 2, -top - 40], dtype)
    got = _apply(_cpu_functions().exp)(specials)
    assert got[0] == np.inf and got[1] == 0 and np.isnan(got[2]) and got[3] == np.inf and got[4] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_excess_within_16_ulp(dtype):
    x = np.concatenate([np.random.default_rng(13).uniform(-3, 3, 200_000), np.geomspace(1e-20, 3, 2000), -np.geomspace(1e-20, 3, 2000)]).astype(dtype)
    got = _apply(_cpu_functions().exp_excess)(x)
    assert np.array_equal(got, _apply(PORTABLE.exp_excess)(x))
    xl = x.astype(np.longdouble)
    series = xl**2 / 2 + xl**3 / 6 + xl**4 / 24 + xl**5 / 120 + xl**6 / 720  # exact to < 1e-22 for |x| < 1e-3
    exact = np.where(np.abs(xl) < 1e-3, series, np.expm1(xl) - xl)
    assert ulp_error(got, exact, dtype).max() <= 16  # measured 13.5 (float32) / 15 (float64), near |x| = 0.39


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_unit_within_3_ulp(dtype):
    rng = np.random.default_rng(14)
    x = np.concatenate([np.exp2(-rng.uniform(0, 41, 400_000)), [1.0, 1e-12, 0.5, 0.70710677, 0.70710683]]).astype(dtype)
    got = _apply(_cpu_functions().log_unit)(x)
    portable = _apply(PORTABLE.log_unit)(x)
    assert ulp_error(got, np.log(x.astype(np.longdouble)), dtype).max() <= 3  # measured 2.3 / 2.0
    assert ulp_error(portable, np.log(x.astype(np.longdouble)), dtype).max() <= 3
    assert got[-5] == 0.0 and np.isnan(_apply(_cpu_functions().log_unit)(np.array([np.nan], dtype))[0])
