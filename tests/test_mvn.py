"""Multivariate normals: batched Cholesky, mvn_sample, mvn_logpdf, mvn_kl, Generator.multivariate_normal.

Parity with numpy.linalg.cholesky, scipy and the reference on every backend; first
principles (L L^T = a, sample moments, chi-square Mahalanobis distances, KL by Monte
Carlo and in closed form); the stream definition of generated noise; shapes and errors.
CUDA cases run under the simulator on a handful of small matrices.
"""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import fastgauss
from conftest import assert_same_digest_for_thread_counts, CUDA_USABLE, to_backend, to_numpy
from fastgauss.cpu.mvn import LAPACK_MIN_D
from fastgauss.cuda.mvn import MAX_LOCAL_D

DTYPES = [np.float32, np.float64]
EPS = {np.float32: float(np.finfo(np.float32).eps), np.float64: float(np.finfo(np.float64).eps)}
NORMAL_RTOL = {np.float32: 1e-6, np.float64: 1e-14}  # compiled normals vs the reference, relative to max(1, |z|)


def spd(rng, batch, d, jitter=0.5):
    """Well-conditioned SPD matrices (condition number below ~20 for the sizes used here)."""
    a = rng.standard_normal(tuple(batch) + (d, d))
    return a @ np.swapaxes(a, -1, -2) / d + jitter * np.eye(d)


def compiled():
    return ["cpu", "cuda"] if CUDA_USABLE else ["cpu"]


def on(backend, *arrays):
    return tuple(to_backend(np.ascontiguousarray(a), backend) for a in arrays)


# --- cholesky --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d, batch", [(1, (3,)), (3, ()), (3, (2, 3)), (4, (4,)), (8, (3,))])
def test_cholesky_matches_numpy_and_reproduces_a(backend, dtype, d, batch):
    a = spd(np.random.default_rng(d), batch, d).astype(dtype)
    (a_b,) = on(backend, a)
    L = to_numpy(fastgauss.cholesky(a_b, backend=backend))
    U = to_numpy(fastgauss.cholesky(a_b, upper=True, backend=backend))
    expected = np.linalg.cholesky(a)  # NumPy computes float32 in float32 (spotrf)
    assert L.dtype == expected.dtype == dtype and L.shape == expected.shape
    # Tolerance: 8 d eps |a|_max^(1/2) for the factor (the matrices are well conditioned),
    # 8 d eps |a|_max for L L^T - a; exact zeros off the triangle.
    scale = np.sqrt(np.abs(a.astype(np.float64)).max())
    np.testing.assert_allclose(L, expected, rtol=0, atol=8 * d * EPS[dtype] * scale)
    assert np.all(np.triu(L, 1) == 0) and np.all(np.tril(U, -1) == 0)
    np.testing.assert_array_equal(U, np.swapaxes(L, -1, -2))
    L64 = L.astype(np.float64)
    np.testing.assert_allclose(L64 @ np.swapaxes(L64, -1, -2), a, rtol=0, atol=8 * d * EPS[dtype] * scale**2)


def test_cholesky_reads_the_lower_triangle_like_numpy():
    """Garbage (even NaN) above the diagonal is not read; upper=True reads the upper triangle."""
    a = spd(np.random.default_rng(1), (4,), 3)
    lower_only = np.tril(a) + np.triu(np.full_like(a, np.nan), 1)
    upper_only = np.triu(a) + np.tril(np.full_like(a, 1e300), -1)
    for backend in ["numpy"] + compiled():
        got = to_numpy(fastgauss.cholesky(*on(backend, lower_only), backend=backend))
        np.testing.assert_allclose(got, np.linalg.cholesky(a), rtol=1e-14, atol=1e-14)
        got = to_numpy(fastgauss.cholesky(*on(backend, upper_only), upper=True, backend=backend))
        np.testing.assert_allclose(got, np.linalg.cholesky(a, upper=True), rtol=1e-14, atol=1e-14)


def test_cholesky_dtypes_and_empty_shapes(backend):
    a = spd(np.random.default_rng(2), (), 3)
    ints = (a * 10).round().astype(np.int64) + 10 * np.eye(3, dtype=np.int64)
    got = to_numpy(fastgauss.cholesky(*on(backend, ints), backend=backend))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, np.linalg.cholesky(ints), rtol=1e-14)
    for shape in [(0, 3, 3), (2, 0, 0), (0, 0)]:
        got = to_numpy(fastgauss.cholesky(*on(backend, np.zeros(shape)), backend=backend))
        assert got.shape == shape and got.dtype == np.float64
    for bad in (np.ones((2, 3)), np.ones(3), np.ones((2, 2, 3))):
        with pytest.raises(ValueError, match=r"a must have shape \(\.\.\., d, d\)"):
            fastgauss.cholesky(bad, backend="cpu")
    with pytest.raises(TypeError, match="unsupported dtype"):
        fastgauss.cholesky(np.eye(2, dtype=np.complex128), backend="cpu")


