"""CUDA kernels for the diffusion ops: the same two kernels as the CPU backend
(``_linear_rows`` and the fused step), with the same coefficients and element code; the
ops themselves come from _coefficients.backend_ops, shared with the CPU backend."""

import numpy as np
from numba import cuda

from fastgauss._plans import diffusion as _coefficients
from fastgauss._checks import shape_dtype
from fastgauss._device import compile_for
from fastgauss._device import diffusion as _diffusion
from fastgauss.cuda import as_flat, as_rows, grid
from fastgauss._plans.stream import values_per_block, words
from fastgauss.cuda.random import launch_config, normals

_d = compile_for(cuda.jit(device=True), _diffusion)
_linear_element = _d.linear_element
_step_element = _d.step_element
NO_NOISE, GIVEN_NOISE, GENERATED_NOISE = 0, 1, 2


@cuda.jit(cache=True)
def _linear_rows(u, w, a, b, out):
    rows, width = out.shape
    for r in range(cuda.blockIdx.y, rows, cuda.gridDim.y):
        ar = a[r]
        br = b[r]
        for j in range(cuda.grid(1), width, cuda.gridsize(1)):
            out[r, j] = _linear_element(ar, u[r, j], br, w[r, j])


@cuda.jit(cache=True)
def _step_blocks(xt, model, noise, noise_mode, ax, am, k0, kx, km, ks, limit, width, out, x0_out, write_x0,
                 noise_out, write_noise, per_block, k_0, k_1, o0, o1, o2, o3):
    """One thread per stream block: its 4 (float32) or 2 (float64) elements in flat C order."""
    n = out.size
    for j in range(cuda.grid(1), (n + per_block - 1) // per_block, cuda.gridsize(1)):
        if noise_mode == GENERATED_NOISE:
            z = normals(per_block, o0, o1, o2, o3, k_0, k_1, j)
        else:
            z = (0.0, 0.0, 0.0, 0.0)
        for lane in range(per_block):
            e = j * per_block + lane
            if e < n:
                r = e // width
                xt_value = xt[e]  # read before out is touched: out may be xt or model
                model_value = model[e]
                if noise_mode == GIVEN_NOISE:
                    noise_value = noise[e]
                else:  # round the normal to out's dtype, as the CPU's buffer does
                    out[e] = z[lane]
                    noise_value = out[e]
                value, x0 = _step_element(ax[r], am[r], k0[r], kx[r], km[r], ks[r], limit, xt_value, model_value, noise_value)
                out[e] = value
                if write_x0:
                    x0_out[e] = x0
                if write_noise:
                    noise_out[e] = z[lane]


def _run_linear(op, u, w, t, schedule, out):
    shape, dtype = shape_dtype(out)
    if 0 in shape:
        return
    rows = _coefficients.row_count(t)
    a, b = (cuda.to_device(np.ascontiguousarray(c, dtype)) for c in _coefficients.linear(op, schedule, np.atleast_1d(t)))
    out_rows = as_rows("out", out, rows)
    blocks, threads = grid(*out_rows.shape)
    _linear_rows[blocks, threads](as_rows("u", u, rows), as_rows("w", w, rows), a, b, out_rows)


def _run_step(xt, model, t, coefficients, clip, out, x0_out, noise, stream, noise_out=None):
    shape, dtype = shape_dtype(out)
    if 0 in shape:
        return
    rows = _coefficients.row_count(t)
    coefficients = [cuda.to_device(np.ascontiguousarray(c, dtype)) for c in coefficients]
    out_flat = as_flat("out", out)
    unused = cuda.device_array(1, dtype)
    mode = GIVEN_NOISE if noise is not None else (GENERATED_NOISE if stream is not None else NO_NOISE)
    per_block = values_per_block(dtype)
    blocks, threads = launch_config(-(-out_flat.size // per_block))
    _step_blocks[blocks, threads](
        as_flat("xt", xt), as_flat("model_output", model), as_flat("noise", noise) if noise is not None else unused, mode,
        *coefficients, dtype.type(np.inf if clip is None else clip), out_flat.size // rows, out_flat,
        as_flat("x0", x0_out) if x0_out is not None else unused, x0_out is not None,
        as_flat("noise", noise_out) if noise_out is not None else unused, noise_out is not None,
        per_block, *words(*(stream if stream is not None else (0, 0))),
    )


# q_sample, q_posterior (the mean), the conversions, ddpm_step and ddim_step
globals().update(_coefficients.backend_ops(_run_linear, _run_step))
