"""The counter-based generator: Philox known answers, the stream definition, cross-backend
agreement, the vectorizable log/sincos, statistical quality, the Generator API, and
q_sample with in-kernel noise."""

import copy
import math
import pickle
import threading

import numba
import numpy as np
import pytest
from scipy import stats

import fastgauss
from conftest import assert_same_digest_for_thread_counts, CUDA_USABLE, to_backend, to_numpy

# Tolerances of the compiled normals against the NumPy reference (which uses NumPy's
# log/sin/cos), relative to max(1, |z|): the stated accuracy of the stream.
NORMAL_RTOL = {np.float32: 1e-6, np.float64: 1e-14}
EPS32 = float(np.finfo(np.float32).eps)
DTYPES = [np.float32, np.float64]


def compiled_backends():
    return ["cpu", "cuda"] if CUDA_USABLE else ["cpu"]


# --- Philox4x32-10 -----------------------------------------------------------------------

# Known-answer vectors of Random123 (kat_vectors) for philox4x32_10.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_known_answers(backend, counter, key, expected):
    counters = to_backend(np.array([counter], np.uint32), backend)
    keys = to_backend(np.array([key], np.uint32), backend)
    got = to_numpy(fastgauss.random.philox4x32_10(counters, keys, backend=backend))
    assert got.dtype == np.uint32 and got.shape == (1, 4)
    assert tuple(int(w) for w in got[0]) == expected


def test_philox_broadcasts_leading_dimensions_on_the_host():
    rng = np.random.default_rng(0)
    counters = rng.integers(0, 2**32, size=(3, 1, 4), dtype=np.uint32)
    keys = rng.integers(0, 2**32, size=(5, 2), dtype=np.uint32)
    for backend in ("numpy", "cpu"):
        got = fastgauss.random.philox4x32_10(counters, keys, backend=backend)
        assert got.shape == (3, 5, 4)
        for i in range(3):
            for j in range(5):  # each element is the single-block Philox of its own counter and key
                one = fastgauss.random.philox4x32_10(counters[i, 0], keys[j], backend="numpy")
                np.testing.assert_array_equal(got[i, j], one)


def test_raw_words_are_bitwise_identical_on_every_backend():
    rng = np.random.default_rng(1)
    counters = rng.integers(0, 2**32, size=(64, 4), dtype=np.uint32)
    keys = rng.integers(0, 2**32, size=(64, 2), dtype=np.uint32)
    expected = fastgauss.random.philox4x32_10(counters, keys, backend="numpy")
    for backend in compiled_backends():
        got = fastgauss.random.philox4x32_10(to_backend(counters, backend), to_backend(keys, backend), backend=backend)
        np.testing.assert_array_equal(to_numpy(got), expected)


@pytest.mark.parametrize(
    "counters, keys, exc, match",
    [
        (np.zeros(3, np.uint32), np.zeros(2, np.uint32), ValueError, r"counters must have shape \(\.\.\., 4\); got \(3,\)"),
        (np.zeros(4, np.uint32), np.zeros((2, 3), np.uint32), ValueError, r"keys must have shape \(\.\.\., 2\)"),
        (np.zeros((2, 4), np.uint32), np.zeros((3, 2), np.uint32), ValueError, r"do not broadcast"),
        (np.zeros(4), np.zeros(2, np.uint32), TypeError, r"counters must hold unsigned 32-bit integers; got dtype float64"),
        (np.array([0, 0, 0, 2**32]), np.zeros(2, np.uint32), ValueError, r"counters must hold values in \[0, 2\*\*32\)"),
        (np.zeros(4, np.uint32), np.array([-1, 0]), ValueError, r"keys must hold values in \[0, 2\*\*32\)"),
    ],
)
def test_philox_errors(counters, keys, exc, match):
    with pytest.raises(exc, match=match):
        fastgauss.random.philox4x32_10(counters, keys, backend="cpu")


# --- the stream definition ------------------------------------------------------------


