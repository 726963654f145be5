"""Kernels fill one block of a larger C-order array from the stream (issue 13, item 2).

A window (fastgauss._plans.stream.Window) places an output block in the array of the call
that reserved the stream: each element takes the value of its global C-order index
(Philox block index // values per block, lane index % values per block). Checked here
without Dask: every block of several chunkings, filled on its own, must reassemble the
whole call's array bitwise, on every backend, for the generator ops and for the noise
drawn inside q_sample, ddpm_step and mvn_sample. Chunkings include blocks of one element
and blocks whose runs start inside a Philox block or split a Box-Muller pair.
"""

import itertools

import numpy as np
import pytest

import fastgauss
from conftest import to_backend, to_numpy
from fastgauss._dispatch import implementation
from fastgauss._plans.stream import BlockStream, Window, kernel_window

SHAPE = (3, 4, 5)
CHUNKINGS = [(1, 1, 1), (2, 3, 2), (3, 4, 3), (1, 4, 5), (2, 4, 5)]
SIMULATED = [(2, 3, 2)]  # the CUDA simulator is slow Python: one chunking whose runs start mid-block
KEY, OFFSET = 0x0123456789ABCDEF, 2**32 - 2  # the counter carries into the second word


def blocks(shape, chunks):
    """(slices, origin, block shape) of every block of a chunking."""
    bounds = [[(a, min(a + c, n)) for a in range(0, n, c)] for n, c in zip(shape, chunks)]
    for box in itertools.product(*bounds):
        yield tuple(slice(a, b) for a, b in box), tuple(a for a, _ in box), tuple(b - a for a, b in box)


def test_kernel_window_runs():
    """Runs are the largest pieces contiguous in the whole array; the identity is one run."""
    base, run, extents, strides = kernel_window(None, (3, 4))
    assert (base, run, list(extents), list(strides)) == (0, 12, [1], [0])
    base, run, extents, strides = kernel_window(Window((6, 4, 5), (2, 1, 0)), (3, 2, 5))
    assert (base, run, list(extents), list(strides)) == (2 * 20 + 5, 10, [3], [20])
    base, run, extents, strides = kernel_window(Window((6, 4, 5), (1, 2, 3)), (2, 2, 1))
    assert (base, run, list(extents), list(strides)) == (20 + 10 + 3, 1, [2, 2], [20, 5])
    with pytest.raises(ValueError, match="does not fit"):
        kernel_window(Window((6, 4, 5), (5, 0, 0)), (2, 4, 5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["standard_normal", "random"])
def test_generator_ops_fill_any_block(backend, op, dtype):
    fill = implementation(op, backend)
    whole = to_backend(np.empty(SHAPE, dtype), backend)
    fill(whole, KEY, OFFSET, None)
    whole = to_numpy(whole)
    for chunks in CHUNKINGS if backend != "cuda" else SIMULATED:
        assembled = np.full(SHAPE, np.nan, dtype)
        for slices, origin, block_shape in blocks(SHAPE, chunks):
            block = to_backend(np.empty(block_shape, dtype), backend)
            fill(block, KEY, OFFSET, Window(SHAPE, origin))
            assembled[slices] = to_numpy(block)
        np.testing.assert_array_equal(assembled, whole, err_msg=f"{backend} {op} {np.dtype(dtype)} chunks {chunks}")


@pytest.mark.parametrize("backend_name", ["numpy", "cpu"])
def test_windowed_reference_is_the_stream(backend_name):
    """The windowed reference against the compiled kernel on a block that starts inside a
    Philox block: the same uniform bits (uniforms are exact on every backend)."""
    shape, origin, block_shape = (7, 9), (2, 3), (4, 5)
    whole = np.empty(shape, np.float32)
    implementation("random", "numpy")(whole, KEY, OFFSET, None)
    block = np.empty(block_shape, np.float32)
    implementation("random", backend_name)(block, KEY, OFFSET, Window(shape, origin))
    np.testing.assert_array_equal(block, whole[2:6, 3:8])


def _generated(call, backend, shape, chunks, dtype):
    """call(block slices, rng) -> block result; assembled over the chunking, as NumPy."""
    out = np.full(shape, np.nan, dtype)
    for slices, origin, _ in blocks(shape, chunks):
        out[slices] = to_numpy(call(slices, BlockStream(KEY, OFFSET, Window(shape, origin))))
    return out


def test_in_kernel_noise_fills_any_block(backend):
    """q_sample and ddpm_step draw the noise of their block's global positions in the kernel."""
    schedule = fastgauss.NoiseSchedule.linear(50)
    x = np.linspace(-1, 1, np.prod(SHAPE)).reshape(SHAPE).astype(np.float32)
    t = np.array([0, 7, 49])
    T = lambda slices: to_backend(t[slices[0]], backend)  # noqa: E731

    def q_sample(slices, rng):
        return fastgauss.q_sample(to_backend(np.ascontiguousarray(x[slices]), backend), T(slices), schedule, rng=rng, backend=backend)

    def ddpm(slices, rng):
        block = to_backend(np.ascontiguousarray(x[slices]), backend)
        return fastgauss.ddpm_step(block, block, T(slices), schedule, rng=rng, backend=backend)

    whole_q = to_numpy(fastgauss.q_sample(to_backend(x, backend), to_backend(t, backend), schedule, rng=BlockStream(KEY, OFFSET, Window(SHAPE, (0, 0, 0))), backend=backend))
    x_device = to_backend(x, backend)
    whole_d = to_numpy(fastgauss.ddpm_step(x_device, x_device, to_backend(t, backend), schedule, rng=BlockStream(KEY, OFFSET, Window(SHAPE, (0, 0, 0))), backend=backend))
    generator = fastgauss.default_rng(0)
    generator.state = {"key": KEY, "counter": OFFSET}
    np.testing.assert_array_equal(whole_q, to_numpy(fastgauss.q_sample(to_backend(x, backend), to_backend(t, backend), schedule, rng=generator, backend=backend)))
    for chunks in CHUNKINGS[:3] if backend != "cuda" else SIMULATED:
        np.testing.assert_array_equal(_generated(q_sample, backend, SHAPE, chunks, np.float32), whole_q, err_msg=f"q_sample {chunks}")
        np.testing.assert_array_equal(_generated(ddpm, backend, SHAPE, chunks, np.float32), whole_d, err_msg=f"ddpm_step {chunks}")


def test_mvn_sample_noise_fills_any_block(backend):
    """mvn_sample's in-kernel noise: blocks of the batch axes, d whole (one vector's noise may
    straddle Philox blocks: d = 3)."""
    shape = (2, 5, 3)  # size (2,), batch (5,), d = 3
    mean = np.arange(15.0).reshape(5, 3)
    cov = np.eye(3) * 2.0 + 0.5
    whole = to_numpy(
        fastgauss.mvn_sample(to_backend(mean, backend), to_backend(cov, backend), size=2,
                             rng=BlockStream(KEY, OFFSET, Window(shape, (0, 0, 0))), backend=backend)
    )
    for rows in (1, 2, 3) if backend != "cuda" else (2,):
        out = np.full(shape, np.nan)
        for start in range(0, 5, rows):
            rng = BlockStream(KEY, OFFSET, Window(shape, (0, start, 0)))
            block = fastgauss.mvn_sample(to_backend(mean[start : start + rows], backend), to_backend(cov, backend), size=2, rng=rng, backend=backend)
            out[:, start : start + rows] = to_numpy(block)
        np.testing.assert_array_equal(out, whole, err_msg=f"rows {rows}")
