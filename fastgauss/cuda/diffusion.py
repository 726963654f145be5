"""CUDA kernels for the diffusion ops."""

import numpy as np
from numba import cuda

from fastgauss._checks import shape_dtype
from fastgauss._device.diffusion import q_sample_element
from fastgauss._layout import per_row, row_count
from fastgauss.cuda import as_flat, as_rows, grid
from fastgauss.cuda.random import launch_config, normals, words

_q_sample_element = cuda.jit(device=True)(q_sample_element)


@cuda.jit(cache=True)
def _q_sample_rows(x0, noise, signal_scale, noise_scale, out):
    rows, width = out.shape
    for r in range(cuda.blockIdx.y, rows, cuda.gridDim.y):
        a = signal_scale[r]
        b = noise_scale[r]
        for j in range(cuda.grid(1), width, cuda.gridsize(1)):
            out[r, j] = _q_sample_element(a, x0[r, j], b, noise[r, j])


@cuda.jit(cache=True)
def _q_sample_generated(x0, signal_scale, noise_scale, width, out, noise_out, write_noise, per_block, k0, k1, o0, o1, o2, o3):
    """One thread per stream block: its 4 (float32) or 2 (float64) elements, flat C order."""
    n = out.size
    for j in range(cuda.grid(1), (n + per_block - 1) // per_block, cuda.gridsize(1)):
        values = normals(per_block, o0, o1, o2, o3, k0, k1, j)
        for lane in range(per_block):
            e = j * per_block + lane
            if e < n:
                r = e // width
                # values are float64 (float32 normals widened exactly), so a float32
                # x_t is evaluated in float64 here and rounded once: within 1 ulp of the CPU.
                out[e] = _q_sample_element(signal_scale[r], x0[e], noise_scale[r], values[lane])
                if write_noise:
                    noise_out[e] = values[lane]


def q_sample(x0, t, schedule, noise, out, noise_out=None, stream=None):
    shape, dtype = shape_dtype(out)
    if 0 in shape:
        return
    rows = row_count(t)
    signal_scale = cuda.to_device(per_row(schedule.sqrt_alphas_cumprod, t, dtype))
    noise_scale = cuda.to_device(per_row(schedule.sqrt_one_minus_alphas_cumprod, t, dtype))
    if noise is not None:
        out_rows = as_rows("out", out, rows)
        blocks, threads = grid(*out_rows.shape)
        _q_sample_rows[blocks, threads](as_rows("x0", x0, rows), as_rows("noise", noise, rows), signal_scale, noise_scale, out_rows)
        return
    out_flat = as_flat("out", out)
    write_noise = noise_out is not None
    noise_flat = as_flat("noise_out", noise_out) if write_noise else cuda.device_array(1, dtype)
    per_block = 4 if dtype == np.float32 else 2
    blocks, threads = launch_config(-(-out_flat.size // per_block))
    _q_sample_generated[blocks, threads](
        as_flat("x0", x0), signal_scale, noise_scale, out_flat.size // rows, out_flat, noise_flat, write_noise,
        per_block, *words(*stream),
    )
