"""CPU kernels of the counter-based generator (stream layout: fastgauss._plans.stream).

The scalar math comes from fastgauss._device.random, compiled here with
forceinline=True: LLVM's alwaysinline, so the ten Philox rounds are inlined into the
loop over blocks, which LLVM's cost model alone would not do (the loop stayed scalar:
8.8 vs 1.0 ns a block), while Numba types each function once per signature instead of
re-typing it inside every kernel that calls it (its inline="always": twice the compile
time of a cold first run), and
error_model="numpy" (Python's ZeroDivisionError check on every division also
blocks vectorization). Every loop walks a 1-D slice from index 0: a loop from a
non-zero start keeps Numba's negative-index check and runs 10x slower.
"""

import numba
import numpy as np
from numba import types
from numba.core.codegen import get_host_cpu_features
from numba.extending import overload
from numba.np.numpy_support import as_dtype

from fastgauss import _device
from fastgauss._device import random as _random
from fastgauss._plans.stream import kernel_state, values_per_block as _values_per_block_of
from fastgauss.cpu import DEVICE, launch, prefer_wide_vectors
from fastgauss.cpu.kl import _fma, _reinterpret


# Division by a constant without the divider: fastgauss._device.random's divide by Markstein's
# correction (the proof, and the constants, are there). The quotients keep every bit, so the
# stream does not change; the vector divider bounded the float64 normals (16 divisions a pair
# in sincos_turn64, one in log_unit64), three multiplies or FMAs take its place. One thread on
# a 2-core Xeon (AVX-512): 6.5 -> 5.1 ns a float64 normal, sincos_turn64 alone 9.0 -> 2.9 ns.
def _divide(z, d):
    """RN(z / y) for d = (y, RN(1/y)) or (y, RN(1/y), RN(1/y - RN(1/y))), with FMAs (the division
    on a target without them)."""


def _target_has_fma():
    """Whether the target Numba compiles for has the FMA instruction (by its feature string; an
    empty one, a CPU model's defaults, counts as none). Without it (e.g. NUMBA_CPU_NAME=generic)
    llvm.fma is a call of libm's fma, slower than the divider (float64 normals 15.5 -> 35 ns a
    value on SSE2), so there the division stays: the same bits either way."""
    features = numba.config.CPU_FEATURES
    if features is None:  # the host's (NUMBA_CPU_FEATURES unset; "" means the CPU model's defaults)
        features = get_host_cpu_features()
    return "+fma" in features.split(",")


@overload(_divide, inline="always", jit_options=dict(error_model="numpy"))
def _divide_impl(z, d):
    if not _target_has_fma():
        return lambda z, d: z / d[0]
    if len(d) == 2:

        def one_constant(z, d):
            y, h = d
            q = z * h  # faithful (fastgauss._device.random)
            return _fma(_fma(-q, y, z), h, q)  # q + (z - q y) h: the remainder is exact

        return one_constant

    def two_constants(z, d):
        y, h, low = d
        q = _fma(z, h, z * low)
        return _fma(_fma(-q, y, z), h, q)

    return two_constants


# The log's range reduction from the exponent field: fastgauss._device.random's reduce_unit32/64
# scale x by powers of two with six compare-and-select steps (the GPU runs those); the pair
# (m, e) they reach is unique and exact, so reading it from x's bits gives the same values
# with a few vector instructions (tests/test_random.py compares the two on every float32).


def _reduce_unit(x):
    """(m, e), x = m 2**e with m in [sqrt(1/2), 2 sqrt(1/2)) (the dtype's constant), e integral, for
    x in [2**-64, 1] (normal): fastgauss._device.random.reduce_unit32 / reduce_unit64."""


@overload(_reduce_unit, inline="always", jit_options=dict(error_model="numpy"))
def _reduce_unit_impl(x):
    if x == types.float32:
        real, integer, shift, bias, mask, one = np.float32, np.int32, 23, 127, 0x7FFFFF, 0x3F800000
        limit = np.float32(2) * _random.SQRT_HALF32
    else:
        real, integer, shift, bias, mask, one = np.float64, np.int64, 52, 1023, 0x000FFFFFFFFFFFFF, 0x3FF0000000000000
        limit = 2.0 * _random.SQRT_HALF64
    shift, bias, mask, one = integer(shift), integer(bias), integer(mask), integer(one)
    half, unit = real(0.5), real(1.0)

    def impl(x):
        bits = _reinterpret(x)
        m = _reinterpret(integer((bits & mask) | one))  # x's mantissa, in [1, 2)
        e = real(integer(bits >> shift) - bias)
        big = m >= limit
        return (m * half if big else m), (e + unit if big else e)

    return impl