def words_of_blocks(key, first_block, count):
    """Philox words of blocks first_block.. as uint64, straight from the definition."""
    counters = np.array([[(n >> (32 * i)) & 0xFFFFFFFF for i in range(4)] for n in range(first_block, first_block + count)], np.uint32)
    keys = np.array([key & 0xFFFFFFFF, key >> 32], np.uint32)
    return fastgauss.random.philox4x32_10(counters, keys, backend="numpy").astype(np.uint64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stream_definition_element_by_element(backend, dtype):
    """Element i comes from block offset + i // (4 or 2), with the documented bit recipes."""
    rng = fastgauss.default_rng(2026)
    rng.state = dict(rng.state, counter=2**64 - 3)  # crosses a 64-bit carry in the counter
    key, offset = rng.state["key"], rng.state["counter"]
    n = 13
    uniforms = to_numpy(rng.random(n, dtype=dtype, backend=backend))
    normals = to_numpy(rng.standard_normal(n, dtype=dtype, backend=backend))
    per_block = 4 if dtype == np.float32 else 2
    used = -(-n // per_block)
    w = words_of_blocks(key, offset, used)
    if dtype == np.float32:
        expected_u = (w >> np.uint64(8)).astype(np.float64).reshape(-1)[:n] * 2.0**-24
    else:
        hi, lo = w[:, 0::2], w[:, 1::2]
        expected_u = ((hi >> np.uint64(5)).astype(np.float64) * 2.0**26 + (lo >> np.uint64(6))).reshape(-1)[:n] * 2.0**-53
    np.testing.assert_array_equal(uniforms, expected_u.astype(dtype))  # uniforms: exact everywhere
    # the normals were drawn after the uniforms: their blocks follow
    w2 = words_of_blocks(key, offset + used, used)
    if dtype == np.float32:
        u = (w2[:, 0::2] >> np.uint64(1)).astype(np.float32) * np.float32(2.0**-31) + np.float32(2.0**-32)
        angle = 2 * np.pi * (w2[:, 1::2] >> np.uint64(8)).astype(np.float64) * 2.0**-24
    else:
        u = ((w2[:, 0:1] >> np.uint64(11)).astype(np.float64) * 2.0**32 + w2[:, 1:2]) * 2.0**-53 + 2.0**-54
        angle = 2 * np.pi * ((w2[:, 2:3] >> np.uint64(11)).astype(np.float64) * 2.0**32 + w2[:, 3:4]) * 2.0**-53
    r = np.sqrt(-2 * np.log(u.astype(np.float64)))
    expected_z = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=-1).reshape(-1)[:n]
    np.testing.assert_allclose(normals, expected_z, rtol=0, atol=NORMAL_RTOL[dtype] * max(1, np.abs(expected_z).max()))
    assert rng.state["counter"] == offset + 2 * used  # each call advanced by the blocks it used


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefix_and_offset_properties(dtype):
    """A shorter call is a prefix of a longer one; starting one block later shifts by a block."""
    per_block = 4 if dtype == np.float32 else 2
    base = fastgauss.default_rng(7)
    state = base.state
    long = base.standard_normal(1001, dtype=dtype)
    base.state = state
    short = base.standard_normal(17, dtype=dtype)
    np.testing.assert_array_equal(short, long[:17])
    base.state = dict(state, counter=state["counter"] + 1)
    shifted = base.standard_normal(1001 - per_block, dtype=dtype)
    np.testing.assert_array_equal(shifted, long[per_block:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["standard_normal", "random"])
def test_compiled_backends_against_reference(backend, dtype, method):
    n = 1003 if backend != "cuda" else 203  # odd sizes exercise the partial last block
    results = {}
    for name in ("numpy", backend):
        rng = fastgauss.default_rng(99)
        rng.state = dict(rng.state, counter=2**96 + 5)
        results[name] = to_numpy(getattr(rng, method)(n, dtype=dtype, backend=name))
    if method == "random":
        np.testing.assert_array_equal(results[backend], results["numpy"])
    else:
        scale = np.maximum(1.0, np.abs(results["numpy"].astype(np.float64)))
        assert np.all(np.abs(results[backend] - results["numpy"]) <= NORMAL_RTOL[dtype] * scale)


@pytest.mark.skipif(not CUDA_USABLE, reason="cuda backend not usable")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_and_cuda_agree(dtype):
    got = {}
    for backend in ("numpy", "cpu", "cuda"):
        got[backend] = to_numpy(fastgauss.default_rng(5).standard_normal(301, dtype=dtype, backend=backend))
    scale = np.maximum(1.0, np.abs(got["numpy"].astype(np.float64)))
    assert np.all(np.abs(got["cuda"] - got["cpu"]) <= {np.float32: 1e-6, np.float64: 1e-12}[dtype] * scale)
    for backend in ("cpu", "cuda"):  # each within the stated accuracy of the reference
        assert np.all(np.abs(got[backend] - got["numpy"]) <= NORMAL_RTOL[dtype] * scale), backend


DIGEST_SCRIPT = """
import hashlib, numpy as np, numba, fastgauss
digest = hashlib.sha256()
rng = fastgauss.default_rng(11)
for dtype in (np.float32, np.float64):
    digest.update(rng.standard_normal((3, 50_001), dtype=dtype).tobytes())
    digest.update(rng.random(40_003, dtype=dtype).tobytes())
    x0 = np.linspace(-1, 1, 6 * 30_001).reshape(6, 30_001).astype(dtype)
    xt, eps = fastgauss.q_sample(x0, np.arange(6) * 150, fastgauss.NoiseSchedule.linear(1000), rng=rng, return_noise=True)
    digest.update(xt.tobytes() + eps.tobytes())
print(numba.get_num_threads(), digest.hexdigest())
"""


def test_bitwise_identical_for_any_thread_count():
    assert_same_digest_for_thread_counts(DIGEST_SCRIPT)


# --- the vectorizable log and sincos ------------------------------------------------------

from fastgauss.cpu.random import _d as DEVICE  # noqa: E402  (the compiled scalar functions)


@numba.njit(error_model="numpy")
def _apply_log(x, out, which):
    for i in range(x.size):
        out[i] = DEVICE_LOG32(x[i]) if which == 32 else DEVICE_LOG64(x[i])


DEVICE_LOG32, DEVICE_LOG64 = DEVICE.log_unit32, DEVICE.log_unit64
DEVICE_SC32, DEVICE_SC64 = DEVICE.sincos_turn32, DEVICE.sincos_turn64


@numba.njit(error_model="numpy")
def _apply_sincos(u, s, c, which):
    for i in range(u.size):
        if which == 32:
            s[i], c[i] = DEVICE_SC32(u[i])
        else:
            s[i], c[i] = DEVICE_SC64(u[i])


def ulp_error(got, x):
    exact = np.log(x.astype(np.float64))
    spacing = np.spacing(np.abs(exact).astype(got.dtype)).astype(np.float64)
    return np.abs(got.astype(np.float64) - exact) / spacing


def test_log32_within_3_ulp_on_its_whole_domain():
    rng = np.random.default_rng(0)
    binade = np.arange(2**23, 2**24, dtype=np.float32) / np.float32(2**24)  # every float32 in [0.5, 1)
    spread = np.exp2(-rng.uniform(0, 64, 2_000_000)).astype(np.float32)  # log-uniform over [2**-64, 1]
    edges = np.array([1.0, np.nextafter(np.float32(1), np.float32(0)), 2.0**-64, 2.0**-32, 2.0**-33, 0.70710677, 0.70710683], np.float32)
    for x in (binade, spread, edges):
        got = np.empty_like(x)
        _apply_log(x, got, 32)
        assert ulp_error(got, x).max() <= 3
    got = np.empty(1, np.float32)
    _apply_log(np.ones(1, np.float32), got, 32)
    assert got[0] == 0.0


def test_log64_within_3_ulp_on_its_whole_domain():
    rng = np.random.default_rng(1)
    x = np.concatenate([np.exp2(-rng.uniform(0, 64, 2_000_000)), rng.uniform(0.5, 1, 1_000_000), [1.0, 1 - 2**-53, 2.0**-64, 2.0**-54]])
    got = np.empty_like(x)
    _apply_log(x, got, 64)
    assert ulp_error(got, x).max() <= 3


# The CPU reads the log's range reduction from the exponent field (fastgauss.cpu.random's
# _reduce_unit); the portable steps are the definition: the same (m, e), bit for bit.
PORTABLE = fastgauss._device.compile_for(numba.njit(error_model="numpy"), fastgauss._device.random)
PORTABLE_REDUCE32, PORTABLE_REDUCE64 = PORTABLE.reduce_unit32, PORTABLE.reduce_unit64
CPU_REDUCE32, CPU_REDUCE64 = DEVICE.reduce_unit32, DEVICE.reduce_unit64


@numba.njit(error_model="numpy", parallel=True)
def _reduce_mismatches32(first_bits, last_bits):
    """How many float32 x with bits in [first_bits, last_bits] reduce differently."""
    mismatches = 0
    for i in numba.prange(last_bits - first_bits + 1):
        x = np.int32(first_bits + i).view(np.float32)
        m, e = PORTABLE_REDUCE32(x)
        m_cpu, e_cpu = CPU_REDUCE32(x)
        if m != m_cpu or e != e_cpu:
            mismatches += 1
    return mismatches


@numba.njit(error_model="numpy")
def _reduce64(x, m, e, cpu):
    for i in range(x.size):
        m[i], e[i] = CPU_REDUCE64(x[i]) if cpu else PORTABLE_REDUCE64(x[i])


def test_cpu_range_reduction_is_the_portable_one_bit_for_bit():
    """Every float32 in [2**-64, 1] (5.4e8 values), and float64 log-uniform samples plus the edges of
    every binade (powers of two, sqrt(1/2) times them and their neighbours)."""
    first, last = np.float32(2.0**-64).view(np.int32), np.float32(1.0).view(np.int32)
    assert _reduce_mismatches32(int(first), int(last)) == 0
    sqrt_half = fastgauss._device.random.SQRT_HALF64
    edges = [2.0**-k * f for k in range(64) for f in (1.0, sqrt_half, 2 * sqrt_half, np.nextafter(2 * sqrt_half, 0), np.nextafter(2 * sqrt_half, 2))]
    x = np.concatenate([np.exp2(-np.random.default_rng(3).uniform(0, 64, 2_000_000)), [v for v in edges if 2.0**-64 <= v <= 1]])
    results = [np.empty_like(x) for _ in range(4)]
    _reduce64(x, results[0], results[1], True)
    _reduce64(x, results[2], results[3], False)
    np.testing.assert_array_equal(results[0], results[2])
    np.testing.assert_array_equal(results[1], results[3])


@pytest.mark.parametrize("bits, bound", [(32, 2.0**-23), (64, 2.0**-50)])
def test_sincos_of_turns_on_their_whole_domain(bits, bound):
    if bits == 32:  # every angle the float32 stream can produce: k * 2**-24
        u = np.arange(2**24, dtype=np.float32) * np.float32(2.0**-24)
    else:
        u = np.concatenate([np.random.default_rng(2).uniform(0, 1, 3_000_000), np.arange(9) / 8, [1 - 2**-53]])
    s, c = np.empty_like(u), np.empty_like(u)
    _apply_sincos(u, s, c, bits)
    angle = 2 * np.pi * u.astype(np.float64)
    assert np.abs(s - np.sin(angle)).max() <= bound
    assert np.abs(c - np.cos(angle)).max() <= bound


DEVICE_BM32, DEVICE_BM64 = DEVICE.box_muller32, DEVICE.box_muller64


@numba.njit(error_model="numpy")
def _box_muller32(w0, w1):  # the device functions have no Python entry point of their own
    return DEVICE_BM32(w0, w1)


@numba.njit(error_model="numpy")
def _box_muller64(w0, w1, w2, w3):
    return DEVICE_BM64(w0, w1, w2, w3)


@pytest.mark.parametrize("bits, reach", [(32, math.sqrt(64 * math.log(2))), (64, math.sqrt(108 * math.log(2)))])
def test_normal_tails_reach_the_stated_bound(bits, reach):
    """The smallest u (all radius bits zero) gives the largest |z|: 6.660 (float32), 8.652 (float64)."""
    zero, angle0 = np.uint64(0), np.uint64(0)
    if bits == 32:
        z0, _ = _box_muller32(zero, angle0)
        assert reach >= 6.5
    else:
        z0, _ = _box_muller64(zero, zero, angle0, angle0)
        assert reach >= 8.0
    assert z0 == pytest.approx(reach, rel=1e-6)


# --- statistical quality ------------------------------------------------------------------


@pytest.fixture(scope="module", params=DTYPES, ids=["float32", "float64"])
def big_sample(request):
    return request.param, fastgauss.default_rng(12345).standard_normal(4_000_000, dtype=request.param).astype(np.float64)


def test_moments(big_sample):
    dtype, z = big_sample
    n = z.size
    # 5 standard errors: mean sd 1/sqrt(n), variance sqrt(2/n), skewness sqrt(6/n), excess kurtosis sqrt(24/n)
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24 / n)


def test_kolmogorov_smirnov_against_standard_normal(big_sample):
    dtype, z = big_sample
    result = stats.kstest(z[:1_000_000], "norm")
    assert result.pvalue > 1e-3, result


def test_tail_frequency_beyond_4_sigma(big_sample):
    dtype, z = big_sample
    expected = z.size * 2 * stats.norm.sf(4)  # about 253
    count = np.count_nonzero(np.abs(z) > 4)
    assert abs(count - expected) < 5 * math.sqrt(expected)
    assert np.abs(z).max() <= (6.661 if dtype == np.float32 else 8.653)


def test_neighbouring_elements_are_uncorrelated(big_sample):
    dtype, z = big_sample
    bound = 5 / math.sqrt(z.size)
    for lag in (1, 2, 3, 4, 5):  # within a Box-Muller pair, within a block, across blocks
        assert abs(np.corrcoef(z[:-lag], z[lag:])[0, 1]) < bound
    assert abs(np.corrcoef(z[0::2] ** 2, z[1::2] ** 2)[0, 1]) < 5 * math.sqrt(2 / z.size)  # pairs share a radius


def test_spawned_streams_are_uncorrelated():
    children = fastgauss.default_rng(3).spawn(3)
    draws = [child.standard_normal(500_000) for child in children]
    assert len({child.state["key"] for child in children}) == 3
    for i in range(3):
        for j in range(i + 1, 3):
            assert abs(np.corrcoef(draws[i], draws[j])[0, 1]) < 5 / math.sqrt(500_000)


def test_uniforms_are_uniform():
    for dtype in DTYPES:
        u = fastgauss.default_rng(8).random(1_000_000, dtype=dtype)
        assert u.min() >= 0 and u.max() < 1
        counts = np.histogram(u, bins=100, range=(0, 1))[0]
        assert stats.chisquare(counts).pvalue > 1e-3


# --- the Generator API -------------------------------------------------------------------


def test_state_save_and_restore():
    rng = fastgauss.default_rng(21)
    rng.standard_normal(10)
    saved = rng.state
    first = (rng.standard_normal(7, dtype=np.float32), rng.random(5), rng.normal(2.0, 3.0, size=4))
    rng.standard_normal(1000)
    rng.state = saved
    second = (rng.standard_normal(7, dtype=np.float32), rng.random(5), rng.normal(2.0, 3.0, size=4))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    replay = fastgauss.default_rng(0)
    replay.state = saved  # the state alone (key + counter) replays the run
    np.testing.assert_array_equal(replay.standard_normal(7, dtype=np.float32), first[0])


@pytest.mark.parametrize("clone", [lambda g: pickle.loads(pickle.dumps(g)), copy.copy, copy.deepcopy], ids=["pickle", "copy", "deepcopy"])
def test_pickle_and_copy_continue_the_stream_independently(clone):
    """As NumPy's Generator: a copy (a DataLoader worker's, a deepcopied config's) holds the state
    and draws what the original would draw next, without advancing the original; its children
    are the original's. The original drew with the reference (what is compared is the stream)."""
    rng = fastgauss.default_rng(5)
    rng.random(3, backend="numpy")
    twin = clone(rng)
    assert twin.state == rng.state and twin is not rng
    drawn = twin.standard_normal(6, backend="numpy")
    assert twin.state != rng.state  # the original did not advance
    np.testing.assert_array_equal(rng.standard_normal(6, backend="numpy"), drawn)
    assert [c.state for c in twin.spawn(2)] == [c.state for c in rng.spawn(2)]


@pytest.mark.parametrize(
    "state, exc",
    [
        ({"key": -1, "counter": 0}, ValueError),
        ({"key": 0, "counter": 2**128}, ValueError),
        ({"key": 1.5, "counter": 0}, TypeError),
        ({"bit_generator": "PCG64", "key": 0, "counter": 0}, ValueError),
        ("not a dict", ValueError),
    ],
)
def test_bad_state_is_rejected(state, exc):
    rng = fastgauss.default_rng(0)
    before = rng.state
    with pytest.raises(exc):
        rng.state = state
    assert rng.state == before


def test_seeding_like_numpy():
    np.testing.assert_array_equal(fastgauss.default_rng(5).random(8), fastgauss.default_rng(5).random(8))
    assert not np.array_equal(fastgauss.default_rng(5).random(8), fastgauss.default_rng(6).random(8))
    assert not np.array_equal(fastgauss.default_rng().random(8), fastgauss.default_rng().random(8))
    sequence = np.random.SeedSequence(77)
    np.testing.assert_array_equal(fastgauss.default_rng(sequence).random(4), fastgauss.default_rng(77).random(4))
    rng = fastgauss.default_rng(1)
    assert fastgauss.default_rng(rng) is rng
    for bad in (1.5, "seed", True):
        with pytest.raises(TypeError, match="seed must be"):
            fastgauss.default_rng(bad)
    with pytest.raises(TypeError, match="seed is a NumPy Generator"):
        fastgauss.default_rng(np.random.default_rng(3))
    with pytest.raises(ValueError):
        fastgauss.default_rng(-1)


def test_shapes_dtypes_and_scalars():
    rng = fastgauss.default_rng(0)
    assert isinstance(rng.standard_normal(), float) and isinstance(rng.random(), float)
    assert isinstance(rng.normal(1.0, 2.0), float)
    assert rng.standard_normal(size=()).shape == ()
    assert rng.standard_normal(5).shape == (5,)
    assert rng.standard_normal((2, 0, 3)).shape == (2, 0, 3)
    x = rng.standard_normal((2, 3), dtype=np.float32)
    assert x.dtype == np.float32 and x.shape == (2, 3)
    assert rng.random((4,), dtype="float32").dtype == np.float32
    assert rng.normal(np.zeros((3, 1)), np.ones(4)).shape == (3, 4)
    for bad in (np.int32, np.float16, np.complex128):
        with pytest.raises(TypeError, match="Unsupported dtype"):
            rng.standard_normal(3, dtype=bad)
    with pytest.raises(ValueError, match="size must be non-negative"):
        rng.random(-1)
    with pytest.raises(ValueError, match="scale < 0"):
        rng.normal(0.0, -1.0, size=3)
    with pytest.raises(ValueError, match="do not broadcast to size"):
        rng.normal(np.zeros(3), 1.0, size=(2,))


def test_normal_is_loc_plus_scale_times_standard_normal():
    a, b = fastgauss.default_rng(4), fastgauss.default_rng(4)
    loc, scale = np.array([[1.0], [-2.0]]), np.array([0.5, 2.0, 3.0])
    got = a.normal(loc, scale, size=(2, 3))
    np.testing.assert_allclose(got, loc + scale * b.standard_normal((2, 3)), rtol=1e-15)


def test_out_argument():
    rng, twin = fastgauss.default_rng(9), fastgauss.default_rng(9)
    out = np.full((3, 5), np.nan, np.float32)
    assert rng.standard_normal(out=out, dtype=np.float32) is out
    np.testing.assert_array_equal(out, twin.standard_normal((3, 5), dtype=np.float32))
    reference = fastgauss.default_rng(9).standard_normal((3, 5), dtype=np.float32, backend="numpy")
    assert np.all(np.abs(out - reference) <= NORMAL_RTOL[np.float32] * np.maximum(1.0, np.abs(reference)))
    before = rng.state
    with pytest.raises(TypeError, match="wrong type"):
        rng.standard_normal(out=np.empty(3, np.float32))  # dtype defaults to float64
    with pytest.raises(ValueError, match="C-contiguous"):
        rng.random(out=np.empty((4, 4))[:, ::2])
    with pytest.raises(ValueError, match="must match the shape of out"):
        rng.random(size=5, out=np.empty(4))
    assert rng.state == before  # failed calls do not advance the stream


def test_a_shared_generator_hands_out_disjoint_ranges_to_threads():
    rng = fastgauss.default_rng(10)
    results = [None] * 8

    def draw(i):
        results[i] = rng.random(4 * 1000, dtype=np.float32)

    threads = [threading.Thread(target=draw, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    whole = fastgauss.default_rng(10).random(4 * 8000, dtype=np.float32).reshape(8, 4000)
    np.testing.assert_array_equal(whole.reshape(-1), fastgauss.default_rng(10).random(4 * 8000, dtype=np.float32, backend="numpy"))
    # each thread got one of the 8 consecutive ranges, none twice
    matches = sorted(int(np.flatnonzero((whole == r).all(axis=1))[0]) for r in results)
    assert matches == list(range(8))


# --- q_sample with noise generated in the kernel -----------------------------------------

SCHEDULE = fastgauss.NoiseSchedule.cosine(1000)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_sample", [True, False])
def test_generated_noise_equals_standard_normal_exactly(backend, dtype, per_sample):
    shape = (3, 2, 7, 5) if backend != "cuda" else (3, 1, 5, 7)  # 210 / 105 elements: partial blocks
    x0 = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    t = np.array([0, 400, 999]) if per_sample else 321
    rng, twin = fastgauss.default_rng(31), fastgauss.default_rng(31)
    for generator in (rng, twin):
        generator.state = dict(generator.state, counter=2**32 - 1)
    xt, eps = fastgauss.q_sample(
        to_backend(x0, backend), to_backend(t, backend) if per_sample else t, SCHEDULE, rng=rng, return_noise=True, backend=backend
    )
    reference_twin = fastgauss.default_rng(31)
    reference_twin.state = twin.state
    expected_eps = to_numpy(twin.standard_normal(shape, dtype=dtype, backend=backend))
    np.testing.assert_array_equal(to_numpy(eps), expected_eps)
    assert rng.state == twin.state
    reference_eps = reference_twin.standard_normal(shape, dtype=dtype, backend="numpy")
    assert np.all(np.abs(expected_eps - reference_eps) <= NORMAL_RTOL[dtype] * np.maximum(1.0, np.abs(reference_eps)))
    reference = fastgauss.reference.q_sample(x0, t, SCHEDULE, expected_eps)
    tolerance = 4 * np.finfo(dtype).eps * (np.abs(x0) + np.abs(expected_eps))
    assert np.all(np.abs(to_numpy(xt) - reference) <= tolerance)


def test_generated_noise_without_return_and_with_out(backend):
    x0 = np.linspace(-2, 2, 60).reshape(3, 20).astype(np.float32)
    out = to_backend(np.empty_like(x0), backend)
    result = fastgauss.q_sample(to_backend(x0, backend), 10, SCHEDULE, rng=4, out=out, backend=backend)
    assert result is out
    eps = to_numpy(fastgauss.default_rng(4).standard_normal(x0.shape, dtype=np.float32, backend=backend))
    expected = fastgauss.reference.q_sample(x0, 10, SCHEDULE, eps)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-6, atol=1e-6)


def test_in_place_with_generated_noise():
    x0 = np.random.default_rng(3).standard_normal((4, 100))
    noise = fastgauss.default_rng(8).standard_normal(x0.shape, backend="numpy")
    reference = fastgauss.reference.q_sample(x0, np.arange(4), SCHEDULE, noise)
    expected = fastgauss.q_sample(x0, np.arange(4), SCHEDULE, rng=8, backend="cpu")
    fastgauss.q_sample(x0, np.arange(4), SCHEDULE, rng=8, out=x0, backend="cpu")
    np.testing.assert_array_equal(x0, expected)
    np.testing.assert_allclose(x0, reference, rtol=0, atol=1e-13)  # 1e-14 normals, |x| < 10


def test_noise_and_rng_together_is_an_error_and_errors_do_not_advance():
    rng = fastgauss.default_rng(0)
    before = rng.state
    x0 = np.zeros((2, 3))
    with pytest.raises(ValueError, match="pass either noise or rng, not both"):
        fastgauss.q_sample(x0, 0, SCHEDULE, np.zeros((2, 3)), rng=rng)
    with pytest.raises(ValueError, match=r"t must be in \[0, 1000\)"):
        fastgauss.q_sample(x0, 1000, SCHEDULE, rng=rng)
    with pytest.raises(TypeError, match="rng must be a fastgauss.Generator"):
        fastgauss.q_sample(x0, 0, SCHEDULE, rng=np.random.default_rng(0))
    assert rng.state == before


@pytest.mark.parametrize("t", [10, 700])
def test_generated_forward_process_statistics(t):
    n = 400_000
    x0 = np.full((2, n // 2), -0.7, np.float32)
    xt32 = fastgauss.q_sample(x0, t, SCHEDULE, rng=t, backend="cpu")
    noise = fastgauss.default_rng(t).standard_normal(x0.shape, dtype=np.float32, backend="numpy")
    reference = fastgauss.reference.q_sample(x0, t, SCHEDULE, noise)  # 4 eps32 (|x0| + |noise|) + the 1e-6 normals
    assert np.all(np.abs(xt32 - reference) <= 4 * EPS32 * (0.7 + np.abs(noise)) + 1e-6 * np.maximum(1.0, np.abs(noise)))
    xt = xt32.astype(np.float64).ravel()
    abar = SCHEDULE.alphas_cumprod[t]
    assert abs(xt.mean() - math.sqrt(abar) * -0.7) < 5 * math.sqrt((1 - abar) / n)
    assert abs(xt.var() - (1 - abar)) < 5 * (1 - abar) * math.sqrt(2 / n)
    assert stats.kstest((xt - math.sqrt(abar) * -0.7) / math.sqrt(1 - abar), "norm").pvalue > 1e-3


@pytest.mark.skipif(not CUDA_USABLE, reason="cuda backend not usable")
def test_generator_on_the_gpu():
    from numba import cuda

    rng, twin = fastgauss.default_rng(12), fastgauss.default_rng(12)
    out = cuda.device_array((5, 7), np.float32)
    assert rng.standard_normal(dtype=np.float32, out=out, backend="cuda") is out
    np.testing.assert_array_equal(out.copy_to_host(), twin.standard_normal((5, 7), dtype=np.float32, backend="cuda").copy_to_host())
    reference = fastgauss.default_rng(12).standard_normal((5, 7), dtype=np.float32, backend="numpy")
    assert np.all(np.abs(out.copy_to_host() - reference) <= NORMAL_RTOL[np.float32] * np.maximum(1.0, np.abs(reference)))
    shifted = rng.normal(3.0, 2.0, size=(4,), backend="cuda").copy_to_host()
    expected = 3.0 + 2.0 * twin.standard_normal(4, backend="cuda").copy_to_host()
    np.testing.assert_allclose(shifted, expected, rtol=1e-15)
    with pytest.raises(TypeError, match="loc"):
        rng.normal(np.zeros(3), 1.0, backend="cuda")
    assert isinstance(rng.standard_normal(backend="cuda"), float)