def test_cholesky_large_orders():
    """cpu: LAPACK from LAPACK_MIN_D up (errors still located); cuda: factors in global memory above MAX_LOCAL_D."""
    rng = np.random.default_rng(3)
    d = LAPACK_MIN_D + 3
    a = spd(rng, (3,), d)
    for dtype in DTYPES:
        got = fastgauss.cholesky(a.astype(dtype), backend="cpu")
        assert got.dtype == dtype
        np.testing.assert_allclose(got, np.linalg.cholesky(a.astype(dtype)), rtol=0, atol=8 * d * EPS[dtype] * 2)
    bad = a.copy()
    bad[2, 7, 7] = -1.0
    with pytest.raises(np.linalg.LinAlgError, match=r"a matrix at batch index \(2,\) is not positive definite \(leading minor of order 8\)"):
        fastgauss.cholesky(bad, backend="cpu")
    bad[2, 7, 7], bad[1, 9, 4] = a[2, 7, 7], np.nan
    with pytest.raises(np.linalg.LinAlgError, match=r"batch index \(1,\) .* order 10\)"):
        fastgauss.cholesky(bad, backend="cpu")
    if CUDA_USABLE:
        d = MAX_LOCAL_D + 2
        a = spd(rng, (2,), d)
        for dtype, upper in ((np.float64, False), (np.float32, True)):
            got = to_numpy(fastgauss.cholesky(*on("cuda", a.astype(dtype)), upper=upper, backend="cuda"))
            np.testing.assert_allclose(got, np.linalg.cholesky(a, upper=upper), rtol=0, atol=8 * d * EPS[dtype] * 2)


def indefinite_at(a, index, order):
    """Make matrix ``index`` of a fail exactly at leading minor ``order`` (its first order-1 minors stay PD)."""
    m = a[index]
    k = order - 1
    L = np.linalg.cholesky(m[:k, :k]) if k else np.zeros((0, 0))
    row = np.linalg.solve(L, m[k, :k]) if k else np.zeros(0)
    m[k, k] = row @ row - 0.5  # the pivot a_kk - |L^-1 a_k|^2 becomes -0.5
    return a


@pytest.mark.parametrize("corruption", ["indefinite", "nan", "two"])
def test_not_positive_definite_names_batch_index_and_minor(backend, corruption):
    a = spd(np.random.default_rng(4), (4, 5), 4)
    if corruption == "indefinite":
        indefinite_at(a, (3, 1), 3)
        expected = r"a matrix at batch index \(3, 1\) is not positive definite \(leading minor of order 3\)"
    elif corruption == "nan":
        a[2, 4, 3, 1] = np.nan  # lower triangle: row 3 holds the NaN, so minor 4 fails
        expected = r"a matrix at batch index \(2, 4\) is not positive definite \(leading minor of order 4\)"
    else:  # the first in C order is reported, whatever the threads did
        indefinite_at(a, (3, 4), 2)
        indefinite_at(a, (1, 2), 4)
        expected = r"a matrix at batch index \(1, 2\) is not positive definite \(leading minor of order 4\)"
    with pytest.raises(np.linalg.LinAlgError, match=expected):
        fastgauss.cholesky(*on(backend, a), backend=backend)
    a1 = indefinite_at(spd(np.random.default_rng(5), (), 3), (), 1)
    with pytest.raises(np.linalg.LinAlgError, match=r"a matrix at batch index \(\) is not positive definite \(leading minor of order 1\)"):
        fastgauss.cholesky(*on(backend, a1), backend=backend)


# --- mvn_sample: the stream, the formula, shapes --------------------------------------------

