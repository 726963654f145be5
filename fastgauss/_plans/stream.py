"""The Philox stream record: how a call's values map onto Philox4x32-10 blocks.

The one place the layout is stated as data; ``fastgauss.random`` holds the normative
prose, and the NumPy reference, the CPU kernels and the CUDA kernels all read this
module. Block n of a call is Philox4x32-10 of the counter (offset + n) mod 2**128 with
the 64-bit key, giving four 32-bit words w0..w3 (``words`` splits key and offset into
the uint64 kernel arguments). Per dtype (``LAYOUT``):

- float32: 4 values a block. Uniform lane i from word i; normals by Box-Muller on the
  word pairs (w0, w1) -> lanes 0, 1 and (w2, w3) -> lanes 2, 3.
- float64: 2 values a block. Uniform lane i from the words (w_2i, w_2i+1); normals by
  Box-Muller on the whole block -> lanes 0, 1.

A call producing n values uses ceil(n / values per block) blocks and advances the
generator's counter by that many (``Stream.reserve``).
"""

import numbers
import threading
from typing import NamedTuple

import numpy as np


class Layout(NamedTuple):
    """How one dtype's values come from a block of four 32-bit words."""

    values_per_block: int  # lanes of a block
    words_per_uniform: int  # words one uniform value is made from
    words_per_normal_pair: int  # words one Box-Muller pair (two lanes) is made from


LAYOUT = {
    np.dtype(np.float32): Layout(values_per_block=4, words_per_uniform=1, words_per_normal_pair=2),
    np.dtype(np.float64): Layout(values_per_block=2, words_per_uniform=2, words_per_normal_pair=4),
}
DTYPES = tuple(LAYOUT)  # the dtypes the generator produces


def values_per_block(dtype):
    """4 float32 or 2 float64 values per Philox block."""
    return LAYOUT[np.dtype(dtype)].values_per_block


def blocks_needed(size, dtype):
    """Philox blocks a call producing ``size`` values of ``dtype`` uses (and advances by)."""
    return -(-int(size) // values_per_block(dtype))


def words(key, offset):
    """(k0, k1, o0, o1, o2, o3): the 64-bit key and the 128-bit counter offset as 32-bit words
    in uint64 values, least significant first: the kernels' stream arguments."""
    return tuple(np.uint64((key >> s) & 0xFFFFFFFF) for s in (0, 32)) + tuple(
        np.uint64((offset >> s) & 0xFFFFFFFF) for s in (0, 32, 64, 96)
    )


class Stream:
    """The state a call draws from: a 64-bit key and a 128-bit counter offset, reserved in
    ranges of blocks under a lock (so a shared stream hands each call its own range).

    ``fastgauss.random.Generator`` is a Stream with NumPy's Generator interface on top;
    ops that draw noise need only ``reserve`` and take their stream from ``as_stream``.
    """

    def __init__(self, seed_sequence):
        if not isinstance(seed_sequence, np.random.SeedSequence):
            raise TypeError(f"seed_sequence must be a numpy.random.SeedSequence; got {type(seed_sequence).__name__}")
        self._seed_sequence = seed_sequence
        low, high = (int(w) for w in seed_sequence.generate_state(2, np.uint32))
        self._key = low | high << 32
        self._counter = 0
        self._lock = threading.Lock()

    def reserve(self, blocks):
        """Take ``blocks`` blocks of the stream: returns (key, offset) and advances the counter."""
        with self._lock:
            offset = self._counter
            self._counter = (offset + int(blocks)) % 2**128
        return self._key, offset


def as_stream(rng, name="rng"):
    """The stream for an op's ``rng=`` argument: a Generator (any Stream) as it is; an int seed,
    a SeedSequence or None (fresh OS entropy) as a new stream with the key that
    ``fastgauss.default_rng`` would derive from it."""
    if isinstance(rng, Stream):
        return rng
    if rng is None or (isinstance(rng, (numbers.Integral, np.integer)) and not isinstance(rng, (bool, np.bool_))):
        return Stream(np.random.SeedSequence(rng))
    if isinstance(rng, np.random.SeedSequence):
        return Stream(rng)
    raise TypeError(f"{name} must be a fastgauss.Generator, an int seed or None; got {type(rng).__name__}")
