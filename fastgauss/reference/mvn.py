"""NumPy reference for the multivariate-normal ops: the executable spec, written from the formulas.

Everything is computed in float64: ``numpy.linalg.cholesky`` of the symmetric matrix
that the lower triangle defines, forward substitution for L z = b, and the results
rounded once to the output dtype. Backend functions return, per factored argument,
``fastgauss._plans.mvn.summarize`` of the per-matrix status codes (0 factored, k > 0 the
order of the first leading minor that is not positive definite, -1 factored but not
symmetric within ``tol``); they write nothing when a matrix failed.
"""

import numpy as np

from fastgauss._plans.mvn import NO_CHECK, summarize
from fastgauss.reference.random import standard_normal

LOG_2PI = float(np.log(2 * np.pi))


def failing_minor(m):
    """Order of the first leading minor of the symmetric matrix m that is not positive definite, or 0."""
    for k in range(1, m.shape[-1] + 1):
        try:
            L = np.linalg.cholesky(m[:k, :k])
        except np.linalg.LinAlgError:
            return k
        if not L[k - 1, k - 1] > 0:  # NaN: LAPACK may carry it through instead of failing
            return k
    return 0


def factor(a, upper=False, tol=NO_CHECK):
    """(L, status): float64 lower Cholesky factors of a (..., d, d), read from its lower triangle
    (its upper one with ``upper``), and one status code per matrix (NaN factors where one failed)."""
    a = np.asarray(a, dtype=np.float64)
    if upper:
        a = np.swapaxes(a, -1, -2)
    batch = a.shape[:-2]
    symmetric = np.tril(a) + np.swapaxes(np.tril(a, -1), -1, -2)
    status = np.zeros(batch, np.int32)
    try:
        with np.errstate(invalid="ignore"):
            L = np.linalg.cholesky(symmetric)
        ok = np.all(np.diagonal(L, axis1=-2, axis2=-1) > 0, axis=-1)
    except np.linalg.LinAlgError:  # some matrix failed: find which, one by one
        L = np.full(a.shape, np.nan)
        ok = np.zeros(batch, bool)
    for index in np.ndindex(batch):
        if not ok[index]:
            status[index] = failing_minor(symmetric[index])
            L[index] = np.linalg.cholesky(symmetric[index]) if status[index] == 0 else np.nan
    if tol >= 0:
        mirror = np.swapaxes(a, -1, -2)
        close = np.abs(a - mirror) <= tol + tol * np.minimum(np.abs(a), np.abs(mirror))
        status[(status == 0) & ~np.all(close, axis=(-2, -1))] = -1
    return L, status


def solve_lower(L, b):
    """z with L z = b, by forward substitution: L (..., d, d) lower triangular, b (..., d, k)."""
    d = L.shape[-1]
    z = np.zeros(np.broadcast_shapes(L.shape[:-2], b.shape[:-2]) + b.shape[-2:])
    for i in range(d):
        z[..., i, :] = (b[..., i, :] - np.einsum("...j,...jk->...k", L[..., i, :i], z[..., :i, :])) / L[..., i, i, None]
    return z


def _lower(scale_tril):
    return np.tril(np.asarray(scale_tril, dtype=np.float64))


def cholesky(a, upper, out):
    L, status = factor(a, upper)
    summary = summarize(status)
    if summary[0] < 0:
        out[...] = np.swapaxes(L, -1, -2) if upper else L
    return out, {"a": summary}


def mvn_sample(mean, cov, scale_tril, batch, noise, out, *, fresh, stream, tol):
    """x = mean + L noise, with noise drawn as standard_normal(out.shape) would when not given."""
    status = {}
    if cov is not None:
        L, codes = factor(cov, tol=tol)
        status["cov"] = summarize(codes)
        if status["cov"][0] >= 0:
            return status
    else:
        L = _lower(scale_tril)
    if noise is None:
        noise = np.empty(out.shape, out.dtype)
        if noise.size:
            standard_normal(noise, *stream)
    eps = np.asarray(noise, dtype=np.float64)
    out[...] = np.asarray(mean, dtype=np.float64) + (L @ eps[..., None])[..., 0]
    return status


