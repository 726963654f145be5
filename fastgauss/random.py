"""Counter-based random numbers: Philox4x32-10, reproducible on any thread count and device.

Every number depends only on (key, counter offset, position): never on the number
of threads, the chunking, or the device. That is what NumPy's Generator inside a
Numba prange cannot give (numba issue 4452), and it lets the noise of q_sample be
generated inside the kernel that uses it.

Stream definition (normative)
-----------------------------
A Generator holds a 64-bit key (words k0 = low, k1 = high) and a 128-bit counter
offset. ``default_rng(seed)`` derives the key from ``numpy.random.SeedSequence(seed)
.generate_state(2, uint32)`` and starts at offset 0.

Each call starts at the generator's offset and advances it by the number of blocks it
used. Block n of a call is Philox4x32-10 (Salmon et al. 2011, 10 rounds) of the
counter (offset + n) mod 2**128, as four 32-bit words c0 (least significant) .. c3,
with the key (k0, k1); it gives four words w0..w3. Output element i (C order):

- float32: block i // 4. ``random``: lane i % 4, (w >> 8) * 2**-24.
  ``standard_normal``: Box-Muller on (w0, w1) gives lanes 0, 1, on (w2, w3) lanes
  2, 3: with u = float32(a >> 1) * 2**-31 + 2**-32 (float32, in (0, 1], never 0) and
  f = (b >> 8) * 2**-24, the pair is (r cos 2 pi f, r sin 2 pi f), r = sqrt(-2 ln u).
- float64: block i // 2. ``random``: lane i % 2 from the words (w0, w1) or (w2, w3)
  as ((a >> 5) * 2**26 + (b >> 6)) * 2**-53, NumPy's construction.
  ``standard_normal``: Box-Muller on the whole block gives lanes 0, 1, with
  u = ((w0 >> 11) * 2**32 + w1) * 2**-53 + 2**-54 (53 bits, in (0, 1)) and
  f = ((w2 >> 11) * 2**32 + w3) * 2**-53.

A call producing n values uses ceil(n / 4) (float32) or ceil(n / 2) (float64) blocks.
The raw words are bitwise identical on every backend; the normals of cpu and cuda are
bitwise identical to each other (both evaluate fastgauss._device.random, with no product
fused into an FMA on the GPU) for any thread count, and agree with the NumPy reference
(which uses NumPy's log, sin and cos) to 1e-6 (float32) and 1e-14 (float64) relative to
max(1, |z|).

Tails: the smallest u is 2**-32 for float32 and 2**-54 for float64, so |z| can reach
sqrt(64 ln 2) = 6.660 and sqrt(108 ln 2) = 8.652 standard deviations.
"""

import numbers

import numpy as np

from fastgauss import _checks
from fastgauss._dispatch import adapter, adapts, implementation, resolve
from fastgauss._plans.stream import DTYPES, Stream, blocks_needed
from fastgauss.mvn import multivariate_normal as _multivariate_normal

__all__ = ["Generator", "default_rng", "philox4x32_10", "as_generator"]

BIT_GENERATOR = "Philox4x32-10"


