"""Gaussian algebra: mvn_affine, mvn_marginal, mvn_condition, gaussian_product, kalman_update,
normal_product.

Closed forms in float64 (1e-12, written independently of the kernels: explicit inverses,
the precision form, scipy's logpdf), Monte Carlo (samples of the joint drawn with mvn_sample,
conditioned empirically by least-squares regression), numerical integration of the
products in 1-D and 2-D, identities, every error case, and parity of cpu and cuda with the
NumPy reference (CUDA under the simulator, on a handful of small matrices).
"""

import numpy as np
import pytest
from scipy import integrate, stats

import fastgauss
from conftest import CUDA_USABLE, to_backend, to_numpy
from test_mvn import indefinite_at

CLOSED = dict(rtol=1e-12, atol=1e-12)  # float64, well-conditioned matrices of order <= 5
LOG_2PI = np.log(2 * np.pi)


def spd(rng, batch, d, jitter=0.5):
    """Well-conditioned SPD matrices (condition number below ~20)."""
    a = rng.standard_normal(tuple(batch) + (d, d))
    return a @ np.swapaxes(a, -1, -2) / d + jitter * np.eye(d)


def on(backend, *arrays):
    return [to_backend(np.ascontiguousarray(a), backend) if isinstance(a, np.ndarray) else a for a in arrays]


def host(results):
    return [to_numpy(r) for r in results]


def compiled():
    return ["cpu", "cuda"] if CUDA_USABLE else ["cpu"]


def assert_symmetric(cov):
    np.testing.assert_array_equal(cov, np.swapaxes(cov, -1, -2))


# --- closed forms (float64, 1e-12) -----------------------------------------------------------


def test_affine_closed_form_and_broadcasting(backend):
    rng = np.random.default_rng(1)
    mean, cov = rng.standard_normal((2, 1, 3)), spd(rng, (3,), 3)  # batch (2, 3) from (2, 1) and (3,)
    A, b = rng.standard_normal((4, 3)), rng.standard_normal((2, 3, 4))
    m, c = host(fastgauss.mvn_affine(*on(backend, mean, cov, A, b), backend=backend))
    assert m.shape == (2, 3, 4) and c.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(m, np.einsum("ij,...j->...i", A, mean) + b, **CLOSED)
    np.testing.assert_allclose(c, np.broadcast_to(np.einsum("ij,cjk,lk->cil", A, cov, A), c.shape), **CLOSED)
    assert_symmetric(c)
    m, c = host(fastgauss.mvn_affine(*on(backend, mean[0, 0], cov[0], A[:2]), backend=backend))  # b=None, k < d
    np.testing.assert_allclose(m, A[:2] @ mean[0, 0], **CLOSED)
    np.testing.assert_allclose(c, A[:2] @ cov[0] @ A[:2].T, **CLOSED)


def test_marginal_is_the_block_in_the_order_given(backend):
    rng = np.random.default_rng(2)
    mean, cov = rng.standard_normal((3, 5)), spd(rng, (3,), 5)
    m, c = host(fastgauss.mvn_marginal(*on(backend, mean, cov), [4, -5, 2], backend=backend))
    idx = [4, 0, 2]
    np.testing.assert_array_equal(m, mean[:, idx])
    np.testing.assert_array_equal(c, cov[:, idx][:, :, idx])
    m, c = host(fastgauss.mvn_marginal(*on(backend, mean, cov), np.int32(3), backend=backend))  # one coordinate
    np.testing.assert_array_equal(c[:, 0, 0], cov[:, 3, 3])


def conditional_closed_form(mean, cov, index, value):
    other = [i for i in range(mean.shape[-1]) if i not in index]
    s12 = cov[..., other, :][..., :, index]
    gain = s12 @ np.linalg.inv(cov[..., index, :][..., :, index])
    m = mean[..., other] + (gain @ (value - mean[..., index])[..., None])[..., 0]
    c = cov[..., other, :][..., :, other] - gain @ np.swapaxes(s12, -1, -2)
    return m, c


def test_condition_closed_form(backend):
    rng = np.random.default_rng(3)
    mean, cov = rng.standard_normal((4, 5)), spd(rng, (4,), 5)
    index, value = [3, 0], rng.standard_normal((4, 2))
    m, c = host(fastgauss.mvn_condition(*on(backend, mean, cov), index, *on(backend, value), backend=backend))
    expected_m, expected_c = conditional_closed_form(mean, cov, index, value)
    np.testing.assert_allclose(m, expected_m, **CLOSED)
    np.testing.assert_allclose(c, expected_c, **CLOSED)
    assert_symmetric(c)
    # one covariance, a batch of values (the conditional covariance does not depend on them)
    m, c = host(fastgauss.mvn_condition(*on(backend, mean[0], cov[0]), [1], *on(backend, value[:, :1]), backend=backend))
    expected_m, expected_c = conditional_closed_form(mean[0], cov[0], [1], value[:, :1])
    np.testing.assert_allclose(m, expected_m, **CLOSED)
    np.testing.assert_allclose(c, np.broadcast_to(expected_c, (4, 4, 4)), **CLOSED)


