"""Division by a constant without the divider (fastgauss._device.random.divide): the CPU's
multiply-and-FMA quotients must be the correctly rounded z / y, bit for bit, so that the
stream is the one the true divisions define.

- the premises of the proof (in fastgauss._device.random), recomputed exactly with Fractions;
- the CPU quotients against NumPy's true division over the whole domain of z, with the cases
  a wrong algorithm gets wrong (quotients next to a midpoint, exact quotients, binade edges);
- sincos_turn64, log_unit64 and the float64 normals against a build that divides;
- the float64 normals on the AVX2 target (FMAs) and the SSE2 target (no FMA: the division).
"""

import hashlib
import inspect
import re
from fractions import Fraction

import numba
import numpy as np
import pytest

import fastgauss
from conftest import run_python
from fastgauss import _device
from fastgauss._device import random as _random
from fastgauss.cpu import prefer_wide_vectors
from fastgauss.cpu.kl import _fma
from fastgauss.cpu.random import _d as CPU

CPU_DIVIDE = CPU.divide  # fastgauss.cpu.random's multiply-and-FMA version

DIVISORS = {name: value for name, value in vars(_random).items() if re.fullmatch(r"DIV\d+", name)}
LIMIT = Fraction(1, 2**54)  # the lemma's bound on the relative error of q0's argument


def premise_bound(d):
    """An upper bound of |eps| in w = (z / y)(1 + eps), w the value q0 rounds (see the proof)."""
    y, h, *low = (Fraction(v) for v in d)
    if not low:
        return abs(y * h - 1)
    return abs(y * (h + low[0]) - 1) + y * abs(low[0]) / 2**53


def rounds_to_nearest(value, exact):
    """value = RN(exact): no float is nearer (a tie cannot occur: exact is no dyadic midpoint here)."""
    neighbours = (np.nextafter(value, -np.inf), np.nextafter(value, np.inf))
    return all(abs(Fraction(float(n)) - exact) > abs(Fraction(value) - exact) for n in neighbours)


def test_the_series_divide_by_exactly_these_constants():
    used = set()
    for function in (_random.sincos_turn64, _random.log_unit64):
        source = inspect.getsource(function)
        assert re.findall(r"z / (\d+)", source) in ([], ["2"])  # z / 2 is exact (a multiply)
        used |= set(re.findall(r"divide\(z, (DIV\d+)\)", source))
    assert used == set(DIVISORS)
    assert sorted(int(d[0]) for d in DIVISORS.values()) == [6, 12, 20, 21, 30, 42, 56, 72, 90, 110, 132, 156, 182, 210, 240, 272, 306]


@pytest.mark.parametrize("name", sorted(DIVISORS, key=lambda n: int(n[3:])))
def test_the_premises_of_the_proof_hold(name):
    d = DIVISORS[name]
    y = int(d[0])
    assert d[0] == y and y & (y - 1) != 0  # an integer, no power of two
    assert rounds_to_nearest(d[1], Fraction(1, y))  # h = RN(1/y) ...
    assert abs(Fraction(d[1]) * y - 1) < Fraction(1, 2**53)  # ... so Markstein's (ii)
    if len(d) == 3:
        assert rounds_to_nearest(d[2], Fraction(1, y) - Fraction(d[1]))  # l = RN(1/y - h)
    assert premise_bound(d) <= LIMIT  # (i): q0 is faithful


@pytest.mark.parametrize(
    "d",
    [
        (6.0, float(np.nextafter(1 / 6, 1))),  # not RN(1/6): 3 2**-54
        (182.0, 1 / 182),  # why 182 and 210 take two constants: 45/32 2**-54
        (210.0, 1 / 210),  # 13/8 2**-54
        (210.0, 1 / 210, 0.0),  # a missing low part is no better
    ],
)
def test_the_premise_check_can_fail(d):
    assert premise_bound(d) > LIMIT


# --- the CPU quotients against true division ----------------------------------------------


@numba.njit(error_model="numpy")
def _cpu_quotients(z, d, out):
    prefer_wide_vectors()
    for i in range(z.size):
        out[i] = CPU_DIVIDE(z[i], d)


@numba.njit(error_model="numpy")
def _next_to_midpoints(q, y, out):
    """For each quotient q: RN(y (q + ulp(q)/2)) and its two neighbours on each side, the z whose
    z / y lie nearest the midpoint above q (where a rounding that is off shows first)."""
    for i in range(q.size):
        half_ulp = (np.nextafter(q[i], np.inf) - q[i]) * 0.5
        z = _fma(y, q[i], y * half_ulp)
        out[5 * i] = z
        out[5 * i + 1] = np.nextafter(z, np.inf)
        out[5 * i + 2] = np.nextafter(out[5 * i + 1], np.inf)
        out[5 * i + 3] = np.nextafter(z, -np.inf)
        out[5 * i + 4] = np.nextafter(out[5 * i + 3], -np.inf)


def _bits_between(rng, low, high, n):
    """n floats drawn uniformly among the float64 bit patterns in [low, high]: every binade alike."""
    return rng.integers(np.float64(low).view(np.int64), np.float64(high).view(np.int64), n, endpoint=True).view(np.float64)


def _around(values, k):
    """values and their k neighbours on each side."""
    out = [values]
    up = down = values
    for _ in range(k):
        up, down = np.nextafter(up, np.inf), np.nextafter(down, -np.inf)
        out += [up, down]
    return np.concatenate(out)