class Generator(Stream):
    """A Philox4x32-10 generator: NumPy's Generator interface on fastgauss's backends.

    Create one with :func:`default_rng`. Methods take ``backend=`` like every op
    ("numpy" runs the reference; "cpu" the Numba kernels; "cuda" fills device arrays).
    Calls reserve their counter range under a lock, so a Generator may be shared by
    threads (each call then gets its own, non-overlapping stream range). A pickled or
    copied Generator continues the stream from the same state, independently of the original.

    >>> rng = fastgauss.default_rng(42)
    >>> x = rng.standard_normal((2, 3), dtype=np.float32)
    >>> saved = rng.state
    >>> a = rng.random(5); rng.state = saved; b = rng.random(5)
    >>> bool((a == b).all())
    True
    """

    # __init__(seed_sequence) and reserve(blocks) come from fastgauss._plans.stream.Stream.

    def __repr__(self):
        return f"Generator({BIT_GENERATOR}, key={self._key:#018x}, counter={self._counter})"

    @property
    def state(self):
        """{"bit_generator": "Philox4x32-10", "key": 64-bit int, "counter": 128-bit int}; settable."""
        with self._lock:
            return {"bit_generator": BIT_GENERATOR, "key": self._key, "counter": self._counter}

    @state.setter
    def state(self, value):
        if not isinstance(value, dict) or value.get("bit_generator", BIT_GENERATOR) != BIT_GENERATOR:
            raise ValueError(f"state must be a dict from Generator.state with bit_generator {BIT_GENERATOR!r}; got {value!r}")
        key, counter = value.get("key"), value.get("counter")
        for name, number, bits in (("key", key, 64), ("counter", counter, 128)):
            if isinstance(number, bool) or not isinstance(number, numbers.Integral):
                raise TypeError(f"state[{name!r}] must be an int; got {type(number).__name__}")
            if not 0 <= int(number) < 2**bits:
                raise ValueError(f"state[{name!r}] must be in [0, 2**{bits}); got {number}")
        with self._lock:
            self._key, self._counter = int(key), int(counter)

    def spawn(self, n):
        """``n`` independent child generators (keys from SeedSequence.spawn)."""
        return [Generator(child) for child in self._seed_sequence.spawn(n)]

    @adapts
    def standard_normal(self, size=None, dtype=np.float64, out=None, *, chunks=None, backend=None):
        """Standard normal samples, N(0, 1), from the stream (Box-Muller; see the module doc).

        size : int or tuple of ints, optional (None: one value, returned as a float)
        dtype : float32 or float64
        out : array to fill (C-contiguous, writeable, of ``dtype``); its shape is the size
        chunks : Dask chunks (as for dask.array), optional: return a lazy dask.array of
            ``size`` instead, whose value at every position equals this call's without
            ``chunks``, bitwise, for any chunking, scheduler and number of workers; the
            generator advances now, exactly as the in-memory call would advance it.

        >>> z = fastgauss.default_rng(0).standard_normal((4096, 4096), np.float32, chunks=(1024, 4096))
        """
        if chunks is not None:
            return adapter("dask").generator_array(self, "standard_normal", size, dtype, out, chunks, backend)
        return self._fill("standard_normal", size, dtype, out, backend)

    @adapts
    def random(self, size=None, dtype=np.float64, out=None, *, chunks=None, backend=None):
        """Uniform samples on [0, 1) from the stream (see the module doc for the bits used);
        ``chunks``: a lazy dask.array, as for :meth:`standard_normal`."""
        if chunks is not None:
            return adapter("dask").generator_array(self, "random", size, dtype, out, chunks, backend)
        return self._fill("random", size, dtype, out, backend)

    @adapts
    def normal(self, loc=0.0, scale=1.0, size=None, dtype=np.float64, *, chunks=None, backend=None):
        """Normal samples loc + scale * z, z from :meth:`standard_normal`; loc and scale broadcast.

        With ``size=None`` the shape is that of ``np.broadcast(loc, scale)``. A negative
        scale is a ValueError (as in NumPy). On cuda, loc and scale must be scalars.
        ``chunks``: a lazy dask.array, as for :meth:`standard_normal` (loc and scale may
        then be Dask arrays too).
        """
        if chunks is not None:
            return adapter("dask").generator_array(self, "normal", size, dtype, None, chunks, backend, loc=loc, scale=scale)
        name = resolve(backend, {"loc": loc, "scale": scale})
        dtype = _sample_dtype(dtype, "normal")
        if name == "cuda":
            if not (isinstance(loc, numbers.Real) and isinstance(scale, numbers.Real)):
                raise TypeError("on the cuda backend, loc and scale must be Python or NumPy scalars")
        loc_array, scale_array = np.asarray(loc, dtype), np.asarray(scale, dtype)
        if np.any(scale_array < 0):
            raise ValueError("scale < 0")
        shape = np.broadcast_shapes(loc_array.shape, scale_array.shape) if size is None else _checks.sample_shape(size)
        try:
            np.broadcast_shapes(loc_array.shape, scale_array.shape, shape)
        except ValueError:
            raise ValueError(f"loc {loc_array.shape} and scale {scale_array.shape} do not broadcast to size {shape}") from None
        if name == "cuda":  # the device kernel takes loc and scale as values
            loc_array, scale_array = loc_array[()], scale_array[()]
        z = self._fill("normal", shape, dtype, None, name, loc=loc_array, scale=scale_array)
        if name == "cuda":
            return z
        return float(z) if size is None and z.ndim == 0 else z

    @adapts
    def multivariate_normal(self, mean, cov, size=None, check_valid="warn", tol=1e-8, *, method="cholesky", backend=None):
        """Multivariate normal samples mean + L z, L L^T = cov (Cholesky), z from :meth:`standard_normal`.

        NumPy's signature and shapes: mean (d,) and cov (d, d) give size + (d,) (size None:
        (d,)); batched mean (..., d) and cov (..., d, d) broadcast as in
        :func:`fastgauss.mvn_sample`, giving size + batch + (d,). This is
        ``fastgauss.mvn_sample(mean, cov, size=size, rng=self)``: the same numbers, the
        same stream use. The dtype is numpy.result_type(mean, cov) (float32 stays float32).

        check_valid ("warn", "raise", "ignore"), for covariances that are not symmetric
        positive semi-definite, as in NumPy: a covariance not close to its transpose
        (``allclose(cov, cov.T, rtol=tol, atol=tol)``, checked in the kernel) warns with a
        RuntimeWarning and is sampled from its lower triangle, or raises ValueError. A
        covariance whose factorization fails is tested by NumPy's eigh criterion (an
        eigenvalue below -tol): if it is not positive semi-definite, "raise" raises
        ValueError and "warn" warns; in every case ``numpy.linalg.LinAlgError`` follows,
        since method="cholesky" (the only method) needs positive-definite covariances.
        These checks run with the sampling, so the generator has advanced when they raise.

        >>> rng = fastgauss.default_rng(0)
        >>> rng.multivariate_normal([0.0, 1.0], [[1.0, 0.5], [0.5, 2.0]], size=3).shape
        (3, 2)
        """
        return _multivariate_normal(self, mean, cov, size, check_valid, tol, method, backend)

    def _fill(self, op, size, dtype, out, backend, **parameters):
        """Reserve the stream for ``size`` values and run ``op``'s backend function on the
        output: ``op(out, key, offset, **parameters)``."""
        name = resolve(backend, {"out": out})
        dtype = _sample_dtype(dtype, op)
        if out is None:
            shape = () if size is None else _checks.sample_shape(size)
            target = _allocate(shape, dtype, on_device=name == "cuda")
        else:
            target = _checked_out(out, size, dtype, op)
        count = int(np.prod(_checks.shape_dtype(target)[0]))
        key, offset, window = self.reserve(blocks_needed(count, dtype))
        if count or parameters:  # normal scales and shifts even an empty output, as NumPy would
            implementation(op, name)(target, key, offset, window, **parameters)
        if size is None and out is None:
            value = target if isinstance(target, np.ndarray) else target.copy_to_host()
            return float(value[()])
        return target


