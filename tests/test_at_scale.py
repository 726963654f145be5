"""Correctness that depends on size: every backend against the NumPy reference past one
work chunk of the CPU kernels and across several blocks of the CUDA kernels.

The CPU kernels split their work into chunks (the generator: BLOCKS_PER_CHUNK Philox
blocks = 4096 float32 / 2048 float64 values; the diffusion and KL kernels: CHUNK = 16384
elements of a row; mvn_sample: at most MAX_PER_CHUNK vectors), the CUDA kernels into
blocks of THREADS threads; an index mistake in either shows only past the first one.

Generated noise is compared through the reference given the same noise: the noise an
op draws from a generator equals ``standard_normal`` of the output shape from a twin
generator in the same state, so the twin draws it with the numpy backend and the
reference op gets it as ``noise=``. The compiled normals match the reference's within
NORMAL_RTOL * max(1, |z|) (the stated accuracy of the stream), so every tolerance below
is the op's own rounding plus that noise tolerance carried through the op's noise
coefficient.

Sizes: 50,001 generated values and rows of CHUNK + 3,617 elements on the host (and on a
GPU); the CUDA simulator, which runs each thread in Python, gets rows and outputs that
span two to four CUDA blocks (the last one partial) and skips the 70,000-wide reductions.
"""

import math

import numpy as np
import pytest

import fastgauss
from conftest import SIMULATOR, to_backend, to_numpy
from fastgauss.cpu import CHUNK
from fastgauss.cpu.mvn import MAX_PER_CHUNK
from fastgauss.cpu.random import BLOCKS_PER_CHUNK
from fastgauss.cuda import THREADS
from test_kl import assert_within, discretized_bound, kl_terms, logpdf_terms