SAMPLE_CASES = [  # (mean batch, matrix batch, size)
    ((6,), (6,), None),  # fused: one covariance per vector
    ((), (6,), None),
    ((6,), (), 3),  # one covariance, several samples: factored first
    ((2, 1), (1, 3), (2,)),
    ((), (), (2, 3)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mean_batch, cov_batch, size", SAMPLE_CASES)
def test_generated_noise_is_standard_normal_exactly(backend, dtype, mean_batch, cov_batch, size):
    """The noise is rng.standard_normal(size + batch + (d,)) from the same state, exactly; x replays
    bitwise through noise=, and matches mean + L noise of the reference."""
    d = 3  # odd: vectors straddle Philox blocks
    rng = np.random.default_rng(6)
    mean = rng.standard_normal(mean_batch + (d,)).astype(dtype)
    cov = spd(rng, cov_batch, d).astype(dtype)
    batch = np.broadcast_shapes(mean_batch, cov_batch)
    sample = () if size is None else ((size,) if isinstance(size, int) else size)
    g, twin = fastgauss.default_rng(40), fastgauss.default_rng(40)
    for generator in (g, twin):
        generator.state = dict(generator.state, counter=2**64 - 2)  # crosses a carry
    mean_b, cov_b = on(backend, mean, cov)
    x = to_numpy(fastgauss.mvn_sample(mean_b, cov_b, size=size, rng=g, backend=backend))
    reference_twin = fastgauss.default_rng(40)
    reference_twin.state = twin.state
    eps = twin.standard_normal(sample + batch + (d,), dtype=dtype, backend=backend)
    assert g.state == twin.state
    reference_eps = reference_twin.standard_normal(sample + batch + (d,), dtype=dtype, backend="numpy")
    assert np.all(np.abs(to_numpy(eps) - reference_eps) <= NORMAL_RTOL[dtype] * np.maximum(1.0, np.abs(reference_eps)))
    assert x.shape == sample + batch + (d,) and x.dtype == dtype
    replay = to_numpy(fastgauss.mvn_sample(mean_b, cov_b, noise=eps, backend=backend))
    np.testing.assert_array_equal(x, replay)
    L = np.linalg.cholesky(cov.astype(np.float64))
    expected = mean + (L @ to_numpy(eps).astype(np.float64)[..., None])[..., 0]
    # float64 arithmetic, rounded once: |x - expected| <= 2 eps(dtype) |x| + 4 d eps64 (|mean| + |L||eps|)
    np.testing.assert_allclose(x, expected, rtol=2 * EPS[dtype], atol=4 * d * 1e-16 * (1 + np.abs(expected).max()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_parity_with_reference_generated(backend, dtype):
    """Compiled backends against the reference stream (NumPy's log/sin/cos): 1e-6 / 1e-14 normals."""
    rng = np.random.default_rng(7)
    mean, cov = rng.standard_normal((5, 4)), spd(rng, (5,), 4)
    got = to_numpy(fastgauss.mvn_sample(*on(backend, mean.astype(dtype), cov.astype(dtype)), rng=9, backend=backend))
    ref = fastgauss.mvn_sample(mean.astype(dtype), cov.astype(dtype), rng=9, backend="numpy")
    tol = {np.float32: 2e-6, np.float64: 1e-13}[dtype] * 4 * (1 + np.abs(ref).max())
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol)


def test_scale_tril_is_used_as_given_and_upper_triangle_ignored(backend):
    rng = np.random.default_rng(8)
    L = np.tril(rng.standard_normal((4, 3, 3)), -1) + rng.uniform(0.5, 2, (4, 3))[..., None] * np.eye(3)
    junk = L + np.triu(np.full_like(L, 7.0), 1)
    mean = rng.standard_normal(3)
    noise = rng.standard_normal((2, 4, 3))
    got = to_numpy(fastgauss.mvn_sample(*on(backend, mean), scale_tril=on(backend, junk)[0], noise=on(backend, noise)[0], backend=backend))
    np.testing.assert_allclose(got, mean + (L @ noise[..., None])[..., 0], rtol=1e-14, atol=1e-14)
    mean_b, cov_b, noise_b = on(backend, mean, L @ np.swapaxes(L, -1, -2), noise)
    via_cov = to_numpy(fastgauss.mvn_sample(mean_b, cov_b, noise=noise_b, backend=backend))
    np.testing.assert_allclose(via_cov, got, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [None, 0, 4, (2, 3)])
@pytest.mark.parametrize("mean_batch, cov_batch", [((), ()), ((5,), ()), ((), (5,)), ((5,), (5,)), ((2, 1), (4,)), ((3, 1, 1), (1, 2, 1))])
def test_sample_shapes(size, mean_batch, cov_batch):
    d = 3
    rng = np.random.default_rng(9)
    mean, cov = rng.standard_normal(mean_batch + (d,)), spd(rng, cov_batch, d)
    batch = np.broadcast_shapes(mean_batch, cov_batch)
    sample = () if size is None else ((size,) if isinstance(size, int) else size)
    shape = sample + batch + (d,)
    for backend in ("numpy", "cpu"):
        assert fastgauss.mvn_sample(mean, cov, size=size, rng=0, backend=backend).shape == shape
        assert fastgauss.mvn_sample(mean, scale_tril=np.linalg.cholesky(cov), size=size, rng=0, backend=backend).shape == shape
        noise = np.zeros(shape)
        assert fastgauss.mvn_sample(mean, cov, noise=noise, backend=backend).shape == shape
        assert fastgauss.mvn_sample(mean, cov, noise=noise, size=size if size is not None else (), backend=backend).shape == shape
    with pytest.raises(ValueError, match="disagrees with the sample shape"):
        fastgauss.mvn_sample(mean, cov, noise=np.zeros((7,) + batch + (d,)), size=(8,))


def test_sample_in_place_and_out(backend):
    rng = np.random.default_rng(10)
    mean, cov, noise = rng.standard_normal((4, 3)), spd(rng, (4,), 3), rng.standard_normal((4, 3))
    expected = fastgauss.mvn_sample(mean, cov, noise=noise, backend="numpy")
    for target in ("mean", "noise", "fresh"):
        m, c, n = on(backend, mean.copy(), cov, noise.copy())
        out = {"mean": m, "noise": n, "fresh": to_backend(np.full((4, 3), np.nan), backend)}[target]
        result = fastgauss.mvn_sample(m, c, noise=n, out=out, backend=backend)
        assert result is out
        np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-14, atol=1e-14)
    out = to_backend(np.empty((4, 3)), backend)
    got = fastgauss.mvn_sample(*on(backend, mean, cov), rng=3, out=out, backend=backend)
    assert got is out
    np.testing.assert_array_equal(to_numpy(out), to_numpy(fastgauss.mvn_sample(*on(backend, mean, cov), rng=3, backend=backend)))
    reference = fastgauss.reference.mvn_sample(mean, cov, noise=fastgauss.default_rng(3).standard_normal((4, 3), backend="numpy"))
    np.testing.assert_allclose(to_numpy(out), reference, rtol=0, atol=1e-13)  # 1e-14 normals through |L| < 3


@pytest.mark.parametrize("size", [None, 2])
def test_out_is_not_written_when_a_covariance_fails(backend, size):
    """Fused path (one covariance per vector) and factor-first path (several samples per covariance)."""
    rng = np.random.default_rng(11)
    cov = indefinite_at(spd(rng, (6,), 3), (4,), 2)
    mean = rng.standard_normal((6, 3))
    shape = (6, 3) if size is None else (size, 6, 3)
    out = to_backend(np.full(shape, 7.0), backend)
    g = fastgauss.default_rng(1)
    with pytest.raises(np.linalg.LinAlgError, match=r"cov matrix at batch index \(4,\) is not positive definite \(leading minor of order 2\)"):
        fastgauss.mvn_sample(*on(backend, mean, cov), size=size, rng=g, out=out, backend=backend)
    assert np.all(to_numpy(out) == 7.0)


def test_sample_errors_leave_the_generator_untouched():
    rng = fastgauss.default_rng(0)
    before = rng.state
    mean, cov = np.zeros((3, 2)), np.broadcast_to(np.eye(2), (3, 2, 2))
    cases = [
        (ValueError, "pass exactly one of cov and scale_tril", dict(mean=mean)),
        (ValueError, "pass exactly one of cov and scale_tril", dict(mean=mean, cov=cov, scale_tril=cov)),
        (ValueError, r"pass either noise or rng, not both", dict(mean=mean, cov=cov, noise=np.zeros((3, 2)))),
        (ValueError, r"mean must have shape \(\.\.\., d\); got \(\)", dict(mean=np.float64(0), cov=cov)),
        (ValueError, r"cov must have shape \(\.\.\., 2, 2\) \(d = 2 from mean\); got \(3, 3\)", dict(mean=mean, cov=np.eye(3))),
        (ValueError, r"the batch shapes of mean \(3,\), cov \(4,\) do not broadcast", dict(mean=mean, cov=np.zeros((4, 2, 2)))),
        (ValueError, r"size must be non-negative", dict(mean=mean, cov=cov, size=-1)),
        (ValueError, r"out has shape \(2, 2\); the result has shape \(3, 2\)", dict(mean=mean, cov=cov, out=np.zeros((2, 2)))),
        (ValueError, r"out has dtype float32; the result has dtype float64", dict(mean=mean, cov=cov, out=np.zeros((3, 2), np.float32))),
        (TypeError, "unsupported dtype complex128 for cov", dict(mean=mean, cov=cov.astype(complex))),
    ]
    for exc, match, kwargs in cases:
        with pytest.raises(exc, match=match):
            fastgauss.mvn_sample(rng=rng, **kwargs)
    with pytest.raises(ValueError, match="out overlaps cov"):
        square = np.tile(np.eye(2), (2, 1, 1))  # out of shape (2, 2, 2) could alias a (2, 2, 2) cov
        fastgauss.mvn_sample(np.zeros((2, 2, 2)), square, rng=rng, out=square)
    with pytest.raises(TypeError, match="rng must be a fastgauss.Generator"):
        fastgauss.mvn_sample(mean, cov, rng=np.random.default_rng(0))
    assert rng.state == before


# --- mvn_sample: statistics ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_moments_of_one_distribution(dtype):
    n, d = 200_000, 3
    mean = np.array([1.0, -2.0, 0.5])
    cov = np.array([[2.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 0.5]])
    x = fastgauss.mvn_sample(mean.astype(dtype), cov.astype(dtype), size=n, rng=12, backend="cpu").astype(np.float64)
    z = fastgauss.default_rng(12).standard_normal((n, 3), dtype=dtype, backend="numpy")
    reference = fastgauss.reference.mvn_sample(mean.astype(dtype), cov.astype(dtype), noise=z)  # |mean| + |L| |z| < 20
    np.testing.assert_allclose(x, reference, rtol=0, atol=20 * 4 * EPS[dtype] + 3 * NORMAL_RTOL[dtype] * (1 + np.abs(z).max()))
    # mean: 5 standard errors sqrt(S_ii / n); covariance: 5 standard errors sqrt((S_ij^2 + S_ii S_jj) / n)
    assert np.all(np.abs(x.mean(axis=0) - mean) < 5 * np.sqrt(np.diag(cov) / n))
    se = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / n)
    assert np.all(np.abs(np.cov(x, rowvar=False) - cov) < 5 * se)
    # squared Mahalanobis distances ~ chi-square(d), computed independently (NumPy solve)
    squared = ((x - mean) * np.linalg.solve(cov, (x - mean).T).T).sum(axis=1)
    assert stats.kstest(squared[:50_000], stats.chi2(d).cdf).pvalue > 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_mahalanobis_chi_square_across_a_batch(dtype):
    """100,000 different covariances, one sample each (the fused path): d^2 ~ chi-square(4)."""
    n, d = 100_000, 4
    rng = np.random.default_rng(13)
    cov = spd(rng, (n,), d, jitter=0.2)
    mean = rng.standard_normal((n, d)) * 3
    x = fastgauss.mvn_sample(mean.astype(dtype), cov.astype(dtype), rng=14, backend="cpu").astype(np.float64)
    z = fastgauss.default_rng(14).standard_normal((n, d), dtype=dtype, backend="numpy")
    reference = fastgauss.reference.mvn_sample(mean.astype(dtype), cov.astype(dtype), noise=z)
    L = np.abs(np.linalg.cholesky(cov))
    bound = 4 * EPS[dtype] * (np.abs(mean) + (L @ np.abs(z.astype(np.float64))[..., None])[..., 0])
    bound += NORMAL_RTOL[dtype] * (L @ np.maximum(1.0, np.abs(z.astype(np.float64)))[..., None])[..., 0]
    assert np.all(np.abs(x - reference) <= bound + 8 * EPS[dtype] * np.abs(reference))
    diff = x - mean.astype(dtype)
    squared = (diff * np.linalg.solve(cov.astype(dtype).astype(np.float64), diff[..., None])[..., 0]).sum(axis=1)
    assert stats.kstest(squared, stats.chi2(d).cdf).pvalue > 1e-3
    assert abs(squared.mean() - d) < 5 * math.sqrt(2 * d / n)


# --- mvn_logpdf -----------------------------------------------------------------------------


LOGPDF_CASES = [  # (x batch, mean batch, cov batch)
    ((5,), (5,), (5,)),
    ((5,), (), ()),
    ((), (4,), (4,)),
    ((2, 1), (3,), (1,)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_batch, mean_batch, cov_batch", LOGPDF_CASES)
def test_logpdf_against_scipy(backend, dtype, x_batch, mean_batch, cov_batch):
    d = 3
    rng = np.random.default_rng(15)
    x = rng.standard_normal(x_batch + (d,)).astype(dtype)
    mean = rng.standard_normal(mean_batch + (d,)).astype(dtype)
    cov = spd(rng, cov_batch, d).astype(dtype)
    got = to_numpy(fastgauss.mvn_logpdf(*on(backend, x, mean, cov), backend=backend))
    batch = np.broadcast_shapes(x_batch, mean_batch, cov_batch)
    assert got.shape == batch and got.dtype == dtype
    xb, mb, cb = (np.broadcast_to(v, batch + v.shape[len(v.shape) - k:]) for v, k in ((x, 1), (mean, 1), (cov, 2)))
    expected = np.array([stats.multivariate_normal.logpdf(xb[i], mb[i], cb[i]) for i in np.ndindex(batch)]).reshape(batch)
    # float64: 1e-12 relative (different solve orders); float32: the float64 result rounded once
    np.testing.assert_allclose(got, expected, rtol={np.float32: 2e-7, np.float64: 1e-12}[dtype], atol=1e-12)
    scale_tril = np.linalg.cholesky(cov.astype(np.float64)).astype(dtype)
    via_tril = to_numpy(fastgauss.mvn_logpdf(*on(backend, x, mean), scale_tril=on(backend, scale_tril)[0], backend=backend))
    np.testing.assert_allclose(via_tril, expected, rtol={np.float32: 1e-5, np.float64: 1e-12}[dtype], atol=1e-12)


def test_logpdf_integrates_to_one_in_1d_and_2d():
    """First principles: the density integrates to 1 (trapezoid on a fine grid, 1e-6)."""
    grid = np.linspace(-12, 12, 4001)
    p = np.exp(fastgauss.mvn_logpdf(grid[:, None], np.array([0.3]), np.array([[2.0]]), backend="cpu"))
    assert abs(np.trapezoid(p, grid) - 1) < 1e-6
    g = np.linspace(-10, 10, 801)
    xy = np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1)
    p = np.exp(fastgauss.mvn_logpdf(xy, np.array([0.5, -0.5]), np.array([[1.5, 0.7], [0.7, 1.0]]), backend="cpu"))
    assert abs(np.trapezoid(np.trapezoid(p, g), g) - 1) < 1e-6


def test_logpdf_errors(backend):
    cov = indefinite_at(spd(np.random.default_rng(16), (3,), 2), (1,), 2)
    with pytest.raises(np.linalg.LinAlgError, match=r"cov matrix at batch index \(1,\) is not positive definite \(leading minor of order 2\)"):
        fastgauss.mvn_logpdf(*on(backend, np.zeros((3, 2)), np.zeros(2), cov), backend=backend)
    with pytest.raises(ValueError, match=r"mean must have shape \(\.\.\., 2\) \(d = 2 from x\); got \(3,\)"):
        fastgauss.mvn_logpdf(np.zeros(2), np.zeros(3), np.eye(2), backend="cpu")
    with pytest.raises(ValueError, match="pass exactly one of cov and scale_tril"):
        fastgauss.mvn_logpdf(np.zeros(2), np.zeros(2), backend="cpu")


# --- mvn_kl ----------------------------------------------------------------------------------


def normal_kl_closed_form(mean1, logvar1, mean2, logvar2):
    """KL between diagonal Gaussians, summed over the last axis (the closed form of normal_kl)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + np.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * np.exp(-logvar2)).sum(axis=-1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_diagonal_against_closed_form(backend, dtype):
    rng = np.random.default_rng(17)
    n, d = 7, 4
    mean1, mean2 = rng.standard_normal((2, n, d))
    logvar1, logvar2 = rng.uniform(-2, 2, (2, n, d))
    diag = lambda logvar: np.exp(logvar)[..., None] * np.eye(d)  # noqa: E731
    args = [a.astype(dtype) for a in (mean1, diag(logvar1), mean2, diag(logvar2))]
    got = to_numpy(fastgauss.mvn_kl(*on(backend, *args), backend=backend))
    m1, c1, m2, c2 = (a.astype(np.float64) for a in args)  # the same (rounded) inputs
    lv1, lv2 = np.log(np.diagonal(c1, axis1=-2, axis2=-1)), np.log(np.diagonal(c2, axis1=-2, axis2=-1))
    expected = normal_kl_closed_form(m1, lv1, m2, lv2)
    assert got.shape == (n,) and got.dtype == dtype
    # float64: 1e-12 relative; float32: computed in float64 and rounded once
    np.testing.assert_allclose(got, expected, rtol={np.float32: 2e-7, np.float64: 1e-12}[dtype], atol=1e-12)


def test_kl_against_monte_carlo():
    """KL = E_{x ~ N1}[log p1(x) - log p2(x)], estimated with NumPy's generator and scipy's densities
    (independent of fastgauss); 5 standard errors."""
    m1, m2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, -1.5])
    c1 = np.array([[1.0, 0.3, 0.1], [0.3, 2.0, -0.4], [0.1, -0.4, 0.8]])
    c2 = np.array([[1.5, -0.2, 0.0], [-0.2, 1.0, 0.3], [0.0, 0.3, 1.2]])
    x = np.random.default_rng(18).multivariate_normal(m1, c1, size=400_000)
    ratio = stats.multivariate_normal.logpdf(x, m1, c1) - stats.multivariate_normal.logpdf(x, m2, c2)
    for backend in ["numpy"] + compiled():
        got = float(to_numpy(fastgauss.mvn_kl(*on(backend, m1, c1, m2, c2), backend=backend)))
        assert abs(got - ratio.mean()) < 5 * ratio.std() / math.sqrt(x.shape[0])


def test_kl_broadcasting_parity_and_errors(backend):
    rng = np.random.default_rng(19)
    d = 3
    m1, c1 = rng.standard_normal((4, d)), spd(rng, (4,), d)
    m2, c2 = rng.standard_normal((2, 1, d)), spd(rng, (1,), d)
    got = to_numpy(fastgauss.mvn_kl(*on(backend, m1, c1, m2, c2), backend=backend))
    assert got.shape == (2, 4)
    for i, j in np.ndindex(2, 4):  # each pair on its own, through the reference
        one = fastgauss.mvn_kl(m1[j], c1[j], m2[i, 0], c2[0], backend="numpy")
        assert abs(got[i, j] - one) <= 1e-12 * max(1.0, abs(one))
    assert np.all(got > 0)
    same = to_numpy(fastgauss.mvn_kl(*on(backend, m1, c1, m1, c1), backend=backend))
    np.testing.assert_allclose(same, 0, atol=1e-13)  # KL(p || p) = 0 to rounding
    with pytest.raises(np.linalg.LinAlgError, match=r"cov2 matrix at batch index \(0,\) is not positive definite \(leading minor of order 1\)"):
        fastgauss.mvn_kl(*on(backend, m1, c1, m2, indefinite_at(c2.copy(), (0,), 1)), backend=backend)
    with pytest.raises(np.linalg.LinAlgError, match=r"cov1 matrix at batch index \(3,\)"):
        fastgauss.mvn_kl(*on(backend, m1, indefinite_at(c1.copy(), (3,), 2), m2, c2), backend=backend)


@pytest.mark.parametrize("d, cov_batch", [(4, (6,)), (4, (1,)), (LAPACK_MIN_D + 1, (6,))])
def test_float32_inputs_give_the_float64_result_rounded(d, cov_batch):
    # The cpu kernels read float32 inputs as they are and widen each value on load (no float64
    # copy first): the result must be the float64 computation on the widened inputs, rounded.
    # Cases: covariances factored in the kernel, one covariance factored first, LAPACK's order.
    rng = np.random.default_rng(23)
    x, m1, m2 = (rng.standard_normal((6, d)).astype(np.float32) for _ in range(3))
    c1, c2 = (spd(rng, cov_batch, d).astype(np.float32) for _ in range(2))
    wide = [a.astype(np.float64) for a in (x, m1, c1, m2, c2)]
    got = fastgauss.mvn_logpdf(x, m1, c1, backend="cpu")
    want = fastgauss.mvn_logpdf(wide[0], wide[1], wide[2], backend="cpu").astype(np.float32)
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))
    got = fastgauss.mvn_kl(m1, c1, m2, c2, backend="cpu")
    want = fastgauss.mvn_kl(*wide[1:], backend="cpu").astype(np.float32)
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))


# --- parity over random shapes (hypothesis) ------------------------------------------------------

batch_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


@st.composite
def mvn_cases(draw):
    d = draw(st.sampled_from([3, 4, 10]))  # few orders: each d <= 8 compiles its own kernels (10: run-time d)
    seed = draw(st.integers(0, 2**32 - 1))
    shapes = [draw(batch_shapes) for _ in range(4)]
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        shapes = [shapes[0]] * 4
    dtype = draw(st.sampled_from(DTYPES))
    return d, seed, shapes, dtype


@settings(max_examples=40, deadline=None)
@given(case=mvn_cases())
def test_cpu_parity_with_reference_over_shapes(case):
    d, seed, (s1, s2, s3, s4), dtype = case
    rng = np.random.default_rng(seed)
    mean1, mean2 = rng.standard_normal(s1 + (d,)).astype(dtype), rng.standard_normal(s3 + (d,)).astype(dtype)
    cov1, cov2 = spd(rng, s2, d).astype(dtype), spd(rng, s4, d).astype(dtype)
    rtol = {np.float32: 1e-6, np.float64: 1e-12}[dtype]
    for op, args in (("mvn_kl", (mean1, cov1, mean2, cov2)), ("mvn_logpdf", (mean2, mean1, cov1))):
        ref = getattr(fastgauss, op)(*args, backend="numpy")
        got = getattr(fastgauss, op)(*args, backend="cpu")
        assert got.shape == ref.shape and got.dtype == ref.dtype == dtype
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol)
    noise = rng.standard_normal((2,) + np.broadcast_shapes(s1, s2) + (d,)).astype(dtype)
    ref = fastgauss.mvn_sample(mean1, cov1, noise=noise, backend="numpy")
    np.testing.assert_allclose(fastgauss.mvn_sample(mean1, cov1, noise=noise, backend="cpu"), ref, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(fastgauss.cholesky(cov2, backend="cpu"), fastgauss.cholesky(cov2, backend="numpy"), rtol=rtol, atol=rtol)


def test_non_contiguous_host_inputs():
    rng = np.random.default_rng(20)
    cov = np.swapaxes(spd(rng, (3, 4), 3), 0, 1)  # (4, 3, 3, 3): batch axes not mergeable
    mean = rng.standard_normal((3, 8))[:, ::2].T  # (4, 3), strided
    x = rng.standard_normal((4, 3, 3))
    for op, args in (("mvn_logpdf", (x, mean[:, None, :], cov)), ("cholesky", (cov,))):
        np.testing.assert_allclose(
            getattr(fastgauss, op)(*args, backend="cpu"), getattr(fastgauss, op)(*(np.ascontiguousarray(a) for a in args), backend="numpy"),
            rtol=1e-13, atol=1e-13,
        )


def test_zero_dimensional_gaussians_and_empty_batches(backend):
    empty_d = np.zeros((3, 0))
    assert to_numpy(fastgauss.mvn_sample(*on(backend, empty_d, np.zeros((3, 0, 0))), rng=0, backend=backend)).shape == (3, 0)
    np.testing.assert_array_equal(to_numpy(fastgauss.mvn_logpdf(*on(backend, empty_d, empty_d, np.zeros((3, 0, 0))), backend=backend)), 0.0)
    np.testing.assert_array_equal(to_numpy(fastgauss.mvn_kl(*on(backend, empty_d, np.zeros((3, 0, 0)), empty_d, np.zeros((3, 0, 0))), backend=backend)), 0.0)
    assert to_numpy(fastgauss.mvn_sample(*on(backend, np.zeros((0, 3)), np.zeros((0, 3, 3))), size=3, rng=0, backend=backend)).shape == (3, 0, 3)
    assert to_numpy(fastgauss.mvn_logpdf(*on(backend, np.zeros((0, 3)), np.zeros(3), np.eye(3)), backend=backend)).shape == (0,)
    g = fastgauss.default_rng(0)
    before = g.state
    fastgauss.mvn_sample(*on(backend, np.zeros(3), np.eye(3)), size=0, rng=g, backend=backend)
    assert g.state == before  # no element drawn, no block used


# --- Generator.multivariate_normal --------------------------------------------------------------


@pytest.mark.parametrize("size", [None, 5, (2, 3)])
def test_multivariate_normal_matches_numpy_shapes_and_mvn_sample(backend, size):
    mean, cov = np.array([1.0, -1.0, 0.0]), np.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.7]])
    expected_shape = np.random.default_rng(0).multivariate_normal(mean, cov, size=size).shape
    g, twin = fastgauss.default_rng(21), fastgauss.default_rng(21)
    got = to_numpy(g.multivariate_normal(*on(backend, mean, cov), size=size, backend=backend))
    assert got.shape == expected_shape and got.dtype == np.float64
    np.testing.assert_array_equal(got, to_numpy(fastgauss.mvn_sample(*on(backend, mean, cov), size=size, rng=twin, backend=backend)))
    assert g.state == twin.state
    z = fastgauss.default_rng(21).standard_normal(expected_shape, backend="numpy")
    reference = mean + (np.linalg.cholesky(cov) @ z[..., None])[..., 0]  # numpy.linalg, not fastgauss
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-13)  # 1e-14 normals through |L| < 2
    batched = g.multivariate_normal(np.zeros((4, 3)), np.broadcast_to(cov, (4, 3, 3)), size=2, backend="cpu")
    assert batched.shape == (2, 4, 3)
    listed = fastgauss.default_rng(1).multivariate_normal([0, 0, 0], [[1, 0, 0], [0, 1, 0], [0, 0, 1]], 3)  # lists of ints
    assert listed.shape == (3, 3) and listed.dtype == np.float64


def test_multivariate_normal_check_valid(backend):
    asymmetric = np.array([[1.0, 0.5, 0.0], [0.4, 1.0, 0.0], [0.0, 0.0, 1.0]])
    near_symmetric = np.array([[1.0, 0.4 + 1e-9, 0.0], [0.4, 1.0, 0.0], [0.0, 0.0, 1.0]])  # within tol=1e-8
    indefinite = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # eigenvalues 3, 1 and -1
    singular = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # PSD, not PD: Cholesky cannot sample it
    g = fastgauss.default_rng(22)
    mean = np.zeros(3)

    def draw(cov, **kwargs):
        return g.multivariate_normal(*on(backend, mean, cov), size=4, backend=backend, **kwargs)

    with pytest.warns(RuntimeWarning, match="covariance is not symmetric positive-semidefinite"):
        draw(asymmetric)
    with pytest.raises(ValueError, match="covariance is not symmetric positive-semidefinite .*not symmetric"):
        draw(asymmetric, check_valid="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lower = to_numpy(draw(asymmetric, check_valid="ignore"))  # sampled from the lower triangle
        draw(near_symmetric, tol=1e-8)
    assert lower.shape == (4, 3)
    with pytest.raises(ValueError, match=r"covariance is not symmetric positive-semidefinite \(cov matrix at batch index \(\)\)"):
        draw(indefinite, check_valid="raise")
    with pytest.warns(RuntimeWarning, match="covariance is not symmetric positive-semidefinite"):
        with pytest.raises(np.linalg.LinAlgError, match="leading minor of order 2"):
            draw(indefinite)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for check_valid in ("warn", "raise", "ignore"):
            with pytest.raises(np.linalg.LinAlgError, match="leading minor of order 2"):
                draw(singular, check_valid=check_valid)
    with pytest.raises(ValueError, match="check_valid must equal 'warn', 'raise', or 'ignore'"):
        draw(np.eye(3), check_valid="loud")
    with pytest.raises(ValueError, match="method must be 'cholesky'"):
        draw(np.eye(3), method="svd")


# --- determinism --------------------------------------------------------------------------------

DIGEST_SCRIPT = """
import hashlib, numpy as np, numba, fastgauss
rng = np.random.default_rng(3)
a = rng.standard_normal((30_001, 4, 4)); cov = a @ a.swapaxes(-1, -2) / 4 + 0.5 * np.eye(4)
mean = rng.standard_normal((30_001, 4))
digest = hashlib.sha256()
for dtype in (np.float32, np.float64):
    c, m = cov.astype(dtype), mean.astype(dtype)
    digest.update(fastgauss.cholesky(c).tobytes())
    x = fastgauss.mvn_sample(m, c, rng=5)
    digest.update(x.tobytes() + fastgauss.mvn_sample(m[0], c[0], size=20_001, rng=6).tobytes())
    digest.update(fastgauss.mvn_logpdf(x, m, c).tobytes() + fastgauss.mvn_kl(m, c, m[::-1], c[::-1]).tobytes())
print(numba.get_num_threads(), digest.hexdigest())
"""


def test_bitwise_identical_for_any_thread_count():
    assert_same_digest_for_thread_counts(DIGEST_SCRIPT)