_d = _device.compile_for(
    numba.njit(**DEVICE, forceinline=True),
    _random,
    overrides={"divide": _divide, "reduce_unit32": _reduce_unit, "reduce_unit64": _reduce_unit},
)
_block = _d.block
_box_muller32 = _d.box_muller32
_box_muller64 = _d.box_muller64
_uniform32 = _d.uniform32
_uniform64 = _d.uniform64
_philox4x32_10 = _d.philox4x32_10
_window_index = _d.window_index

BLOCKS_PER_CHUNK = 1024  # one parallel work item: 4096 float32 or 2048 float64 values
KERNEL = dict(error_model="numpy", cache=True)


@numba.njit(**KERNEL)
def _normal32_part(part, first_block, k0, k1, o0, o1, o2, o3):
    prefer_wide_vectors()
    full = part.size // 4
    for j in range(full):
        w0, w1, w2, w3 = _block(o0, o1, o2, o3, k0, k1, np.uint64(first_block + j))
        z0, z1 = _box_muller32(w0, w1)
        z2, z3 = _box_muller32(w2, w3)
        part[4 * j] = z0
        part[4 * j + 1] = z1
        part[4 * j + 2] = z2
        part[4 * j + 3] = z3
    if part.size > 4 * full:  # a last, partial block
        w0, w1, w2, w3 = _block(o0, o1, o2, o3, k0, k1, np.uint64(first_block + full))
        z0, z1 = _box_muller32(w0, w1)
        z2, z3 = _box_muller32(w2, w3)
        values = (z0, z1, z2, z3)
        for lane in range(part.size - 4 * full):
            part[4 * full + lane] = values[lane]


@numba.njit(**KERNEL)
def _normal64_part(part, first_block, k0, k1, o0, o1, o2, o3):
    prefer_wide_vectors()
    full = part.size // 2
    for j in range(full):
        w0, w1, w2, w3 = _block(o0, o1, o2, o3, k0, k1, np.uint64(first_block + j))
        z0, z1 = _box_muller64(w0, w1, w2, w3)
        part[2 * j] = z0
        part[2 * j + 1] = z1
    if part.size > 2 * full:
        w0, w1, w2, w3 = _block(o0, o1, o2, o3, k0, k1, np.uint64(first_block + full))
        part[2 * full] = _box_muller64(w0, w1, w2, w3)[0]


@numba.njit(**KERNEL)
def _uniform32_part(part, first_block, k0, k1, o0, o1, o2, o3):
    prefer_wide_vectors()
    full = part.size // 4
    for j in range(full):
        w0, w1, w2, w3 = _block(o0, o1, o2, o3, k0, k1, np.uint64(first_block + j))
        part[4 * j] = _uniform32(w0)
        part[4 * j + 1] = _uniform32(w1)
        part[4 * j + 2] = _uniform32(w2)
        part[4 * j + 3] = _uniform32(w3)
    if part.size > 4 * full:
        w0, w1, w2, w3 = _block(o0, o1, o2, o3, k0, k1, np.uint64(first_block + full))
        values = (_uniform32(w0), _uniform32(w1), _uniform32(w2), _uniform32(w3))
        for lane in range(part.size - 4 * full):
            part[4 * full + lane] = values[lane]


@numba.njit(**KERNEL)
def _uniform64_part(part, first_block, k0, k1, o0, o1, o2, o3):
    prefer_wide_vectors()
    full = part.size // 2
    for j in range(full):
        w0, w1, w2, w3 = _block(o0, o1, o2, o3, k0, k1, np.uint64(first_block + j))
        part[2 * j] = _uniform64(w0, w1)
        part[2 * j + 1] = _uniform64(w2, w3)
    if part.size > 2 * full:
        w0, w1, w2, w3 = _block(o0, o1, o2, o3, k0, k1, np.uint64(first_block + full))
        part[2 * full] = _uniform64(w0, w1)