def product_closed_form(mean1, cov1, mean2, cov2):
    """The precision form: (S1^-1 + S2^-1)^-1, and scipy's log N(mean1; mean2, S1 + S2)."""
    p1, p2 = np.linalg.inv(cov1), np.linalg.inv(cov2)
    cov = np.linalg.inv(p1 + p2)
    mean = (cov @ ((p1 @ mean1[..., None]) + (p2 @ mean2[..., None])))[..., 0]
    log_scale = np.array([stats.multivariate_normal(m2, c1 + c2).logpdf(m1) for m1, c1, m2, c2 in zip(mean1, cov1, mean2, cov2)])
    return mean, cov, log_scale


def test_gaussian_product_closed_form(backend):
    rng = np.random.default_rng(4)
    mean1, cov1, mean2, cov2 = rng.standard_normal((3, 4)), spd(rng, (3,), 4), rng.standard_normal((3, 4)), spd(rng, (3,), 4)
    m, c, s = host(fastgauss.gaussian_product(*on(backend, mean1, cov1, mean2, cov2), backend=backend))
    expected = product_closed_form(mean1, cov1, mean2, cov2)
    for got, want in zip((m, c, s), expected):
        np.testing.assert_allclose(got, want, **CLOSED)
    assert_symmetric(c)


def kalman_closed_form(mean, cov, H, R, y):
    """The textbook update: K = P H^T S^-1 (explicit inverse), (I - K H) P, scipy's log N(y; H mean, S)."""
    S = H @ cov @ H.T + R
    K = cov @ H.T @ np.linalg.inv(S)
    m = mean + K @ (y - H @ mean)
    c = (np.eye(len(mean)) - K @ H) @ cov
    return m, c, stats.multivariate_normal(H @ mean, S).logpdf(y)


def test_kalman_update_closed_form(backend):
    rng = np.random.default_rng(5)
    tracks, d, k = 4, 4, 2
    mean, cov = rng.standard_normal((tracks, d)), spd(rng, (tracks,), d)
    H, R, y = rng.standard_normal((k, d)), spd(rng, (), k), rng.standard_normal((tracks, k))
    m, c, ll = host(fastgauss.kalman_update(*on(backend, mean, cov, H, R, y), backend=backend))
    for t in range(tracks):
        for got, want in zip((m[t], c[t], ll[t]), kalman_closed_form(mean[t], cov[t], H, R, y[t])):
            np.testing.assert_allclose(got, want, **CLOSED)
    assert_symmetric(c)


def test_normal_product_closed_form(backend):
    rng = np.random.default_rng(6)
    mean1, logvar1 = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    mean2, logvar2 = rng.standard_normal((2, 1, 1)), rng.standard_normal((2, 1, 1))  # per sample
    m, v, s = host(fastgauss.normal_product(*on(backend, mean1, logvar1, mean2, logvar2), backend=backend))
    v1, v2 = np.exp(logvar1), np.exp(logvar2)
    np.testing.assert_allclose(m, (mean1 * v2 + mean2 * v1) / (v1 + v2), **CLOSED)
    np.testing.assert_allclose(v, np.log(v1 * v2 / (v1 + v2)), **CLOSED)
    np.testing.assert_allclose(s, stats.norm(mean2, np.sqrt(v1 + v2)).logpdf(mean1), **CLOSED)
    m, v, s = host(fastgauss.normal_product(*on(backend, mean1, logvar1), 0.5, -1.0, backend=backend))  # Python scalars
    np.testing.assert_allclose(v, -np.logaddexp(-logvar1, 1.0), **CLOSED)


# --- Monte Carlo: samples of the joint from mvn_sample, conditioned by regression ------------------

N_MC = 200_000


def regress(x, y):
    """Least squares x = a + B y + residual over samples: (a, B, residual covariance)."""
    design = np.column_stack([np.ones(len(y)), y])
    coef, *_ = np.linalg.lstsq(design, x, rcond=None)
    residual = x - design @ coef
    return coef[0], coef[1:].T, residual.T @ residual / (len(y) - design.shape[1])


def within_standard_errors(estimate, value, cov, n, z=5.0):
    """|estimate - value| within z standard errors of a sample covariance entry of n draws
    (var = (S_ii S_jj + S_ij^2) / n for Gaussian data)."""
    diag = np.diagonal(cov)
    se = np.sqrt((np.outer(diag, diag) + cov**2) / n)
    assert np.all(np.abs(estimate - value) <= z * se), (estimate, value, se)


