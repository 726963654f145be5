"""CPU kernels for the diffusion ops."""

import numba
import numpy as np

from fastgauss._device.diffusion import q_sample_element
from fastgauss._layout import per_row, row_count
from fastgauss.cpu import CHUNK, as_rows, launch, rows_to_write
from fastgauss.cpu.random import normal_part, words

_q_sample_element = numba.njit(inline="always")(q_sample_element)
KERNEL = dict(error_model="numpy", cache=True)


@numba.njit(parallel=True, **KERNEL)
def _q_sample_rows(x0, noise, signal_scale, noise_scale, out):
    rows, width = out.shape
    chunks_per_row = (width + CHUNK - 1) // CHUNK
    for chunk in numba.prange(rows * chunks_per_row):
        r = chunk // chunks_per_row
        start = (chunk - r * chunks_per_row) * CHUNK
        stop = min(start + CHUNK, width)
        a = signal_scale[r]
        b = noise_scale[r]
        # 1-D slices: the inner loop over them vectorizes; 2-D indexing does not.
        x0_part, noise_part, out_part = x0[r, start:stop], noise[r, start:stop], out[r, start:stop]
        for j in range(out_part.size):
            out_part[j] = _q_sample_element(a, x0_part[j], b, noise_part[j])


@numba.njit(parallel=True, **KERNEL)
def _q_sample_generated(x0, signal_scale, noise_scale, width, out, noise_out, write_noise, state):
    """q_sample on flat C-order data with the noise drawn chunk by chunk into a small buffer.

    Element e belongs to row e // width; its noise is stream element e.
    """
    n = out.size
    for chunk in numba.prange((n + CHUNK - 1) // CHUNK):
        start = chunk * CHUNK
        stop = min(start + CHUNK, n)
        noise = np.empty(stop - start, out.dtype)  # cache-resident, not a full-size temporary
        normal_part(noise, start, state)
        if write_noise:
            noise_out[start:stop] = noise
        segment = start
        while segment < stop:  # the row segments of this chunk
            r = segment // width
            end = min(stop, (r + 1) * width)
            a = signal_scale[r]
            b = noise_scale[r]
            x0_part, out_part = x0[segment:end], out[segment:end]
            noise_part = noise[segment - start : end - start]
            for j in range(end - segment):
                out_part[j] = _q_sample_element(a, x0_part[j], b, noise_part[j])
            segment = end


def q_sample(x0, t, schedule, noise, out, noise_out=None, stream=None):
    if out.size == 0:
        return
    rows = row_count(t)
    signal_scale = per_row(schedule.sqrt_alphas_cumprod, t, out.dtype)
    noise_scale = per_row(schedule.sqrt_one_minus_alphas_cumprod, t, out.dtype)
    if noise is not None:
        with rows_to_write(out, rows) as out_rows:
            launch(_q_sample_rows, as_rows(x0, rows), as_rows(noise, rows), signal_scale, noise_scale, out_rows)
        return
    write_noise = noise_out is not None
    noise_flat = noise_out.reshape(-1) if write_noise else np.empty(1, out.dtype)
    with rows_to_write(out, 1) as out_flat:
        launch(
            _q_sample_generated, as_rows(x0, 1)[0], signal_scale, noise_scale, out.size // rows,
            out_flat[0], noise_flat, write_noise, words(*stream),
        )