# Dtype-generic entry points for kernels, resolved at compile time: ``part`` is a 1-D
# slice holding the block's local elements first_element.. (C order); ``state`` is
# fastgauss._plans.stream.kernel_state: (k0, k1, o0, o1, o2, o3) the key and counter
# offset as uint64 words, then the window (base, run, extents, strides) that maps local
# elements to the global elements whose stream values they take. For a whole array
# (the identity window) and first_element a multiple of 4 this is one call of the
# block loop above; a run of a window that starts inside a Philox block takes its
# first values from a copy of that block.


def values_per_block(part):
    """4 float32 or 2 float64 values per Philox block."""


def normal_part(part, first_element, state):
    """Fill ``part`` with standard normals."""


def uniform_part(part, first_element, state):
    """Fill ``part`` with uniforms on [0, 1)."""


def _is_float32(array_type):
    return array_type.dtype == numba.types.float32


@overload(values_per_block, jit_options=KERNEL)
def _values_per_block(part):
    per_block = _values_per_block_of(as_dtype(part.dtype))
    return lambda part: per_block


def _windowed(fill, per_block):
    """part[i] = value of global element window_index(first_element + i), by runs of the window."""

    def impl(part, first_element, state):
        k0, k1, o0, o1, o2, o3, base, run, extents, strides = state
        n = part.size
        i = 0
        while i < n:
            e = first_element + i
            g = _window_index(e, base, run, extents, strides)
            m = min(run - e % run, n - i)  # the rest of this run, within part
            lead = g % per_block
            if lead == 0:
                fill(part[i : i + m], g // per_block, k0, k1, o0, o1, o2, o3)
            else:  # the run starts inside a block: its first values from a copy of the block
                head = min(per_block - lead, m)
                block = np.empty(per_block, part.dtype)
                fill(block, g // per_block, k0, k1, o0, o1, o2, o3)
                for h in range(head):
                    part[i + h] = block[lead + h]
                if m > head:
                    fill(part[i + head : i + m], g // per_block + 1, k0, k1, o0, o1, o2, o3)
            i += m

    return impl


@overload(normal_part, jit_options=KERNEL)
def _normal_part(part, first_element, state):
    if _is_float32(part):
        return _windowed(_normal32_part, 4)
    return _windowed(_normal64_part, 2)


@overload(uniform_part, jit_options=KERNEL)
def _uniform_part(part, first_element, state):
    if _is_float32(part):
        return _windowed(_uniform32_part, 4)
    return _windowed(_uniform64_part, 2)


@numba.njit(parallel=True, **KERNEL)
def _fill(out, normal, state):
    per_chunk = BLOCKS_PER_CHUNK * values_per_block(out)
    for chunk in numba.prange((out.size + per_chunk - 1) // per_chunk):
        prefer_wide_vectors()  # the parts may be inlined here
        start = chunk * per_chunk
        part = out[start : min(start + per_chunk, out.size)]
        if normal:
            normal_part(part, start, state)
        else:
            uniform_part(part, start, state)


def standard_normal(out, key, offset, window):
    launch(_fill, out.reshape(-1), True, kernel_state((key, offset, window), out.shape))


def random(out, key, offset, window):
    launch(_fill, out.reshape(-1), False, kernel_state((key, offset, window), out.shape))


def normal(out, key, offset, window, loc, scale):
    """loc + scale z in place (NumPy's broadcasting in-place ops: memory speed)."""
    if out.size:
        standard_normal(out, key, offset, window)
    out *= scale
    out += loc


@numba.njit(parallel=True, **KERNEL)
def _philox(counters, keys, out):
    for i in numba.prange(out.shape[0]):
        c = counters[i]
        k = keys[i]
        w = _philox4x32_10(np.uint64(c[0]), np.uint64(c[1]), np.uint64(c[2]), np.uint64(c[3]), np.uint64(k[0]), np.uint64(k[1]))
        for lane in range(4):
            out[i, lane] = np.uint32(w[lane])


def philox4x32_10(counters, keys, out):
    lead = out.shape[:-1]
    rows = int(np.prod(lead))
    counters = np.ascontiguousarray(np.broadcast_to(counters, lead + (4,))).reshape(rows, 4)
    keys = np.ascontiguousarray(np.broadcast_to(keys, lead + (2,))).reshape(rows, 2)
    result = out.reshape(rows, 4)
    launch(_philox, counters, keys, result)
    if not np.may_share_memory(result, out):
        out[...] = result.reshape(out.shape)
