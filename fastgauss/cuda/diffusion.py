"""CUDA kernels for the diffusion ops."""

from numba import cuda

from fastgauss._checks import shape_dtype
from fastgauss._device.diffusion import q_sample_element
from fastgauss._layout import per_row, row_count
from fastgauss.cuda import as_rows, grid

_q_sample_element = cuda.jit(device=True)(q_sample_element)


@cuda.jit(cache=True)
def _q_sample_rows(x0, noise, signal_scale, noise_scale, out):
    rows, width = out.shape
    for r in range(cuda.blockIdx.y, rows, cuda.gridDim.y):
        a = signal_scale[r]
        b = noise_scale[r]
        for j in range(cuda.grid(1), width, cuda.gridsize(1)):
            out[r, j] = _q_sample_element(a, x0[r, j], b, noise[r, j])


def q_sample(x0, t, schedule, noise, out):
    shape, dtype = shape_dtype(out)
    if 0 in shape:
        return
    rows = row_count(t)
    signal_scale = cuda.to_device(per_row(schedule.sqrt_alphas_cumprod, t, dtype))
    noise_scale = cuda.to_device(per_row(schedule.sqrt_one_minus_alphas_cumprod, t, dtype))
    out_rows = as_rows("out", out, rows)
    blocks, threads = grid(*out_rows.shape)
    _q_sample_rows[blocks, threads](as_rows("x0", x0, rows), as_rows("noise", noise, rows), signal_scale, noise_scale, out_rows)
