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


def mvn_kl(mean1, cov1, mean2, cov2, batch, out):
    """0.5 (|L2^-1 L1|_F^2 + |L2^-1 (mean2 - mean1)|^2 - d + 2 sum (log L2_ii - log L1_ii))."""
    L1, codes1 = factor(cov1)
    L2, codes2 = factor(cov2)
    status = {"cov1": summarize(codes1), "cov2": summarize(codes2)}
    if status["cov1"][0] >= 0 or status["cov2"][0] >= 0:
        return status
    d = L1.shape[-1]
    trace = (solve_lower(L2, L1) ** 2).sum(axis=(-2, -1))
    diff = np.asarray(mean2, dtype=np.float64) - np.asarray(mean1, dtype=np.float64)
    squared = (solve_lower(L2, diff[..., None])[..., 0] ** 2).sum(axis=-1)
    log_ratio = np.log(np.diagonal(L2, axis1=-2, axis2=-1)).sum(axis=-1) - np.log(np.diagonal(L1, axis1=-2, axis2=-1)).sum(axis=-1)
    out[...] = 0.5 * (trace + squared - d) + log_ratio
    return status