def test_condition_and_affine_against_monte_carlo():
    """Tolerances: 5 standard errors of each estimate (means: sqrt(var / n) inflated by the
    leverage of the conditioning value; covariance entries: sqrt((S_ii S_jj + S_ij^2) / n)).
    Samples from mvn_sample's NumPy reference (the same stream as the kernels, no compilation)."""
    rng = np.random.default_rng(7)
    mean, cov = rng.standard_normal(4), spd(rng, (), 4)
    x = fastgauss.mvn_sample(mean, cov, size=N_MC, rng=8, backend="numpy")
    index, other = [1, 3], [0, 2]
    value = mean[index] + np.array([0.7, -0.4])
    m, c = fastgauss.mvn_condition(mean, cov, index, value, backend="cpu")
    a, B, residual_cov = regress(x[:, other], x[:, index])
    empirical_mean = a + B @ value
    leverage = 1 + (value - mean[index]) @ np.linalg.solve(cov[np.ix_(index, index)], value - mean[index])
    assert np.all(np.abs(empirical_mean - m) <= 5 * np.sqrt(np.diagonal(c) * leverage / N_MC))
    within_standard_errors(residual_cov, c, c, N_MC)
    A, b = rng.standard_normal((3, 4)), rng.standard_normal(3)
    m, c = fastgauss.mvn_affine(mean, cov, A, b, backend="cpu")
    y = x @ A.T + b
    assert np.all(np.abs(y.mean(axis=0) - m) <= 5 * np.sqrt(np.diagonal(c) / N_MC))
    within_standard_errors(np.cov(y.T), c, c, N_MC)


def test_kalman_update_against_monte_carlo():
    """The posterior of x given y, from samples of the joint: (x, v) drawn together from
    N((mean, 0), blockdiag(P, R)) by mvn_sample, y = H x + v, x regressed on y."""
    rng = np.random.default_rng(9)
    d, k = 2, 2
    mean, cov = rng.standard_normal(d), spd(rng, (), d)
    H, R = rng.standard_normal((k, d)), spd(rng, (), k, jitter=0.3)
    joint_cov = np.block([[cov, np.zeros((d, k))], [np.zeros((k, d)), R]])
    xv = fastgauss.mvn_sample(np.concatenate([mean, np.zeros(k)]), joint_cov, size=N_MC, rng=10, backend="numpy")
    x, y = xv[:, :d], xv[:, :d] @ H.T + xv[:, d:]
    y0 = H @ mean + np.array([0.5, -0.8])
    m, c, ll = fastgauss.kalman_update(mean, cov, H, R, y0, backend="cpu")
    a, B, residual_cov = regress(x, y)
    S = np.cov(y.T)
    leverage = 1 + (y0 - y.mean(axis=0)) @ np.linalg.solve(S, y0 - y.mean(axis=0))
    assert np.all(np.abs(a + B @ y0 - m) <= 5 * np.sqrt(np.diagonal(c) * leverage / N_MC))
    within_standard_errors(residual_cov, c, c, N_MC)
    # the log-likelihood is the density of the simulated y at y0: against a Gaussian fitted to them
    # (its error is dominated by the mean and covariance estimates: a few 1e-3 here, asserted 0.02)
    assert abs(ll - stats.multivariate_normal(y.mean(axis=0), S).logpdf(y0)) < 0.02


# --- numerical integration of the products -------------------------------------------------------


def test_products_against_numerical_integration_1d():
    """int N(x; m1, s1) N(x; m2, s2) dx = e^log_scale, and the normalized product's mean and variance,
    by scipy.integrate.quad (absolute error ~1e-12)."""
    m1, v1, m2, v2 = 0.3, 0.5, -1.1, 2.0
    f = lambda x: stats.norm.pdf(x, m1, np.sqrt(v1)) * stats.norm.pdf(x, m2, np.sqrt(v2))  # noqa: E731
    z = integrate.quad(f, -30, 30, epsabs=1e-14, epsrel=1e-13)[0]
    mean = integrate.quad(lambda x: x * f(x), -30, 30, epsabs=1e-14, epsrel=1e-13)[0] / z
    var = integrate.quad(lambda x: (x - mean) ** 2 * f(x), -30, 30, epsabs=1e-14, epsrel=1e-13)[0] / z
    for backend in ["numpy"] + compiled():
        m, c, s = host(fastgauss.gaussian_product(*on(backend, np.array([m1]), np.array([[v1]]), np.array([m2]), np.array([[v2]])), backend=backend))
        np.testing.assert_allclose([np.exp(s), m[0], c[0, 0]], [z, mean, var], rtol=1e-9)
        pair = [np.full((2, 2), a) for a in (m1, np.log(v1), m2, np.log(v2))]
        m, v, s = host(fastgauss.normal_product(*on(backend, *pair), backend=backend))
        np.testing.assert_allclose([np.exp(s), m, np.exp(v)], np.broadcast_to([[z], [mean], [var]], (3, 4)).reshape(3, 2, 2), rtol=1e-9)