def mvn_logpdf(x, mean, cov, scale_tril, batch, out):
    """-0.5 (d log 2 pi + |z|^2) - sum log L_ii, with L z = x - mean."""
    status = {}
    if cov is not None:
        L, codes = factor(cov)
        status["cov"] = summarize(codes)
        if status["cov"][0] >= 0:
            return status
    else:
        L = _lower(scale_tril)
    d = L.shape[-1]
    diff = np.asarray(x, dtype=np.float64) - np.asarray(mean, dtype=np.float64)
    z = solve_lower(L, diff[..., None])[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        half_logdet = np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(axis=-1)
    out[...] = -0.5 * (d * LOG_2PI + (z**2).sum(axis=-1)) - half_logdet
    return status


def _factor_pair(cov1, cov2):
    """(L1, L2, status) of mvn_kl's two covariances; L1 and L2 are None when either failed."""
    L1, codes1 = factor(cov1)
    L2, codes2 = factor(cov2)
    status = {"cov1": summarize(codes1), "cov2": summarize(codes2)}
    if status["cov1"][0] >= 0 or status["cov2"][0] >= 0:
        return None, None, status
    return L1, L2, status


def mvn_kl(mean1, cov1, mean2, cov2, batch, out):
    """0.5 (|L2^-1 L1|_F^2 + |L2^-1 (mean2 - mean1)|^2 - d + 2 sum (log L2_ii - log L1_ii))."""
    L1, L2, status = _factor_pair(cov1, cov2)
    if L1 is None:
        return status
    d = L1.shape[-1]
    trace = (solve_lower(L2, L1) ** 2).sum(axis=(-2, -1))
    diff = np.asarray(mean2, dtype=np.float64) - np.asarray(mean1, dtype=np.float64)
    squared = (solve_lower(L2, diff[..., None])[..., 0] ** 2).sum(axis=-1)
    log_ratio = np.log(np.diagonal(L2, axis1=-2, axis2=-1)).sum(axis=-1) - np.log(np.diagonal(L1, axis1=-2, axis2=-1)).sum(axis=-1)
    out[...] = 0.5 * (trace + squared - d) + log_ratio
    return status


# --- gradients ---------------------------------------------------------------------------
# The VJPs of the four ops, from the derivative formulas (float64 throughout). With L the
# lower factor, r = x - mean, z = L^-1 r and u = L^-T z (= Sigma^-1 r):
#   mvn_sample  x = mean + L eps:   d/dmean = g,  d/dL = tril(g eps^T),  d/deps = L^T g
#   mvn_logpdf:  d/dx = -g u,  d/dmean = g u,  d/dL = g (tril(u z^T) - diag(1 / L_ii))
#   mvn_kl, M = L2^-1 L1, w = L2^-1 (mean2 - mean1), A = L2^-T M, v = L2^-T w:
#     d/dmean2 = g v = -d/dmean1,  d/dL1 = g (tril(A) - diag(1 / L1_ii)),
#     d/dL2 = g (diag(1 / L2_ii) - tril(A M^T) - tril(v w^T))
# and a covariance's gradient from its factor's, ``cholesky_backward`` (Murray 2016, in the
# form torch.linalg.cholesky's autograd uses): sym(L^-T Phi(L^T gL) L^-1), Phi the lower
# triangle with its diagonal halved, sym(X) = (X + X^T) / 2. Gradients summed over the axes
# an argument was broadcast along (``reduce_to``).


def reduce_to(a, shape):
    """a summed over its leading axes and over the axes where ``shape`` has 1: a of ``shape``."""
    a = np.asarray(a)
    lead = a.ndim - len(shape)
    a = a.sum(axis=tuple(range(lead))) if lead else a
    axes = tuple(k for k, n in enumerate(shape) if n == 1 and a.shape[k] != 1)
    return a.sum(axis=axes, keepdims=True) if axes else a


def _transpose(a):
    return np.swapaxes(a, -1, -2)


def cholesky_backward(L, grad_L):
    """The symmetric gradient of a covariance from its factor L's (both (..., d, d), float64)."""
    d = L.shape[-1]
    phi = np.tril(_transpose(L) @ np.tril(grad_L))
    phi[..., np.arange(d), np.arange(d)] *= 0.5
    inverse = solve_lower(L, np.broadcast_to(np.eye(d), L.shape))
    g = _transpose(inverse) @ phi @ inverse
    return 0.5 * (g + _transpose(g))


def _factor_of(cov, scale_tril):
    """(L, status) from the covariance, or the given factor's lower triangle."""
    if cov is not None:
        L, codes = factor(cov)
        return L, {"cov": summarize(codes)}
    return _lower(scale_tril), {}


def _write_matrix_grad(L, grad_L, matrix_shape, grad_cov, grad_scale_tril):
    grad_L = reduce_to(grad_L, matrix_shape)
    if grad_scale_tril is not None:
        grad_scale_tril[...] = np.tril(grad_L)
    if grad_cov is not None:
        grad_cov[...] = cholesky_backward(L, grad_L)


def _write_opposite(value, grad_minus, minus_shape, grad_plus, plus_shape):
    """The gradients of the two sides of a difference whose gradient is ``value``: -value and value,
    each summed to its argument's shape."""
    if grad_minus is not None:
        grad_minus[...] = reduce_to(-value, minus_shape)
    if grad_plus is not None:
        grad_plus[...] = reduce_to(value, plus_shape)


def cholesky_vjp(cotangent, a, upper, grad_a):
    L, codes = factor(a, upper)
    status = {"a": summarize(codes)}
    if status["a"][0] < 0:
        g = np.asarray(cotangent, dtype=np.float64)
        grad_a[...] = cholesky_backward(L, _transpose(g) if upper else g)
    return status


def mvn_sample_vjp(cotangent, mean, cov, scale_tril, batch, noise, *, stream, grad_mean, grad_cov, grad_scale_tril, grad_noise):
    """Noise given, or regenerated from ``stream`` (the forward's key and offset) as it drew it."""
    L, status = _factor_of(cov, scale_tril)
    if status and status["cov"][0] >= 0:
        return status
    g = np.asarray(cotangent, dtype=np.float64)
    if grad_mean is not None:
        grad_mean[...] = reduce_to(g, np.shape(mean))
    if grad_noise is not None:
        grad_noise[...] = (_transpose(L) @ g[..., None])[..., 0]
    if grad_cov is not None or grad_scale_tril is not None:
        if noise is None:
            noise = np.empty(g.shape, np.asarray(cotangent).dtype)
            if noise.size:
                standard_normal(noise, *stream)
        eps = np.asarray(noise, dtype=np.float64)
        grad_L = np.tril(g[..., :, None] * eps[..., None, :])
        _write_matrix_grad(L, grad_L, L.shape, grad_cov, grad_scale_tril)
    return status


def mvn_logpdf_vjp(cotangent, x, mean, cov, scale_tril, batch, *, grad_x, grad_mean, grad_cov, grad_scale_tril):
    L, status = _factor_of(cov, scale_tril)
    if status and status["cov"][0] >= 0:
        return status
    d = L.shape[-1]
    g = np.asarray(cotangent, dtype=np.float64)
    diff = np.asarray(x, dtype=np.float64) - np.asarray(mean, dtype=np.float64)
    z = solve_lower(L, diff[..., None])
    inverse = solve_lower(L, np.broadcast_to(np.eye(d), L.shape))
    u = _transpose(inverse) @ z
    _write_opposite(g[..., None] * u[..., 0], grad_x, np.shape(x), grad_mean, np.shape(mean))
    if grad_cov is not None or grad_scale_tril is not None:
        with np.errstate(divide="ignore"):
            diagonal = np.eye(d) / np.diagonal(L, axis1=-2, axis2=-1)[..., None]
        grad_L = g[..., None, None] * (np.tril(u @ _transpose(z)) - diagonal)
        _write_matrix_grad(L, grad_L, L.shape, grad_cov, grad_scale_tril)
    return status


def mvn_kl_vjp(cotangent, mean1, cov1, mean2, cov2, batch, *, grad_mean1, grad_cov1, grad_mean2, grad_cov2):
    L1, L2, status = _factor_pair(cov1, cov2)
    if L1 is None:
        return status
    d = L1.shape[-1]
    g = np.asarray(cotangent, dtype=np.float64)
    inverse2 = solve_lower(L2, np.broadcast_to(np.eye(d), L2.shape))
    diff = np.asarray(mean2, dtype=np.float64) - np.asarray(mean1, dtype=np.float64)
    w = inverse2 @ diff[..., None]
    v = _transpose(inverse2) @ w
    _write_opposite(g[..., None] * v[..., 0], grad_mean1, np.shape(mean1), grad_mean2, np.shape(mean2))
    M = inverse2 @ L1
    A = _transpose(inverse2) @ M
    eye = np.eye(d)
    if grad_cov1 is not None:
        grad_L1 = g[..., None, None] * (np.tril(A) - eye / np.diagonal(L1, axis1=-2, axis2=-1)[..., None])
        _write_matrix_grad(L1, grad_L1, L1.shape, grad_cov1, None)
    if grad_cov2 is not None:
        grad_L2 = g[..., None, None] * (eye / np.diagonal(L2, axis1=-2, axis2=-1)[..., None] - np.tril(A @ _transpose(M)) - np.tril(v @ _transpose(w)))
        _write_matrix_grad(L2, grad_L2, L2.shape, grad_cov2, None)
    return status


# --- Gaussian algebra ---
# Covariances are the symmetric matrices their lower triangles define (as everywhere in the
# family); results are symmetrized, 0.5 (C + C^T), so the spec is symmetric exactly.


def _symmetric(a):
    a = np.asarray(a, dtype=np.float64)
    return np.tril(a) + np.swapaxes(np.tril(a, -1), -1, -2)


def _halves(c):
    return 0.5 * (c + np.swapaxes(c, -1, -2))


def _t(a):
    return np.swapaxes(a, -1, -2)


def mvn_affine(mean, cov, A, b, batch, mean_out, cov_out):
    """A x + b for x ~ N(mean, cov): N(A mean + b, A cov A^T)."""
    A = np.asarray(A, dtype=np.float64)
    shift = 0.0 if b is None else np.asarray(b, dtype=np.float64)
    mean_out[...] = (A @ np.asarray(mean, dtype=np.float64)[..., None])[..., 0] + shift
    cov_out[...] = _halves(A @ _symmetric(cov) @ _t(A))
    return {}


def mvn_marginal(mean, cov, index, batch, mean_out, cov_out):
    """The marginal over coordinates ``index``: mean[..., index], cov[..., index, index]."""
    mean_out[...] = np.asarray(mean, dtype=np.float64)[..., index]
    cov_out[...] = _symmetric(cov)[..., index[:, None], index[None, :]]
    return {}


def mvn_condition(mean, cov, index, other, value, batch, mean_out, *, cov_out):
    """x_1 | x_2 = value with x_2 = x[index], x_1 = x[other]:
    mu_1 + S_12 S_22^-1 (value - mu_2), S_11 - S_12 S_22^-1 S_21, through L L^T = S_22."""
    sigma = _symmetric(cov)
    mean = np.asarray(mean, dtype=np.float64)
    L, codes = factor(sigma[..., index[:, None], index[None, :]])
    status = {"cov": summarize(codes)}
    if status["cov"][0] >= 0:
        return status
    W = solve_lower(L, sigma[..., index[:, None], other[None, :]])  # L^-1 S_21
    z = solve_lower(L, (np.asarray(value, dtype=np.float64) - mean[..., index])[..., None])  # L^-1 (value - mu_2)
    mean_out[...] = mean[..., other] + (_t(W) @ z)[..., 0]
    cov_out[...] = _halves(sigma[..., other[:, None], other[None, :]] - _t(W) @ W)
    return status


def gaussian_product(mean1, cov1, mean2, cov2, batch, mean_out, cov_out, *, log_scale_out):
    """N(x; m1, S1) N(x; m2, S2) = N(m1; m2, S1 + S2) N(x; m, S) with
    S = S1 (S1 + S2)^-1 S2 and m = S2 (S1 + S2)^-1 m1 + S1 (S1 + S2)^-1 m2."""
    s1, s2 = _symmetric(cov1), _symmetric(cov2)
    m1, m2 = np.asarray(mean1, dtype=np.float64), np.asarray(mean2, dtype=np.float64)
    total = s1 + s2
    L, codes = factor(total)
    status = {"sum": summarize(codes)}
    if status["sum"][0] >= 0:
        return status
    d = total.shape[-1]
    mean_out[...] = (s2 @ np.linalg.solve(total, m1[..., None]) + s1 @ np.linalg.solve(total, m2[..., None]))[..., 0]
    cov_out[...] = _halves(s1 @ np.linalg.solve(total, s2))
    z = solve_lower(L, (m1 - m2)[..., None])[..., 0]
    log_scale_out[...] = -0.5 * (d * LOG_2PI + (z**2).sum(axis=-1)) - np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(axis=-1)
    return status


def kalman_update(mean, cov, H, R, y, batch, mean_out, *, cov_out, log_likelihood_out):
    """The update of N(mean, cov) by y = H x + noise, noise ~ N(0, R): S = H cov H^T + R,
    K = cov H^T S^-1, mean + K (y - H mean), Joseph form (I - K H) cov (I - K H)^T + K R K^T,
    and the log-likelihood log N(y; H mean, S)."""
    sigma, noise = _symmetric(cov), _symmetric(R)
    H = np.asarray(H, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    S = H @ sigma @ _t(H) + noise
    L, codes = factor(S)
    status = {"innovation": summarize(codes)}
    if status["innovation"][0] >= 0:
        return status
    d, k = sigma.shape[-1], S.shape[-1]
    innovation = np.asarray(y, dtype=np.float64) - (H @ mean[..., None])[..., 0]
    K = _t(np.linalg.solve(S, H @ sigma))  # S is symmetric: K^T = S^-1 H sigma
    mean_out[...] = mean + (K @ innovation[..., None])[..., 0]
    A = np.eye(d) - K @ H
    cov_out[...] = _halves(A @ sigma @ _t(A) + K @ noise @ _t(K))
    z = solve_lower(L, innovation[..., None])[..., 0]
    log_likelihood_out[...] = -0.5 * (k * LOG_2PI + (z**2).sum(axis=-1)) - np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(axis=-1)
    return status