# z over the domain the series see ({0} and [2**-110, 0.62], see the proof) and beyond it
Z_LOW, Z_HIGH = 2.0**-120, 1.0
POWERS = 2.0 ** np.arange(-120, 1)
Z_MAX = (0.125 * (2 * np.pi)) ** 2  # the largest z of sincos_turn64 (a = 1/8 turn)
Z_SHARED = np.concatenate(
    [_bits_between(np.random.default_rng(5), Z_LOW, Z_HIGH, 5_000_000), _around(POWERS, 40), _around(np.array([Z_MAX]), 3), [0.0]]
)


def _cases(y, rng):
    """About 10 million z for the divisor y, of which 5 million are y's own hard cases."""
    q_low, q_high = Z_LOW / y, Z_HIGH / y
    q = _bits_between(rng, q_low, q_high, 900_000)
    near = np.empty(5 * q.size)
    _next_to_midpoints(q, y, near)
    exact = y * (_bits_between(rng, q_low, q_high, 500_000).view(np.int64) & ~np.int64(1023)).view(np.float64)  # z / y exact
    edges = _around(y * POWERS[(POWERS >= q_low) & (POWERS <= q_high)], 40)  # quotients at binade edges
    return np.concatenate([Z_SHARED, near, exact, edges])


def test_cpu_quotients_are_the_correctly_rounded_quotients():
    rng = np.random.default_rng(6)
    for name, d in DIVISORS.items():
        z = _cases(d[0], rng)
        assert z.size >= 10_000_000 and z.min() >= 0 and z.max() < 1.01
        got = np.empty_like(z)
        _cpu_quotients(z, d, got)
        expected = z / d[0]
        wrong = np.flatnonzero(got.view(np.int64) != expected.view(np.int64))
        assert wrong.size == 0, (name, z[wrong[:5]], got[wrong[:5]], expected[wrong[:5]])


# --- the stream: the same bits as a build that divides -----------------------------------

DIVIDING = _device.compile_for(numba.njit(error_model="numpy", forceinline=True), _random)  # no overrides: z / y
CPU_SINCOS, CPU_LOG, DIV_SINCOS, DIV_LOG = CPU.sincos_turn64, CPU.log_unit64, DIVIDING.sincos_turn64, DIVIDING.log_unit64
DIV_BLOCK, DIV_BOX_MULLER = DIVIDING.block, DIVIDING.box_muller64


@numba.njit(error_model="numpy")
def _series_both_ways(u, x, out):
    prefer_wide_vectors()
    for i in range(u.size):
        out[0, i], out[1, i] = CPU_SINCOS(u[i])
        out[2, i], out[3, i] = DIV_SINCOS(u[i])
        out[4, i] = CPU_LOG(x[i])
        out[5, i] = DIV_LOG(x[i])


@numba.njit(error_model="numpy")
def _dividing_normals(n, key, counter):
    """The float64 standard normals from (key, counter), by the dividing build."""
    mask = np.uint64(0xFFFFFFFF)
    k0, k1 = key & mask, key >> np.uint64(32)
    out = np.empty(2 * ((n + 1) // 2))
    for j in range(out.size // 2):
        w0, w1, w2, w3 = DIV_BLOCK(counter[0], counter[1], counter[2], counter[3], k0, k1, np.uint64(j))
        out[2 * j], out[2 * j + 1] = DIV_BOX_MULLER(w0, w1, w2, w3)
    return out[:n]


def test_sincos_and_log_keep_their_bits():
    rng = np.random.default_rng(7)
    edges = np.array([0.0, 2.0**-53, 1 / 8, 1 / 8 - 2.0**-53, 1 / 8 + 2.0**-53, 3 / 8, 5 / 8, 7 / 8, 1 - 2.0**-53])
    u = np.concatenate([rng.random(2_000_000), np.arange(2**16) * 2.0**-53, 1 / 8 + np.arange(-2**15, 2**15) * 2.0**-53, edges])
    x = np.concatenate([np.exp2(-rng.uniform(0, 64, u.size - 2**12)), 1 + np.arange(-2**11, 2**11) * 2.0**-53])
    out = np.empty((6, u.size))
    _series_both_ways(u, x, out)
    bits = out.view(np.int64)
    assert np.array_equal(bits[0], bits[2]) and np.array_equal(bits[1], bits[3])
    assert np.array_equal(bits[4], bits[5])


def test_float64_normals_keep_their_bits():
    rng = fastgauss.default_rng(2026)
    rng.state = {"bit_generator": "Philox4x32-10", "key": rng.state["key"], "counter": 2**32 - 1000}  # a carry inside
    state = rng.state
    got = rng.standard_normal(1_000_001, backend="cpu")
    counter = np.array([(state["counter"] >> (32 * i)) & 0xFFFFFFFF for i in range(4)], np.uint64)
    expected = _dividing_normals(got.size, np.uint64(state["key"]), counter)
    assert np.array_equal(got.view(np.int64), expected.view(np.int64))


NORMALS_SCRIPT = """
import hashlib, numba, numpy as np, fastgauss
rng = fastgauss.default_rng(2026)
print(numba.config.CPU_NAME or "host", hashlib.sha256(rng.standard_normal(300_001, backend="cpu").tobytes()).hexdigest())
"""


def test_float64_normals_are_bitwise_identical_on_avx2_and_sse2():
    """haswell: AVX2 and FMA, 256-bit vectors (NUMBA_CPU_NAME alone would keep the host's
    features, AVX-512 included); generic: SSE2, no FMA, so the division itself (fastgauss.cpu.random)."""
    host = hashlib.sha256(fastgauss.default_rng(2026).standard_normal(300_001, backend="cpu").tobytes()).hexdigest()
    runs = [
        run_python(NORMALS_SCRIPT, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="+fma"),
        run_python(NORMALS_SCRIPT, NUMBA_CPU_NAME="generic"),
    ]
    assert runs == [["haswell", host], ["generic", host]]
