"""Multivariate normals: batched Cholesky, mvn_sample, mvn_logpdf and mvn_kl against NumPy.

The "numpy" row of each group is the NumPy way named in its group: numpy.linalg.cholesky;
for sampling, numpy.linalg.cholesky + NumPy's generator + matmul, or a Python loop over
NumPy's Generator.multivariate_normal; for logpdf and KL, fastgauss's vectorized NumPy
reference. The crossover groups time the small-matrix kernel (forced past LAPACK_MIN_D)
against LAPACK (numpy.linalg.cholesky) at 2**22 matrix elements per call.
"""

import numpy as np
import pytest

import fastgauss
import fastgauss.cpu.mvn
from conftest import on_backend, run

BATCH = 100_000


def inputs(batch, d, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((batch, d, d))
    cov = (a @ np.swapaxes(a, -1, -2) / d + 0.5 * np.eye(d)).astype(dtype)
    mean = rng.standard_normal((batch, d)).astype(dtype)
    return mean, cov


def test_mvn_sample(benchmark, backend):
    benchmark.group = "mvn_sample 100k 4x4 float64, one sample each (numpy: cholesky + generator + matmul)"
    benchmark.extra_info["dtype"] = "float64"
    mean, cov = inputs(BATCH, 4)
    nbytes = cov.nbytes + 2 * mean.nbytes  # read cov and mean, write the samples
    if backend == "numpy":
        generator = np.random.default_rng(1)

        def numpy_way():
            L = np.linalg.cholesky(cov)
            z = generator.standard_normal(mean.shape)
            return mean + (L @ z[..., None])[..., 0]

        run(benchmark, "numpy", numpy_way, nbytes)
        return
    rng = fastgauss.default_rng(2)
    mean, cov = on_backend(backend, mean, cov)
    run(benchmark, backend, lambda: fastgauss.mvn_sample(mean, cov, rng=rng, backend=backend), nbytes)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_mvn_sample_against_a_python_loop(benchmark, backend):
    benchmark.group = "mvn_sample 100k 4x4 float64 (numpy: Python loop of Generator.multivariate_normal)"
    benchmark.extra_info.update(dtype="float64", backend=backend)
    mean, cov = inputs(BATCH, 4)
    benchmark.extra_info["bytes"] = cov.nbytes + 2 * mean.nbytes
    if backend == "numpy":  # about 2.5 s a call: two rounds
        generator = np.random.default_rng(3)

        def loop():
            return [generator.multivariate_normal(mean[i], cov[i]) for i in range(BATCH)]

        benchmark.pedantic(loop, rounds=2, iterations=1)
        return
    rng = fastgauss.default_rng(4)
    benchmark(lambda: fastgauss.mvn_sample(mean, cov, rng=rng, backend="cpu"))


def test_mvn_sample_one_distribution(benchmark, backend):
    benchmark.group = "mvn_sample one 4x4 cov, 1M samples float64 (numpy: Generator.multivariate_normal)"
    benchmark.extra_info["dtype"] = "float64"
    mean, cov = inputs(1, 4)
    n = 1_000_000
    nbytes = n * 4 * 8
    if backend == "numpy":
        generator = np.random.default_rng(5)
        run(benchmark, "numpy", lambda: generator.multivariate_normal(mean[0], cov[0], size=n, method="cholesky"), nbytes)
        return
    rng = fastgauss.default_rng(6)
    mean, cov = on_backend(backend, mean[0], cov[0])
    run(benchmark, backend, lambda: fastgauss.mvn_sample(mean, cov, size=n, rng=rng, backend=backend), nbytes)


@pytest.mark.parametrize("d, dtype", [(2, "float64"), (4, "float64"), (4, "float32"), (8, "float64")])
def test_cholesky_small(benchmark, backend, d, dtype):
    benchmark.group = f"cholesky 100k {d}x{d} {dtype}"
    benchmark.extra_info["dtype"] = dtype
    _, cov = inputs(BATCH, d, dtype)
    nbytes = 2 * cov.nbytes
    if backend == "numpy":
        run(benchmark, "numpy", lambda: np.linalg.cholesky(cov), nbytes)
        return
    (cov,) = on_backend(backend, cov)
    run(benchmark, backend, lambda: fastgauss.cholesky(cov, backend=backend), nbytes)


def test_cholesky_large(benchmark, backend):
    benchmark.group = "cholesky 16 256x256 float64"
    benchmark.extra_info["dtype"] = "float64"
    _, cov = inputs(16, 256)
    nbytes = 2 * cov.nbytes
    if backend == "numpy":
        run(benchmark, "numpy", lambda: np.linalg.cholesky(cov), nbytes)
        return
    (cov,) = on_backend(backend, cov)
    run(benchmark, backend, lambda: fastgauss.cholesky(cov, backend=backend), nbytes)


@pytest.mark.parametrize("d", [8, 16, 24, 32, 48, 64, 96, 128])
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_cholesky_crossover(benchmark, backend, d, monkeypatch):
    count = 2**22 // (d * d)
    benchmark.group = f"crossover: cholesky {count} {d}x{d} float64 (numpy: LAPACK; cpu: the kernel)"
    benchmark.extra_info["dtype"] = "float64"
    _, cov = inputs(count, d)
    if backend == "numpy":
        run(benchmark, "numpy", lambda: np.linalg.cholesky(cov), 2 * cov.nbytes)
        return
    monkeypatch.setattr(fastgauss.cpu.mvn, "LAPACK_MIN_D", 10**9)  # force the small-matrix kernel
    run(benchmark, "cpu", lambda: fastgauss.cholesky(cov, backend="cpu"), 2 * cov.nbytes)


def test_mvn_logpdf(benchmark, backend):
    benchmark.group = "mvn_logpdf 100k 4x4 float64 (numpy: the vectorized reference)"
    benchmark.extra_info["dtype"] = "float64"
    mean, cov = inputs(BATCH, 4)
    x = mean + 1.0
    x, mean, cov = on_backend(backend, x, mean, cov)
    nbytes = cov.nbytes + 2 * mean.nbytes + BATCH * 8
    run(benchmark, backend, lambda: fastgauss.mvn_logpdf(x, mean, cov, backend=backend), nbytes)


def test_mvn_kl(benchmark, backend):
    benchmark.group = "mvn_kl 100k 4x4 pairs float64 (numpy: the vectorized reference)"
    benchmark.extra_info["dtype"] = "float64"
    mean1, cov1 = inputs(BATCH, 4, seed=1)
    mean2, cov2 = inputs(BATCH, 4, seed=2)
    arrays = on_backend(backend, mean1, cov1, mean2, cov2)
    nbytes = 2 * (cov1.nbytes + mean1.nbytes) + BATCH * 8
    run(benchmark, backend, lambda: fastgauss.mvn_kl(*arrays, backend=backend), nbytes)
