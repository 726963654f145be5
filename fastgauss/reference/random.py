"""NumPy reference of the counter-based generator: the stream definition, executable.

Philox4x32-10 as in Salmon et al. (2011), with NumPy's exact uint64 arithmetic; the
normals use NumPy's own log, sqrt, sin and cos in float64 (the compiled backends use
vectorizable approximations and are held to these values by the tests).

Stream: block n of a call is Philox4x32-10(counter = offset + n mod 2**128, key),
giving words (w0, w1, w2, w3). Element i (C order) of a float32 result comes from
block i // 4, of a float64 result from block i // 2:

- random, float32: lane i % 4, (w >> 8) 2**-24.
- random, float64: pair (w0, w1) or (w2, w3) by i % 2, ((a >> 5) 2**26 + (b >> 6)) 2**-53.
- standard_normal, float32: Box-Muller on (w0, w1) gives elements 4m, 4m+1 and on
  (w2, w3) elements 4m+2, 4m+3: r = sqrt(-2 ln u), u = float32(a >> 1) 2**-31 + 2**-32
  evaluated in float32 (so in (0, 1], never 0); theta = 2 pi (b >> 8) 2**-24;
  (r cos theta, r sin theta).
- standard_normal, float64: Box-Muller on the whole block gives elements 2m, 2m+1:
  u = ((w0 >> 11) 2**32 + w1) 2**-53 + 2**-54 in float64 (in (0, 1)), theta = 2 pi
  ((w2 >> 11) 2**32 + w3) 2**-53; (r cos theta, r sin theta).

A call producing n values uses ceil(n / per_block) blocks and advances the offset by
that many. With a window (fastgauss._plans.stream.Window) ``out`` is one block of a
larger array: each of its elements takes the value of its global C-order index there.
"""

import numpy as np

from fastgauss._plans.stream import values_per_block

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
MASK = np.uint64(0xFFFFFFFF)


def philox4x32_10_words(c, k):
    """Philox4x32-10 on uint64 arrays holding 32-bit words: c (..., 4), k (..., 2)."""
    c0, c1, c2, c3 = (c[..., i] for i in range(4))
    k0, k1 = k[..., 0], k[..., 1]
    for round_index in range(10):
        if round_index:
            k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
        p0, p1 = M0 * c0, M1 * c2  # 32 x 32 -> 64-bit products: hi and lo words
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & MASK, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & MASK
    return np.stack([c0, c1, c2, c3], axis=-1)


def philox4x32_10(counters, keys, out):
    lead = out.shape[:-1]
    c = np.broadcast_to(counters, lead + (4,)).astype(np.uint64)
    k = np.broadcast_to(keys, lead + (2,)).astype(np.uint64)
    out[...] = philox4x32_10_words(c, k)


def blocks(key, offset, index):
    """The words of stream blocks ``index`` (a uint64 array) after ``offset``: uint64 array (len(index), 4)."""
    count = index.size
    o0, o1, o2, o3 = (np.uint64((offset >> (32 * i)) & 0xFFFFFFFF) for i in range(4))
    low = o0 + (index & MASK)  # offset + index in 32-bit limbs, with carries
    mid = o1 + (index >> np.uint64(32)) + (low >> np.uint64(32))
    high = o2 + (mid >> np.uint64(32))
    counters = np.stack([low & MASK, mid & MASK, high & MASK, (o3 + (high >> np.uint64(32))) & MASK], axis=-1)
    k = np.array([key & 0xFFFFFFFF, key >> 32], dtype=np.uint64)
    return philox4x32_10_words(counters, np.broadcast_to(k, (count, 2)))


def global_positions(shape, window):
    """The global C-order index of each element of a block of ``shape`` (flat, C order)."""
    if window is None:
        return np.arange(int(np.prod(shape)), dtype=np.uint64)
    grids = np.meshgrid(*(o + np.arange(n) for o, n in zip(window.origin, shape)), indexing="ij")
    return np.ravel_multi_index([g.reshape(-1) for g in grids], window.shape).astype(np.uint64).reshape(-1)


def _fill_from_blocks(out, key, offset, window, values_of):
    """Each element of out: lane (global index % values per block) of the values (blocks, lanes)
    that ``values_of(words, dtype)`` makes of the stream block (global index // values per block)."""
    if out.size == 0:
        return
    per_block = np.uint64(values_per_block(out.dtype))
    position = global_positions(out.shape, window)
    needed, which = np.unique(position // per_block, return_inverse=True)
    values = values_of(blocks(key, offset, needed), out.dtype)
    out.reshape(-1)[...] = values[which.reshape(-1), (position % per_block).astype(np.intp)]


def random(out, key, offset, window):
    _fill_from_blocks(out, key, offset, window, _uniforms)


def _uniforms(words, dtype):
    """The uniforms of each block of ``words``: (blocks, values per block) of ``dtype``."""
    if dtype == np.float32:
        return (words >> np.uint64(8)).astype(np.float32) * np.float32(2.0**-24)
    high, low = words[:, 0::2] >> np.uint64(5), words[:, 1::2] >> np.uint64(6)
    return (high.astype(np.float64) * 2.0**26 + low.astype(np.float64)) * 2.0**-53


def normal(out, key, offset, window, loc, scale):
    """loc + scale z in place, z the standard normals of the same stream; loc and scale are
    arrays of out's dtype that broadcast to out."""
    if out.size:
        standard_normal(out, key, offset, window)
    out *= scale
    out += loc


def standard_normal(out, key, offset, window):
    _fill_from_blocks(out, key, offset, window, _normals)


def _normals(words, dtype):
    """Box-Muller on each block of ``words``: (blocks, values per block), float64."""
    if dtype == np.float32:
        # u and the turn fraction are float32 values, rounded as the kernels round them
        u = (words[:, 0::2] >> np.uint64(1)).astype(np.float32) * np.float32(2.0**-31) + np.float32(2.0**-32)
        turn = (words[:, 1::2] >> np.uint64(8)).astype(np.float32) * np.float32(2.0**-24)
    else:
        u = ((words[:, 0:1] >> np.uint64(11)).astype(np.float64) * 2.0**32 + words[:, 1:2].astype(np.float64)) * 2.0**-53 + 2.0**-54
        turn = ((words[:, 2:3] >> np.uint64(11)).astype(np.float64) * 2.0**32 + words[:, 3:4].astype(np.float64)) * 2.0**-53
    radius = np.sqrt(-2.0 * np.log(u.astype(np.float64)))
    theta = 2 * np.pi * turn.astype(np.float64)
    normals = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=-1)  # (blocks, pairs, 2)
    return normals.reshape(len(words), -1)