def _sample_dtype(dtype, op):
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"Unsupported dtype {dtype!r} for {op}") from None
    if dtype not in DTYPES:
        raise TypeError(f"Unsupported dtype {dtype!r} for {op}; use float32 or float64")
    return dtype


def _allocate(shape, dtype, on_device):
    if on_device:
        from numba import cuda

        return cuda.device_array(shape, dtype)
    return np.empty(shape, dtype)


def _checked_out(out, size, dtype, op):
    _checks.refuse_masked("out", out)
    out_shape, out_dtype = _checks.shape_dtype(out)
    if out_dtype != dtype:
        raise TypeError(f"Supplied output array has the wrong type. Expected {dtype}, got {out_dtype}")
    if size is not None and _checks.sample_shape(size) != tuple(out_shape):
        raise ValueError(f"size {_checks.sample_shape(size)} must match the shape of out {tuple(out_shape)}")
    contiguous = out.flags.c_contiguous if isinstance(out, np.ndarray) else _device_c_contiguous(out)
    if not contiguous or not _checks.writeable(out):
        raise ValueError(f"out for {op} must be a C-contiguous, writeable array")
    return out


def _device_c_contiguous(out):
    if not hasattr(out, "__cuda_array_interface__"):  # Numba CUDA-simulator array
        return out.is_c_contiguous()
    _, shape, strides, itemsize = _checks.cai_layout(out)
    step = itemsize
    for n, stride in zip(reversed(shape), reversed(strides)):
        if n > 1 and stride != step:
            return False
        step *= n
    return True