def test_gaussian_product_against_numerical_integration_2d():
    """The same in 2-D with correlated covariances, on a grid of 601^2 points over +-9 sd (Simpson's
    rule: errors far below the 1e-8 asserted)."""
    rng = np.random.default_rng(12)
    mean1, mean2 = np.array([0.2, -0.3]), np.array([-0.5, 0.4])
    cov1, cov2 = spd(rng, (), 2), spd(rng, (), 2)
    grid = np.linspace(-9, 9, 601)
    X, Y = np.meshgrid(grid, grid, indexing="ij")
    points = np.stack([X, Y], axis=-1)
    f = stats.multivariate_normal(mean1, cov1).pdf(points) * stats.multivariate_normal(mean2, cov2).pdf(points)

    def integral(values):
        return integrate.simpson(integrate.simpson(values, x=grid, axis=1), x=grid)

    z = integral(f)
    mean = np.array([integral(X * f), integral(Y * f)]) / z
    dx, dy = X - mean[0], Y - mean[1]
    cov = np.array([[integral(dx * dx * f), integral(dx * dy * f)], [integral(dx * dy * f), integral(dy * dy * f)]]) / z
    m, c, s = fastgauss.gaussian_product(mean1, cov1, mean2, cov2, backend="cpu")
    np.testing.assert_allclose(np.exp(s), z, rtol=1e-8)
    np.testing.assert_allclose(m, mean, atol=1e-8)
    np.testing.assert_allclose(c, cov, atol=1e-8)


# --- identities ----------------------------------------------------------------------------------


def test_conditioning_then_marginalizing_commutes(backend):
    """Condition on x[I] then keep coordinates J == keep J and I, then condition on x[I]."""
    rng = np.random.default_rng(13)
    mean, cov = rng.standard_normal((2, 5)), spd(rng, (2,), 5)
    value = rng.standard_normal((2, 2))
    mean_b, cov_b, value_b = on(backend, mean, cov, value)
    m, c = fastgauss.mvn_condition(mean_b, cov_b, [4, 1], value_b, backend=backend)  # remaining: 0, 2, 3
    first = host(fastgauss.mvn_marginal(m, c, [2, 0], backend=backend))  # coordinates 3, 0
    m, c = fastgauss.mvn_marginal(mean_b, cov_b, [3, 0, 4, 1], backend=backend)
    second = host(fastgauss.mvn_condition(m, c, [2, 3], value_b, backend=backend))  # remaining: 3, 0 in order
    for a, b in zip(first, second):
        np.testing.assert_allclose(a, b, **CLOSED)


def test_product_of_a_gaussian_with_itself(backend):
    """N(x; m, S)^2 = N(m; m, 2S) N(x; m, S / 2); and the product commutes."""
    rng = np.random.default_rng(14)
    mean, cov = rng.standard_normal((3, 4)), spd(rng, (3,), 4)
    m, c, s = host(fastgauss.gaussian_product(*on(backend, mean, cov, mean, cov), backend=backend))
    np.testing.assert_allclose(m, mean, **CLOSED)
    np.testing.assert_allclose(c, cov / 2, **CLOSED)
    np.testing.assert_allclose(s, -0.5 * (4 * LOG_2PI + np.linalg.slogdet(2 * cov)[1]), **CLOSED)
    mean2, cov2 = rng.standard_normal(4), spd(rng, (), 4)
    forward = host(fastgauss.gaussian_product(*on(backend, mean, cov, mean2, cov2), backend=backend))
    backward = host(fastgauss.gaussian_product(*on(backend, mean2, cov2, mean, cov), backend=backend))
    for a, b in zip(forward, backward):
        np.testing.assert_allclose(a, b, **CLOSED)


def test_kalman_update_identities(backend):
    """R -> infinity leaves the prior unchanged; with H = I the update is the product of the prior
    and N(y, R), and its log-likelihood the product's log-scale; marginal and affine agree."""
    rng = np.random.default_rng(15)
    mean, cov, H = rng.standard_normal((2, 3)), spd(rng, (2,), 3), rng.standard_normal((2, 3))
    y = rng.standard_normal((2, 2))
    m, c, ll = host(fastgauss.kalman_update(*on(backend, mean, cov, H, 1e30 * np.eye(2), y), backend=backend))
    np.testing.assert_allclose(m, mean, **CLOSED)
    np.testing.assert_allclose(c, cov, **CLOSED)
    y3, R = rng.standard_normal((2, 3)), spd(rng, (2,), 3)
    update = host(fastgauss.kalman_update(*on(backend, mean, cov, np.eye(3), R, y3), backend=backend))
    product = host(fastgauss.gaussian_product(*on(backend, mean, cov, y3, R), backend=backend))
    for a, b in zip(update, product):
        np.testing.assert_allclose(a, b, **CLOSED)
    selection = np.eye(3)[[2, 0]]
    affine = host(fastgauss.mvn_affine(*on(backend, mean, cov, selection), backend=backend))
    marginal = host(fastgauss.mvn_marginal(*on(backend, mean, cov), [2, 0], backend=backend))
    for a, b in zip(affine, marginal):
        np.testing.assert_allclose(a, b, **CLOSED)


# --- stability --------------------------------------------------------------------------------


