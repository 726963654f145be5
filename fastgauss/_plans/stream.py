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

Windows. A backend may be asked for one block of a larger array rather than the whole
call (``Window``: the larger array's shape and the block's origin in it, the block's
shape being the output's): local element e (C order of the block) then takes the value
of the larger array's element g(e), its global C-order index, from stream block
g // values per block, lane g % values per block, exactly as the whole call would. The
kernels see a window as runs (``kernel_window``): the block's elements come in runs
that are contiguous in the larger array; run r starts at global index base + sum of
its outer indices times the global strides. This is what makes noise drawn for a Dask
array independent of its chunking (fastgauss.interop.dask).
"""

import copy
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


class Window(NamedTuple):
    """Where an output block sits in the C-order array of the call that reserved the stream:
    ``shape`` is the whole array's shape, ``origin`` the block's first index in it."""

    shape: tuple
    origin: tuple


class StreamRange(NamedTuple):
    """What ``Stream.reserve`` hands a call: the key, the counter offset of its first block,
    and the window of the whole call's array its output is (None: all of it)."""

    key: int
    offset: int
    window: Window = None


def kernel_window(window, shape):
    """The kernels' form of a window for a block of ``shape``: (base, run, extents, strides)
    with int64 arrays ``extents`` and ``strides`` of at least one entry. Local element e is
    global element base + e % run + sum over axes a of index_a * strides[a], where index is
    e // run unravelled over ``extents`` (C order). None gives the identity (one run)."""
    shape = tuple(int(n) for n in shape)
    size = 1
    for n in shape:
        size *= n
    one = (np.int64(0), np.int64(max(size, 1)), np.ones(1, np.int64), np.zeros(1, np.int64))
    if window is None or size == 0 or not shape:
        return one
    full, origin = tuple(int(n) for n in window.shape), tuple(int(n) for n in window.origin)
    if len(full) != len(shape) or len(origin) != len(shape) or any(
        o < 0 or o + n > g for o, n, g in zip(origin, shape, full)
    ):
        raise ValueError(f"a block of shape {shape} at {origin} does not fit in an array of shape {full}")
    strides = [1] * len(full)
    for a in range(len(full) - 2, -1, -1):
        strides[a] = strides[a + 1] * full[a + 1]
    base = sum(o * s for o, s in zip(origin, strides))
    k = len(shape) - 1  # the innermost axis the block does not span in full: runs start there
    while k > 0 and shape[k] == full[k]:
        k -= 1
    run = 1
    for n in shape[k:]:
        run *= n
    if k == 0:
        return np.int64(base), np.int64(run), np.ones(1, np.int64), np.zeros(1, np.int64)
    return np.int64(base), np.int64(run), np.array(shape[:k], np.int64), np.array(strides[:k], np.int64)


def kernel_state(stream, shape):
    """The compiled kernels' stream argument for an output block of ``shape``: the words of
    the key and offset (``words``) followed by ``kernel_window``: (k0, k1, o0, o1, o2, o3,
    base, run, extents, strides). ``stream`` is a StreamRange, a (key, offset) pair, or None
    (no stream: zeros)."""
    if stream is None:
        return words(0, 0) + kernel_window(None, shape)
    key, offset, window = (tuple(stream) + (None,))[:3]
    return words(key, offset) + kernel_window(window, shape)


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
        """Take ``blocks`` blocks of the stream: returns a StreamRange (key, offset, window None)
        and advances the counter."""
        with self._lock:
            offset = self._counter
            self._counter = (offset + int(blocks)) % 2**128
        return StreamRange(self._key, offset)

    def __getstate__(self):
        """Pickle and copy the state, not the lock: a copy (also ``copy.copy``, which for NumPy's
        Generator shares the state) continues from where this stream is, independently of it,
        with a copy of its SeedSequence (so its children are this stream's)."""
        with self._lock:
            return {"seed_sequence": copy.deepcopy(self._seed_sequence), "key": self._key, "counter": self._counter}

    def __setstate__(self, state):
        self._seed_sequence, self._key, self._counter = state["seed_sequence"], state["key"], state["counter"]
        self._lock = threading.Lock()


class BlockStream(Stream):
    """A stream that hands every call the same range, for one block of a larger call: a call
    on it computes the values the larger call (which reserved ``offset``) has at ``window``.
    It holds plain numbers (picklable: a Dask task carries it to a worker) and never advances."""

    def __init__(self, key, offset, window):
        self._seed_sequence = None
        self._key, self._counter = int(key), int(offset)
        self._window = Window(tuple(window.shape), tuple(window.origin))
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"key": self._key, "offset": self._counter, "window": self._window}

    def __setstate__(self, state):
        self.__init__(state["key"], state["offset"], state["window"])

    def reserve(self, blocks):
        return StreamRange(self._key, self._counter, self._window)


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