def default_rng(seed=None):
    """A :class:`Generator` seeded like ``numpy.random.default_rng``.

    seed : None (fresh OS entropy), a non-negative int (or sequence of ints), a
    numpy.random.SeedSequence, or a Generator (returned unchanged).

    >>> rng = fastgauss.default_rng(0)
    >>> rng.standard_normal(3).shape
    (3,)
    """
    if isinstance(seed, Generator):
        return seed
    if isinstance(seed, np.random.SeedSequence):
        return Generator(seed)
    if isinstance(seed, (np.random.Generator, np.random.BitGenerator)):
        raise TypeError(
            f"seed is a NumPy {type(seed).__name__}, whose stream a Philox4x32-10 Generator cannot continue; "
            "pass an int seed or a SeedSequence (e.g. numpy_generator.bit_generator.seed_seq)"
        )
    if isinstance(seed, (bool, np.bool_)) or isinstance(seed, (float, complex, str, bytes)):
        raise TypeError(f"seed must be None, an int, a SeedSequence or a Generator; got {type(seed).__name__}")
    return Generator(np.random.SeedSequence(seed))


def as_generator(rng, name="rng"):
    """The Generator for an op's ``rng=`` argument: a Generator, an int seed, or None (fresh entropy)."""
    if isinstance(rng, Generator):
        return rng
    if rng is None or (isinstance(rng, (numbers.Integral, np.integer)) and not isinstance(rng, (bool, np.bool_))):
        return default_rng(rng)
    if isinstance(rng, np.random.SeedSequence):
        return Generator(rng)
    raise TypeError(f"{name} must be a fastgauss.Generator, an int seed or None; got {type(rng).__name__}")


@adapts
def philox4x32_10(counters, keys, *, backend=None):
    """Raw Philox4x32-10 blocks (Salmon et al. 2011), vectorized.

    counters : uint32 array (..., 4), word 0 least significant
    keys : uint32 array (..., 2)
    The leading dimensions broadcast together; returns uint32 of shape
    broadcast(leading dimensions) + (4,). Integer input of another dtype is accepted
    when every value fits in 32 bits. On cuda, counters and keys (uint32 device
    arrays) must each have the result's leading shape or a single row.

    >>> fastgauss.random.philox4x32_10(np.zeros(4, np.uint32), np.zeros(2, np.uint32))  # Random123's
    array([1713891541, 3781805453, 3159862348, 2600524760], dtype=uint32)
    >>> [hex(w) for w in _]                                 # known-answer vector
    ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    name = resolve(backend, {"counters": counters, "keys": keys})
    on_device = name == "cuda"
    arrays = {}
    for arg, value, width in (("counters", counters, 4), ("keys", keys, 2)):
        value = _checks.data_array(arg, value, on_device)
        shape, dtype = _checks.shape_dtype(value)
        if len(shape) == 0 or shape[-1] != width:
            raise ValueError(f"{arg} must have shape (..., {width}); got {tuple(shape)}")
        if on_device:
            if dtype != np.uint32:
                raise TypeError(f"{arg} on the GPU must have dtype uint32; got {dtype}")
        else:
            if dtype.kind not in "iu":
                raise TypeError(f"{arg} must hold unsigned 32-bit integers; got dtype {dtype}")
            if dtype != np.uint32 and value.size and (value.min() < 0 or value.max() > 0xFFFFFFFF):
                raise ValueError(f"{arg} must hold values in [0, 2**32); got min {value.min()}, max {value.max()}")
            value = value.astype(np.uint32, copy=False)
        arrays[arg] = (value, shape)
    try:
        lead = np.broadcast_shapes(arrays["counters"][1][:-1], arrays["keys"][1][:-1])
    except ValueError:
        raise ValueError(
            f"the leading dimensions of counters {arrays['counters'][1]} and keys {arrays['keys'][1]} do not broadcast"
        ) from None
    out = _allocate(lead + (4,), np.uint32, on_device)
    implementation("philox4x32_10", name)(arrays["counters"][0], arrays["keys"][0], out)
    return out