pytestmark = [  # the simulator evaluates device code with NumPy scalars (see test_kl.py)
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

DTYPES = [np.float32, np.float64]
EPS = {np.float32: float(np.finfo(np.float32).eps), np.float64: float(np.finfo(np.float64).eps)}
NORMAL_RTOL = {np.float32: 1e-6, np.float64: 1e-14}  # compiled normals vs the reference, relative to max(1, |z|)
PER_BLOCK = {np.float32: 4, np.float64: 2}  # values per Philox block
SCHEDULE = fastgauss.NoiseSchedule.linear(1000)


def on_simulator(backend):
    return backend == "cuda" and SIMULATOR


def generator(seed, counter):
    """A generator at ``counter`` (a 32-bit carry of the counter then falls inside the call)."""
    g = fastgauss.default_rng(seed)
    g.state = dict(g.state, counter=counter)
    return g


# --- the generator -------------------------------------------------------------------------


def from_the_definition(key, offset, indices, dtype, method):
    """Elements ``indices`` of a call at (key, offset), from the stream definition (the
    docstring of fastgauss.reference.random), one Philox block at a time."""
    per_block = PER_BLOCK[dtype]
    indices = np.asarray(indices)
    blocks = [offset + int(i) // per_block for i in indices]
    counters = np.array([[(n >> (32 * k)) & 0xFFFFFFFF for k in range(4)] for n in blocks], np.uint32)
    keys = np.array([key & 0xFFFFFFFF, key >> 32], np.uint32)
    w = fastgauss.random.philox4x32_10(counters, keys, backend="numpy").astype(np.uint64)
    lane = indices % per_block
    rows = np.arange(indices.size)
    if method == "random":
        if dtype == np.float32:
            return (w[rows, lane] >> np.uint64(8)).astype(np.float64) * 2.0**-24
        hi, lo = w[rows, 2 * lane] >> np.uint64(5), w[rows, 2 * lane + 1] >> np.uint64(6)
        return (hi.astype(np.float64) * 2.0**26 + lo.astype(np.float64)) * 2.0**-53
    if dtype == np.float32:  # Box-Muller on (w0, w1) for lanes 0, 1 and on (w2, w3) for lanes 2, 3
        pair = lane // 2
        a, b = w[rows, 2 * pair], w[rows, 2 * pair + 1]
        u = (a >> np.uint64(1)).astype(np.float32) * np.float32(2.0**-31) + np.float32(2.0**-32)
        turn = (b >> np.uint64(8)).astype(np.float64) * 2.0**-24
        first = lane % 2 == 0
    else:
        u = ((w[:, 0] >> np.uint64(11)).astype(np.float64) * 2.0**32 + w[:, 1].astype(np.float64)) * 2.0**-53 + 2.0**-54
        turn = ((w[:, 2] >> np.uint64(11)).astype(np.float64) * 2.0**32 + w[:, 3].astype(np.float64)) * 2.0**-53
        first = lane == 0
    radius = np.sqrt(-2.0 * np.log(u.astype(np.float64)))
    return np.where(first, radius * np.cos(2 * np.pi * turn), radius * np.sin(2 * np.pi * turn))


def generated_count(backend, dtype):
    """50,001 values (13 / 25 CPU chunks); the simulator: 701 Philox blocks, three CUDA blocks."""
    return 700 * PER_BLOCK[dtype] + 1 if on_simulator(backend) else 50_001


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["standard_normal", "random"])
def test_generator_past_one_chunk_matches_the_reference(backend, dtype, method):
    """Every value against the reference (uniforms bitwise, normals within NORMAL_RTOL), and
    the values at chunk and block boundaries against the stream definition."""
    n = generated_count(backend, dtype)
    counter = 2**32 - 3 * BLOCKS_PER_CHUNK + 5  # the carry into the counter's second word: in the third chunk
    g = generator(16, counter)
    got = to_numpy(getattr(g, method)(n, dtype=dtype, backend=backend))
    assert got.shape == (n,) and got.dtype == dtype
    assert g.state["counter"] == counter + -(-n // PER_BLOCK[dtype])
    ref = getattr(generator(16, counter), method)(n, dtype=dtype, backend="numpy")
    scale = np.maximum(1.0, np.abs(ref.astype(np.float64)))
    tolerance = 0.0 if method == "random" else NORMAL_RTOL[dtype]
    if method == "random":
        np.testing.assert_array_equal(got, ref)
    else:
        error = np.abs(got.astype(np.float64) - ref) / scale
        assert error.max() <= tolerance, f"max error {error.max():.3g} at {error.argmax()}"
    chunk, block = BLOCKS_PER_CHUNK * PER_BLOCK[dtype], THREADS * PER_BLOCK[dtype]
    edges = [0, 1, block - 1, block, 2 * block + 1, chunk - 1, chunk, chunk + 1, 3 * chunk + 2, n - 2, n - 1]
    indices = np.unique([i for i in edges if 0 <= i < n])
    expected = from_the_definition(g.state["key"], counter, indices, dtype, method)
    scale = np.maximum(1.0, np.abs(expected))
    assert np.all(np.abs(got[indices] - expected) <= tolerance * scale)  # uniforms: exactly


# --- q_sample, ddpm_step and ddim_step with generated noise ---------------------------------------


def step_shape(backend):
    """Rows wider than a CPU work chunk (and 3 of them); the simulator: 2 rows of 1,100, wider
    than the 1,024 float32 / 512 float64 elements one CUDA block of the step kernel covers."""
    return (2, 1_100) if on_simulator(backend) else (3, CHUNK + 3_617)


def step_times(rows):
    t = np.array([999, 400, 1])[:rows]
    return t, np.array([979, 380, -1])[:rows]


def run_step(op, backend, data, t, t_prev, **kwargs):
    """op on ``backend`` (data and timesteps moved there), or the reference op on host arrays."""
    if backend == "reference":
        function, moved, times = getattr(fastgauss.reference, op), data, (t, t_prev)
    else:
        function, moved, times = getattr(fastgauss, op), [to_backend(a, backend) for a in data], (to_backend(t, backend), to_backend(t_prev, backend))
        kwargs["backend"] = backend
    if op == "q_sample":
        return function(moved[0], times[0], SCHEDULE, **kwargs)
    if op == "ddpm_step":
        return function(*moved, times[0], SCHEDULE, **kwargs)
    return function(*moved, *times, SCHEDULE, eta=0.7, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["q_sample", "ddpm_step", "ddim_step"])
def test_steps_with_generated_noise_past_one_chunk_match_the_reference(backend, op, dtype):
    """The op with noise drawn in the kernel equals the reference op given the twin's noise.

    The ops are linear in (data, noise) for a fixed t: out = A m + B x + C z per row, and the
    coefficients are read off the reference (float64, unit inputs). Tolerance: 16 eps(dtype)
    (|A m| + |B x| + |C z|) for the evaluation, plus NORMAL_RTOL max(1, |z|) |C| for the noise."""
    shape = step_shape(backend)
    rng = np.random.default_rng(3)
    data = [rng.standard_normal(shape).astype(dtype) for _ in range(1 if op == "q_sample" else 2)]
    t, t_prev = step_times(shape[0])
    counter = 2**64 - 5_000  # a carry into the counter's third word, past the first chunk
    g = generator(23, counter)
    kwargs = {"return_noise": True} if op == "q_sample" else {}
    result = run_step(op, backend, data, t, t_prev, rng=g, **kwargs)
    got = to_numpy(result[0] if op == "q_sample" else result)
    twin = generator(23, counter)
    z = twin.standard_normal(shape, dtype=dtype, backend="numpy")
    assert g.state == twin.state
    ref = run_step(op, "reference", data, t, t_prev, noise=z)
    assert got.shape == ref.shape == shape and got.dtype == ref.dtype == dtype
    if op == "q_sample":
        eps = to_numpy(result[1])
        assert np.all(np.abs(eps.astype(np.float64) - z) <= NORMAL_RTOL[dtype] * np.maximum(1.0, np.abs(z)))
    ones, zeros = np.ones(shape), np.zeros(shape)
    basis = [[ones if k == i else zeros for k in range(len(data))] for i in range(len(data))]
    data_coefficients = [run_step(op, "reference", b, t, t_prev, noise=zeros) for b in basis]
    noise_coefficient = run_step(op, "reference", [zeros] * len(data), t, t_prev, noise=ones)
    z64 = z.astype(np.float64)
    scale = sum(np.abs(c * d.astype(np.float64)) for c, d in zip(data_coefficients, data)) + np.abs(noise_coefficient * z64)
    bound = 16 * EPS[dtype] * scale + NORMAL_RTOL[dtype] * np.maximum(1.0, np.abs(z64)) * np.abs(noise_coefficient)
    excess = np.abs(got.astype(np.float64) - ref) - bound
    assert np.all(excess <= 0), f"max excess {excess.max():.3g} at {np.unravel_index(excess.argmax(), shape)}"


# --- mvn_sample with generated noise -------------------------------------------------------------


def spd(rng, batch, d):
    a = rng.standard_normal(tuple(batch) + (d, d))
    return a @ np.swapaxes(a, -1, -2) / d + 0.5 * np.eye(d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", ["a covariance per vector", "one covariance"])
def test_mvn_sample_past_one_chunk_matches_the_reference(backend, dtype, path):
    """More vectors than a CPU work item holds (MAX_PER_CHUNK; the simulator: three CUDA blocks
    of one vector per thread), d = 3 so vectors straddle Philox blocks. Tolerance per element:
    4 eps(dtype) (|mean| + |L| |z|) + NORMAL_RTOL (|L| max(1, |z|))."""
    n, d = (2 * THREADS + 89 if on_simulator(backend) else 3 * MAX_PER_CHUNK + 5), 3
    rng = np.random.default_rng(4)
    if path == "a covariance per vector":
        mean, cov, size = rng.standard_normal((n, d)).astype(dtype), spd(rng, (n,), d).astype(dtype), None
    else:
        mean, cov, size = rng.standard_normal(d).astype(dtype), spd(rng, (), d).astype(dtype), n
    counter = 2**32 - 1_000
    g = generator(8, counter)
    got = to_numpy(fastgauss.mvn_sample(to_backend(mean, backend), to_backend(cov, backend), size=size, rng=g, backend=backend))
    twin = generator(8, counter)
    z = twin.standard_normal((n, d), dtype=dtype, backend="numpy")
    assert g.state == twin.state
    ref = fastgauss.reference.mvn_sample(mean, cov, noise=z)
    assert got.shape == ref.shape == (n, d) and got.dtype == dtype
    L = np.abs(np.linalg.cholesky(cov.astype(np.float64)))
    z64 = z.astype(np.float64)
    bound = 4 * EPS[dtype] * (np.abs(mean) + (L @ np.abs(z64)[..., None])[..., 0])
    bound += NORMAL_RTOL[dtype] * (L @ np.maximum(1.0, np.abs(z64))[..., None])[..., 0]
    excess = np.abs(got.astype(np.float64) - ref) - bound
    assert np.all(excess <= 0), f"max excess {excess.max():.3g} at {np.unravel_index(excess.argmax(), excess.shape)}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_cholesky_logpdf_and_kl_past_one_chunk_match_the_reference(backend, dtype):
    """cholesky, mvn_logpdf and mvn_kl over more matrices than a CPU work item holds (the
    simulator: three CUDA blocks), with a shared second argument for the broadcast paths:
    1e-6 (float32) / 1e-12 (float64) relative and absolute, as the parity tests of test_mvn.py."""
    if backend == "numpy":
        pytest.skip("the reference itself (test_mvn.py holds it to numpy.linalg and scipy)")
    n, d = (2 * THREADS + 89 if on_simulator(backend) else 3 * MAX_PER_CHUNK + 5), 3
    rng = np.random.default_rng(5)
    mean1, mean2, x = (rng.standard_normal((n, d)).astype(dtype) for _ in range(3))
    cov1, cov2 = spd(rng, (n,), d).astype(dtype), spd(rng, (), d).astype(dtype)
    tol = {np.float32: 1e-6, np.float64: 1e-12}[dtype]
    for op, args in (("cholesky", (cov1,)), ("mvn_logpdf", (x, mean1, cov1)), ("mvn_logpdf", (x, mean2[0], cov2)),
                     ("mvn_kl", (mean1, cov1, mean2, cov2)), ("mvn_kl", (mean2[0], cov2, mean1, cov1))):
        ref = getattr(fastgauss.reference, op)(*args)
        got = to_numpy(getattr(fastgauss, op)(*(to_backend(a, backend) for a in args), backend=backend))
        assert got.shape == ref.shape and got.dtype == ref.dtype == dtype
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol, err_msg=op)


# --- reductions over rows of several CUDA blocks and several CPU chunks ----------------------------

KL_OPS = ["normal_kl", "normal_logpdf", "discretized_gaussian_log_likelihood"]
WIDTHS = [300, 1000, 70_000]  # not multiples of 256: partial last blocks; 70,000: 5 CPU chunks, 274 CUDA blocks


def kl_family_case(op, dtype, rows, width, rng):
    """Arguments (full tensors and one per-sample value) and the elementwise error bound of
    the compiled evaluation (the bounds of test_kl.py)."""
    eps = EPS[dtype]
    if op == "normal_kl":
        mean1, logvar1, mean2 = (rng.uniform(-2, 2, (rows, width)).astype(dtype) for _ in range(3))
        logvar2 = rng.uniform(-2, 2, (rows, 1)).astype(dtype)
        args = [mean1, logvar1, mean2, logvar2]
        return args, 16 * eps * kl_terms(*args)
    if op == "normal_logpdf":
        x, mean = (rng.uniform(-2, 2, (rows, width)).astype(dtype) for _ in range(2))
        logvar = rng.uniform(-2, 2, (rows, 1)).astype(dtype)
        args = [x, mean, logvar]
        return args, 16 * eps * logpdf_terms(*args)
    x = (np.round(rng.uniform(-1, 1, (rows, width)) * 127.5) / 127.5).astype(dtype)
    x[:, :2] = (-1.0, 1.0)  # both edge bins
    log_scales = rng.uniform(math.log(0.01), math.log(0.5), (rows, width)).astype(dtype)
    means = (x + np.exp(log_scales.astype(np.float64)) * rng.uniform(-2, 2, (rows, 1))).astype(dtype)
    args = [x, means, log_scales]
    elementwise = fastgauss.reference.discretized_gaussian_log_likelihood(*args)
    return args, discretized_bound(*args, 255, elementwise, dtype)


def simulator_selection(op, dtype, reduce, width):
    """The simulator runs 1/4 of the cases: each op sum over 2 rows of 300 and mean over 1 row of
    1000, the dtypes alternating between the two and from op to op; nothing over 70,000."""
    if width == 70_000 or (width == 300) != (reduce == "sum"):
        return False
    return (dtype == np.float32) == ((KL_OPS.index(op) + (width == 300)) % 2 == 0)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", KL_OPS)
def test_reductions_over_many_blocks_match_the_reference(backend, op, dtype, reduce, width):
    """reduce="sum"/"mean" against the reference within the summed elementwise bounds plus a
    final rounding (test_kl.assert_within); the reference itself against math.fsum of its
    float64 elementwise values."""
    if on_simulator(backend) and not simulator_selection(op, dtype, reduce, width):
        pytest.skip("the simulator runs a quarter of the cases (simulator_selection)")
    rows = (2 if width == 300 else 1) if on_simulator(backend) else (2 if width == 70_000 else 3)
    rng = np.random.default_rng([width, KL_OPS.index(op)])
    args, bound = kl_family_case(op, dtype, rows, width, rng)
    ref = getattr(fastgauss.reference, op)(*args, reduce=reduce)
    if backend == "numpy":
        values = getattr(fastgauss.reference, op)(*(a.astype(np.float64) for a in args))
        exact = np.array([math.fsum(row) for row in values]) / (width if reduce == "mean" else 1)
        np.testing.assert_allclose(ref, exact, rtol=2 * EPS[dtype], atol=0)
        return
    got = to_numpy(getattr(fastgauss, op)(*(to_backend(a, backend) for a in args), reduce=reduce, backend=backend))
    assert got.shape == ref.shape == (rows,) and got.dtype == ref.dtype == dtype
    assert_within(got, ref, np.broadcast_to(bound, (rows, width)), dtype, reduce)