def test_gaussian_product_when_one_covariance_is_much_smaller():
    """cov1 ~ 1e6, cov2 ~ 1e-6: the product is ~cov2, computed without cancellation (1e-12 of
    |cov2|), where the textbook cov1 - cov1 (cov1 + cov2)^-1 cov1 keeps only ~4 digits; a singular
    cov1 works (only cov1 + cov2 is factored)."""
    rng = np.random.default_rng(16)
    cov1, cov2 = 1e6 * spd(rng, (), 3), 1e-6 * spd(rng, (), 3)
    mean1, mean2 = rng.standard_normal(3), rng.standard_normal(3)
    expected = product_closed_form(mean1[None], cov1[None], mean2[None], cov2[None])  # accurate here: both invertible
    textbook = cov1 - cov1 @ np.linalg.solve(cov1 + cov2, cov1)
    assert np.abs(textbook - expected[1][0]).max() > 1e-5 * np.abs(cov2).max()  # the case is hard
    for backend in ["numpy"] + compiled():
        m, c, s = host(fastgauss.gaussian_product(*on(backend, mean1, cov1, mean2, cov2), backend=backend))
        np.testing.assert_allclose(c, expected[1][0], rtol=0, atol=1e-12 * np.abs(cov2).max())
        np.testing.assert_allclose(m, expected[0][0], **CLOSED)
        np.testing.assert_allclose(s, expected[2][0], **CLOSED)
    # cov1 singular: x0 known exactly; the product keeps x0 = mean1[0] with zero variance
    singular = np.diag([0.0, 1.0])
    m, c, _ = fastgauss.gaussian_product(np.array([1.0, 2.0]), singular, np.array([3.0, 4.0]), np.eye(2), backend="cpu")
    np.testing.assert_allclose(m, [1.0, 3.0], **CLOSED)
    np.testing.assert_allclose(c, np.diag([0.0, 0.5]), **CLOSED)


def test_kalman_update_stays_symmetric_positive_definite_in_float32(backend):
    """Precise measurements (R ~ 1e-3) of a vague prior (P ~ 1e5): the float32 result is exactly
    symmetric, positive definite and within 1e-7 of the float64 update (relative to its largest
    entry), where the short form (I - K H) P in float32 is off by more than the result itself
    and has a negative eigenvalue."""
    rng = np.random.default_rng(17)
    d = 3
    cov = (1e5 * spd(rng, (3,), d)).astype(np.float32)
    mean = rng.standard_normal((3, d)).astype(np.float32)
    H = np.eye(d, dtype=np.float32)
    R = (1e-3 * spd(rng, (), d)).astype(np.float32)
    y = rng.standard_normal((3, d)).astype(np.float32)
    m, c, ll = host(fastgauss.kalman_update(*on(backend, mean, cov, H, R, y), backend=backend))
    assert m.dtype == c.dtype == ll.dtype == np.float32
    assert_symmetric(c)
    assert np.all(np.linalg.eigvalsh(c.astype(np.float64)) > 0)
    exact = fastgauss.kalman_update(*(a.astype(np.float64) for a in (mean, cov, H, R, y)), backend="numpy")
    scale = np.abs(exact[1]).max()
    np.testing.assert_allclose(c, exact[1], rtol=0, atol=1e-7 * scale)
    S = H @ cov @ H.T + R
    short = (np.eye(d, dtype=np.float32) - cov @ H.T @ np.linalg.inv(S) @ H) @ cov  # float32 throughout
    assert np.abs(short - exact[1]).max() > scale
    assert np.linalg.eigvalsh(0.5 * (short + np.swapaxes(short, -1, -2)).astype(np.float64)).min() < 0


def test_normal_product_extreme_log_variances(backend):
    """Log-variances +-60 (e^60 overflows float32): the compiled backends stay finite in float32 and
    match the float64 closed form; NaN propagates from every argument; a flat factor (+inf) is ignored."""
    lv1 = np.array([-60.0, 60.0, 0.0, 3.0, 0.0, 0.0, 0.0, np.inf])
    lv2 = np.array([60.0, -60.0, 0.0, -3.0, np.nan, 0.0, 0.0, 1.0])
    m1 = np.array([1.0, 2.0, 3.0, 4.0, 0.0, np.nan, 0.0, 5.0])
    m2 = np.array([-1.0, -2.0, 3.0, -4.0, 0.0, 0.0, np.nan, 6.0])
    args = [a.reshape(2, 4) for a in (m1, lv1, m2, lv2)]  # 2-D: the specialization of the other tests
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 1e-6)):
        m, v, s = host(fastgauss.normal_product(*on(backend, *(a.astype(dtype) for a in args)), backend=backend))
        expected = [e.reshape(-1) for e in fastgauss.normal_product(*args, backend="numpy")]
        m, v, s = m.reshape(-1), v.reshape(-1), s.reshape(-1)
        for got, want in zip((m, v, s), expected):
            assert got.dtype == dtype
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_allclose(got[:4], want[:4], rtol=rtol, atol=rtol)
        np.testing.assert_array_equal(np.isnan(m), [False] * 4 + [True] * 3 + [False])
        assert m[7] == 6.0 and v[7] == 1.0 and s[7] == -np.inf


