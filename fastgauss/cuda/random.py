"""CUDA kernels of the counter-based generator: one thread per Philox block.

Same scalar code as the CPU (fastgauss._device.random), same stream layout
(fastgauss._plans.stream), so the words are bitwise identical to the CPU's.
"""

import numpy as np
from numba import cuda
from numba.core import config

from fastgauss import _device
from fastgauss._checks import shape_dtype
from fastgauss._device import random as _random
from fastgauss._plans.stream import kernel_state, values_per_block
from fastgauss.cuda import as_flat, block_size, constant, launch_stream, rounded_product


def _overrides():
    """On a GPU, fastgauss._device.random.divide is the CPU's multiply-and-FMA quotient (the same
    bits as z / y: the proof is in fastgauss._device.random) instead of the division's instruction
    sequence; the simulator has no cuda.fma and divides. Products that feed a sum round by
    themselves (fastgauss.cuda.rounded_product), as on the CPU."""
    if config.ENABLE_CUDASIM:
        return {"product": rounded_product}

    @cuda.jit(device=True)
    def divide(z, d):
        if len(d) == 2:  # a constant: the other branch is pruned
            q = z * d[1]
        else:
            q = cuda.fma(z, d[1], z * d[2])
        return cuda.fma(cuda.fma(-q, d[0], z), d[1], q)

    return {"divide": divide, "product": rounded_product}


_d = _device.compile_for(cuda.jit(device=True), _random, overrides=_overrides())
_block = _d.block
_box_muller32 = _d.box_muller32
_box_muller64 = _d.box_muller64
_uniform32 = _d.uniform32
_uniform64 = _d.uniform64
_philox4x32_10 = _d.philox4x32_10
window_index = _d.window_index

MAX_BLOCKS = 4096  # CUDA blocks of a launch; grid-stride loops cover larger outputs


def launch_config(work_items):
    """(blocks, threads) for a grid-stride kernel over ``work_items``."""
    threads = block_size(work_items)
    return max(1, min(-(-work_items // threads), MAX_BLOCKS)), threads


@cuda.jit(device=True)
def normals(per_block, o0, o1, o2, o3, k0, k1, j):
    """The normals of stream block j, padded to four values (float64 blocks give two)."""
    w0, w1, w2, w3 = _block(o0, o1, o2, o3, k0, k1, np.uint64(j))
    if per_block == 4:
        z0, z1 = _box_muller32(w0, w1)
        z2, z3 = _box_muller32(w2, w3)
        return np.float64(z0), np.float64(z1), np.float64(z2), np.float64(z3)
    z0, z1 = _box_muller64(w0, w1, w2, w3)
    return z0, z1, 0.0, 0.0


@cuda.jit(device=True)
def stream_slot(e, per_block, base, run, extents, strides):
    """(stream block, lane) of local element e: those of its global index (window_index), with
    no integer division for the elements of the first run (all of them for a whole array)."""
    g = base + e if e < run else window_index(e, base, run, extents, strides)
    shift = np.int64(2) if per_block == 4 else np.int64(1)
    b = g >> shift
    return b, g - (b << shift)


@cuda.jit(device=True)
def uniforms(per_block, o0, o1, o2, o3, k0, k1, j):
    w0, w1, w2, w3 = _block(o0, o1, o2, o3, k0, k1, np.uint64(j))
    if per_block == 4:
        return np.float64(_uniform32(w0)), np.float64(_uniform32(w1)), np.float64(_uniform32(w2)), np.float64(_uniform32(w3))
    return _uniform64(w0, w1), _uniform64(w2, w3), 0.0, 0.0


@cuda.jit(cache=True)
def _fill(out, normal, per_block, k0, k1, o0, o1, o2, o3, base, run, extents, strides):
    """One thread per group of per_block local elements; local element e takes the value of
    global element window_index(e) (itself for a whole array: one stream block a group)."""
    n = out.size
    for j in range(cuda.grid(1), (n + per_block - 1) // per_block, cuda.gridsize(1)):
        held = np.int64(-1)  # the stream block in values
        values = (0.0, 0.0, 0.0, 0.0)
        for lane in range(per_block):
            e = j * per_block + lane
            if e < n:
                b, slot = stream_slot(np.int64(e), per_block, base, run, extents, strides)
                if b != held:
                    if normal:
                        values = normals(per_block, o0, o1, o2, o3, k0, k1, b)
                    else:
                        values = uniforms(per_block, o0, o1, o2, o3, k0, k1, b)
                    held = b
                out[e] = values[slot]  # float32 values round-trip through float64 exactly


def on_device(state):
    """A kernel_state with the window's arrays copied to the device: the CUDA kernels' stream arguments."""
    return state[:8] + (constant(state[8]), constant(state[9]))


def _launch_fill(out, normal, key, offset, window):
    shape, _ = shape_dtype(out)
    flat = as_flat("out", out)
    per_block = values_per_block(flat.dtype)
    blocks, threads = launch_config(-(-flat.size // per_block))
    _fill[blocks, threads, launch_stream()](flat, normal, per_block, *on_device(kernel_state((key, offset, window), shape)))


def standard_normal(out, key, offset, window):
    _launch_fill(out, True, key, offset, window)


def random(out, key, offset, window):
    _launch_fill(out, False, key, offset, window)


def normal(out, key, offset, window, loc, scale):
    """loc + scale z in place; loc and scale are scalars on the GPU."""
    if out.size:
        _launch_fill(out, True, key, offset, window)
    scale_shift(out, scale, loc)


@cuda.jit(cache=True)
def _philox(counters, keys, out):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        ci = i if counters.shape[0] > 1 else 0
        ki = i if keys.shape[0] > 1 else 0
        w = _philox4x32_10(
            np.uint64(counters[ci, 0]), np.uint64(counters[ci, 1]), np.uint64(counters[ci, 2]), np.uint64(counters[ci, 3]),
            np.uint64(keys[ki, 0]), np.uint64(keys[ki, 1]),
        )
        for lane in range(4):
            out[i, lane] = np.uint32(w[lane])


def philox4x32_10(counters, keys, out):
    """Counters and keys must have the same leading shape as out, or a single row each."""
    rows = int(np.prod(out.shape[:-1]))
    counters_2d = as_flat("counters", counters).reshape(-1, 4)
    keys_2d = as_flat("keys", keys).reshape(-1, 2)
    for name, array in (("counters", counters_2d), ("keys", keys_2d)):
        if array.shape[0] not in (1, rows):
            raise ValueError(f"on the GPU, {name} must have the leading shape of the result or a single row")
    blocks, threads = launch_config(rows)
    _philox[blocks, threads, launch_stream()](counters_2d, keys_2d, as_flat("out", out).reshape(rows, 4))


@cuda.jit(cache=True)
def _scale_shift(out, scale, shift):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = rounded_product(out[i], scale) + shift  # two roundings, as the CPU's out *= scale; out += shift


def scale_shift(out, scale, shift):
    """out = out * scale + shift in place (normal's second step)."""
    flat = as_flat("out", out)
    blocks, threads = launch_config(flat.size)
    _scale_shift[blocks, threads, launch_stream()](flat, flat.dtype.type(scale), flat.dtype.type(shift))
