"""CPU kernels for the diffusion ops."""

import numba

from fastgauss._device.diffusion import q_sample_element
from fastgauss._layout import per_row, row_count
from fastgauss.cpu import CHUNK, as_rows, launch, rows_to_write

_q_sample_element = numba.njit(inline="always")(q_sample_element)


@numba.njit(parallel=True, cache=True)
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


def q_sample(x0, t, schedule, noise, out):
    if out.size == 0:
        return
    rows = row_count(t)
    signal_scale = per_row(schedule.sqrt_alphas_cumprod, t, out.dtype)
    noise_scale = per_row(schedule.sqrt_one_minus_alphas_cumprod, t, out.dtype)
    with rows_to_write(out, rows) as out_rows:
        launch(_q_sample_rows, as_rows(x0, rows), as_rows(noise, rows), signal_scale, noise_scale, out_rows)