# --- parity, dtypes, shapes --------------------------------------------------------------------


def algebra_calls(rng, dtype):
    mean, cov = rng.standard_normal((3, 4)).astype(dtype), spd(rng, (3,), 4).astype(dtype)
    mean2, cov2 = rng.standard_normal((1, 4)).astype(dtype), spd(rng, (1,), 4).astype(dtype)
    A, b = rng.standard_normal((3, 2, 4)).astype(dtype), rng.standard_normal(2).astype(dtype)
    H, R, y = rng.standard_normal((2, 4)).astype(dtype), spd(rng, (3,), 2).astype(dtype), rng.standard_normal((3, 2)).astype(dtype)
    value = rng.standard_normal((3, 2)).astype(dtype)
    images = [rng.standard_normal((2, 3, 5)).astype(dtype) for _ in range(4)]
    return [
        ("mvn_affine", (mean, cov, A, b)),
        ("mvn_marginal", (mean, cov, [3, 1])),
        ("mvn_condition", (mean, cov, [2, 0], value)),
        ("gaussian_product", (mean, cov, mean2, cov2)),
        ("kalman_update", (mean, cov, H, R, y)),
        ("normal_product", tuple(images)),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_backends_match_the_reference(dtype):
    """Every op on cpu and cuda against the NumPy reference: the float64 computation rounded once
    (2 float32 ulp; 1e-13 for float64). normal_product's float32 math runs in float32 (1e-6)."""
    for op, args in algebra_calls(np.random.default_rng(18), dtype):
        function = getattr(fastgauss, op)
        expected = function(*args, backend="numpy")
        for backend in compiled():
            got = host(function(*on(backend, *args), backend=backend))
            for g, e in zip(got, expected):
                assert g.dtype == e.dtype == dtype and g.shape == e.shape, op
                tol = {np.float32: 1e-6 if op == "normal_product" else 2.5e-7, np.float64: 1e-13}[dtype]
                np.testing.assert_allclose(g, e, rtol=tol, atol=tol * max(1.0, np.abs(e).max()), err_msg=f"{op} {backend}")


def test_dtype_rules_lower_triangle_and_empty_shapes(backend):
    rng = np.random.default_rng(19)
    mean, cov = rng.standard_normal((2, 3)), spd(rng, (2,), 3)
    m, c = host(fastgauss.mvn_affine(*on(backend, mean.astype(np.float32), cov.astype(np.float32), np.eye(3, dtype=np.int64)), backend=backend))
    assert m.dtype == c.dtype == np.float64  # NumPy's result_type: float32 with int64 is float64
    np.testing.assert_allclose(c, cov.astype(np.float32), **CLOSED)
    m, c = host(fastgauss.mvn_marginal(*on(backend, np.arange(3), np.eye(3, dtype=np.int32)), [0], backend=backend))
    assert m.dtype == c.dtype == np.float64 and m[0, ] == 0.0 and c[0, 0] == 1.0
    # only the lower triangle of the covariances is read
    garbage = np.tril(cov) + np.triu(np.full_like(cov, np.nan), 1)
    for op, args in [("mvn_condition", (mean, garbage, [1], mean[:, :1])), ("gaussian_product", (mean, garbage, mean, garbage))]:
        clean = getattr(fastgauss, op)(*(cov if a is garbage else a for a in args), backend="numpy")
        got = host(getattr(fastgauss, op)(*on(backend, *args), backend=backend))
        for g, e in zip(got, clean):
            np.testing.assert_allclose(g, e, **CLOSED)
    # conditioning on nothing is the identity; on everything leaves a 0-dimensional Gaussian
    m, c = host(fastgauss.mvn_condition(*on(backend, mean, cov), [], *on(backend, np.zeros((2, 0))), backend=backend))
    np.testing.assert_allclose(m, mean, **CLOSED)
    np.testing.assert_allclose(c, cov, **CLOSED)
    m, c = host(fastgauss.mvn_condition(*on(backend, mean, cov), [0, 1, 2], *on(backend, mean), backend=backend))
    assert m.shape == (2, 0) and c.shape == (2, 0, 0)
    m, c, ll = host(fastgauss.kalman_update(*on(backend, np.zeros((0, 3)), cov[0], np.ones((1, 3)), np.eye(1), np.zeros((0, 1))), backend=backend))
    assert m.shape == (0, 3) and c.shape == (0, 3, 3) and ll.shape == (0,)


# --- errors -------------------------------------------------------------------------------------


def test_not_positive_definite_names_the_batch_index(backend):
    rng = np.random.default_rng(20)
    mean, cov = rng.standard_normal((4, 3)), spd(rng, (4,), 3)
    # mvn_condition: Sigma_22 = cov[[2, 0]][:, [2, 0]] of matrix 2 fails at its second minor
    bad = cov.copy()
    bad[2, 0, 0] = bad[2, 2, 0] ** 2 / bad[2, 2, 2] - 0.1
    with pytest.raises(np.linalg.LinAlgError, match=r"cov matrix at batch index \(2,\): its block Sigma_22 = cov\[index, index\] is not positive definite \(leading minor of order 2\)"):
        fastgauss.mvn_condition(*on(backend, mean, bad), [2, 0], *on(backend, mean[:, :2]), backend=backend)
    # gaussian_product: cov1 + cov2 of batch element (1, 2) fails at minor 3
    cov1 = np.broadcast_to(spd(rng, (3,), 3), (2, 3, 3, 3)).copy()
    cov2 = np.zeros((2, 3, 3, 3))
    indefinite_at(cov1, (1, 2), 3)
    with pytest.raises(np.linalg.LinAlgError, match=r"cov1 \+ cov2 matrix at batch index \(1, 2\) is not positive definite \(leading minor of order 3\)"):
        fastgauss.gaussian_product(*on(backend, np.zeros(3), cov1, np.zeros(3), cov2), backend=backend)
    # kalman_update: S = H cov H^T + R of track 3 fails at minor 1 (R = -1, H = 0 there)
    H, R = np.ones((4, 1, 3)), np.ones((4, 1, 1))
    H[3], R[3] = 0.0, -1.0
    with pytest.raises(np.linalg.LinAlgError, match=r"the innovation covariance H cov H\^T \+ R matrix at batch index \(3,\) is not positive definite \(leading minor of order 1\)"):
        fastgauss.kalman_update(*on(backend, mean, cov, H, R, np.zeros((4, 1))), backend=backend)
    nan = cov.copy()
    nan[1, 1, 0] = np.nan
    with pytest.raises(np.linalg.LinAlgError, match=r"batch index \(1,\).*order 2\)"):
        fastgauss.mvn_condition(*on(backend, mean, nan), [0, 1], *on(backend, mean[:, :2]), backend=backend)


def test_argument_errors():
    rng = np.random.default_rng(21)
    mean, cov = rng.standard_normal((2, 3)), spd(rng, (2,), 3)
    raises = [
        (ValueError, r"A must have shape \(\.\.\., k, 3\)", fastgauss.mvn_affine, (mean, cov, np.ones((2, 2)))),
        (ValueError, r"A must have shape", fastgauss.mvn_affine, (mean, cov, np.ones(3))),
        (ValueError, r"b must have shape \(\.\.\., 2\) \(d = 2 from A\)", fastgauss.mvn_affine, (mean, cov, np.ones((2, 3)), np.ones(3))),
        (ValueError, r"the batch shapes of mean \(2,\), cov \(2,\), A \(3,\) do not broadcast", fastgauss.mvn_affine, (mean, cov, np.ones((3, 1, 3)))),
        (ValueError, r"cov must have shape \(\.\.\., 3, 3\)", fastgauss.mvn_marginal, (mean, cov[:, :2, :2], [0])),
        (ValueError, r"mean must have shape \(\.\.\., d\)", fastgauss.mvn_marginal, (np.float64(1.0), cov, [0])),
        (ValueError, r"index must be in \[-3, 3\) \(d = 3 from mean\); index\[1\] = 3", fastgauss.mvn_marginal, (mean, cov, [0, 3])),
        (ValueError, r"index must not repeat a coordinate", fastgauss.mvn_marginal, (mean, cov, [0, -3])),
        (ValueError, r"index must be an int or a 1-D sequence", fastgauss.mvn_marginal, (mean, cov, [[0]])),
        (TypeError, r"index must be an int or a sequence of ints", fastgauss.mvn_marginal, (mean, cov, [0.0])),
        (TypeError, r"got bool", fastgauss.mvn_marginal, (mean, cov, True)),
        (ValueError, r"value must have shape \(\.\.\., 2\) \(d = 2 from index\)", fastgauss.mvn_condition, (mean, cov, [0, 1], mean)),
        (ValueError, r"the batch shapes of mean \(2,\), cov \(2,\), value \(3,\)", fastgauss.mvn_condition, (mean, cov, [0], np.ones((3, 1)))),
        (ValueError, r"mean2 must have shape \(\.\.\., 3\) \(d = 3 from mean1\)", fastgauss.gaussian_product, (mean, cov, mean[:, :2], cov)),
        (ValueError, r"cov2 must have shape \(\.\.\., 3, 3\)", fastgauss.gaussian_product, (mean, cov, mean, cov[:, :2])),
        (ValueError, r"H must have shape \(\.\.\., 2, 3\) \(k = 2 from y, d = 3 from mean\)", fastgauss.kalman_update, (mean, cov, np.ones((3, 3)), np.eye(2), np.ones(2))),
        (ValueError, r"R must have shape \(\.\.\., 2, 2\) \(d = 2 from y\)", fastgauss.kalman_update, (mean, cov, np.ones((2, 3)), np.eye(3), np.ones(2))),
        (ValueError, r"y must have shape \(\.\.\., d\)", fastgauss.kalman_update, (mean, cov, np.ones((2, 3)), np.eye(2), 1.0)),
        (TypeError, r"unsupported dtype complex128 for cov", fastgauss.mvn_affine, (mean, cov.astype(complex), np.eye(3))),
        (TypeError, r"unsupported dtype float16 for R", fastgauss.kalman_update, (mean, cov, np.ones((1, 3)), np.eye(1, dtype=np.float16), np.ones(1))),
        (ValueError, r"shapes do not broadcast together: mean1 \(2, 3\)", fastgauss.normal_product, (mean, mean, np.ones(2), 0.0)),
        (TypeError, r"unsupported dtype complex for logvar2", fastgauss.normal_product, (mean, mean, mean, 1j)),
        (ValueError, r"unknown backend 'gpu'", fastgauss.kalman_update, (mean, cov, np.ones((1, 3)), np.eye(1), np.ones(1))),
    ]
    for error, message, function, args in raises:
        kwargs = {"backend": "gpu"} if "unknown backend" in message else {"backend": "cpu"}
        with pytest.raises(error, match=message):
            function(*args, **kwargs)
    if CUDA_USABLE:
        from numba import cuda

        with pytest.raises(TypeError, match="cannot mix host and CUDA arrays"):
            fastgauss.kalman_update(cuda.to_device(mean), cov, np.ones((1, 3)), np.eye(1), np.ones(1))
        with pytest.raises(TypeError, match="index must be a host int or sequence"):
            fastgauss.mvn_marginal(*on("cuda", mean, cov), cuda.to_device(np.array([0])), backend="cuda")


def test_normal_product_out(backend):
    """out=: written in place (out[0] may be mean1 itself), non-contiguous on the host, validated."""
    rng = np.random.default_rng(22)
    args = [rng.standard_normal((2, 6)) for _ in range(4)]
    expected = fastgauss.normal_product(*args, backend="numpy")
    inputs = on(backend, *args)
    outs = (inputs[0], *on(backend, np.empty((2, 6)), np.empty((2, 6))))
    got = fastgauss.normal_product(*inputs, out=outs, backend=backend)
    assert all(g is o for g, o in zip(got, outs))
    for g, e in zip(host(got), expected):
        np.testing.assert_allclose(g, e, **CLOSED)
    if backend != "cuda":
        strided = np.empty((2, 12))[:, ::2]
        fastgauss.normal_product(*args, out=(np.empty((2, 6)), strided, np.empty((2, 6))), backend=backend)
        np.testing.assert_allclose(strided, expected[1], **CLOSED)
    one = np.empty((2, 12))
    with pytest.raises(ValueError, match=r"out\[0\] and out\[1\] overlap"):
        fastgauss.normal_product(*args, out=(one[:, :6], one[:, 3:9], np.empty((2, 6))), backend="cpu")
    with pytest.raises(ValueError, match=r"out\[2\] has shape \(6,\); the result has shape \(2, 6\)"):
        fastgauss.normal_product(*args, out=(np.empty((2, 6)), np.empty((2, 6)), np.empty(6)), backend="cpu")
    with pytest.raises(ValueError, match=r"out\[1\] overlaps mean2 without being the same array"):
        fastgauss.normal_product(*args, out=(np.empty((2, 6)), args[2][:, ::-1], np.empty((2, 6))), backend="cpu")
    with pytest.raises(TypeError, match="out must be a tuple of three arrays"):
        fastgauss.normal_product(*args, out=np.empty((2, 6)), backend="cpu")


@pytest.mark.skipif(not CUDA_USABLE, reason="cuda backend not usable")
def test_cuda_grid_stride_loops_reuse_each_threads_scratch(monkeypatch):
    """More outputs than threads (8 threads in 2 blocks for 20 outputs): each thread's loop covers
    several outputs, reusing its scratch slots, against the reference."""
    import fastgauss.cuda.mvn

    monkeypatch.setattr(fastgauss.cuda.mvn, "launch_config", lambda n: (2, 4))
    rng = np.random.default_rng(23)
    mean, cov = rng.standard_normal((20, 3)), spd(rng, (20,), 3)
    calls = [
        ("mvn_affine", (mean, cov, rng.standard_normal((2, 3)))),
        ("mvn_marginal", (mean, cov, [2, 0])),
        ("mvn_condition", (mean, cov, [1], mean[:, :1] + 1)),
        ("gaussian_product", (mean, cov, mean[::-1], cov[::-1])),
        ("kalman_update", (mean, cov, rng.standard_normal((2, 3)), np.eye(2), rng.standard_normal((20, 2)))),
    ]
    for op, args in calls:
        function = getattr(fastgauss, op)
        for got, want in zip(host(function(*on("cuda", *args), backend="cuda")), function(*args, backend="numpy")):
            np.testing.assert_allclose(got, want, **CLOSED, err_msg=op)
