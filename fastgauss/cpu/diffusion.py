"""CPU kernels for the diffusion ops.

Two kernels serve every op: ``_linear_rows`` (out = a[r] u + b[r] w, for q_sample with
given noise, the posterior mean and the parameterization conversions) and
``_step_flat`` (the fused DDPM/DDIM step, and q_sample with generated noise), with
per-row coefficients from fastgauss._coefficients.
"""

import numba
import numpy as np

from fastgauss._plans import diffusion as _coefficients
from fastgauss._device import compile_for
from fastgauss._device import diffusion as _diffusion
from fastgauss.cpu import CHUNK, as_rows, launch, rows_to_write
from fastgauss._plans.stream import words
from fastgauss.cpu.random import normal_part

_d = compile_for(numba.njit(error_model="numpy", inline="always"), _diffusion)
_linear_element = _d.linear_element
_step_element = _d.step_element
KERNEL = dict(error_model="numpy", cache=True)
NO_NOISE, GIVEN_NOISE, GENERATED_NOISE = 0, 1, 2


@numba.njit(parallel=True, **KERNEL)
def _linear_rows(u, w, a, b, out):
    rows, width = out.shape
    chunks_per_row = (width + CHUNK - 1) // CHUNK
    for chunk in numba.prange(rows * chunks_per_row):
        r = chunk // chunks_per_row
        start = (chunk - r * chunks_per_row) * CHUNK
        stop = min(start + CHUNK, width)
        ar = a[r]
        br = b[r]
        # 1-D slices: the inner loop over them vectorizes; 2-D indexing does not.
        u_part, w_part, out_part = u[r, start:stop], w[r, start:stop], out[r, start:stop]
        for j in range(out_part.size):
            out_part[j] = _linear_element(ar, u_part[j], br, w_part[j])


@numba.njit(parallel=True, **KERNEL)
def _step_flat(xt, model, noise, noise_mode, coefficients, limit, width, out, x0_out, write_x0, noise_out, write_noise, state):
    """The reverse-step formula on flat C-order data; element e is in row e // width and
    uses stream element e when the noise is generated (in a cache-resident chunk buffer,
    copied to noise_out when wanted)."""
    ax, am, k0, kx, km, ks = coefficients
    n = out.size
    for chunk in numba.prange((n + CHUNK - 1) // CHUNK):
        start = chunk * CHUNK
        stop = min(start + CHUNK, n)
        buffer = np.zeros(stop - start, out.dtype)
        if noise_mode == GENERATED_NOISE:
            normal_part(buffer, start, state)
            if write_noise:
                noise_out[start:stop] = buffer
        segment = start
        while segment < stop:  # the row segments of this chunk
            r = segment // width
            end = min(stop, (r + 1) * width)
            xt_part, m_part, out_part = xt[segment:end], model[segment:end], out[segment:end]
            z_part = noise[segment:end] if noise_mode == GIVEN_NOISE else buffer[segment - start : end - start]
            x0_part = x0_out[segment:end] if write_x0 else out_part  # unused unless write_x0
            a_x, a_m, c0, cx, cm, cs, lim = ax[r], am[r], k0[r], kx[r], km[r], ks[r], limit
            for j in range(end - segment):
                value, x0 = _step_element(a_x, a_m, c0, cx, cm, cs, lim, xt_part[j], m_part[j], z_part[j])
                out_part[j] = value
                if write_x0:
                    x0_part[j] = x0
            segment = end


def _run_linear(op, u, w, t, schedule, out):
    if out.size == 0:
        return
    rows = _coefficients.row_count(t)
    a, b = (np.ascontiguousarray(c, out.dtype) for c in _coefficients.linear(op, schedule, np.atleast_1d(t)))
    with rows_to_write(out, rows) as out_rows:
        launch(_linear_rows, as_rows(u, rows), as_rows(w, rows), a, b, out_rows)


def _run_step(xt, model, t, coefficients, clip, out, x0_out, noise, stream, noise_out=None):
    if out.size == 0:
        return
    rows = _coefficients.row_count(t)
    coefficients = tuple(np.ascontiguousarray(c, out.dtype) for c in coefficients)
    if noise is not None:
        # the kernel reads given noise and its own buffer alike: one dtype (a rare
        # mixed-dtype call pays a converted copy)
        mode, noise_flat = GIVEN_NOISE, as_rows(noise, 1)[0].astype(out.dtype, copy=False)
    else:
        mode, noise_flat = (GENERATED_NOISE if stream is not None else NO_NOISE), np.empty(1, out.dtype)
    state = words(*stream) if stream is not None else words(0, 0)
    limit = out.dtype.type(np.inf if clip is None else clip)
    unused = np.empty(1, out.dtype)
    x0_flat = x0_out.reshape(-1) if x0_out is not None else unused  # fresh, contiguous outputs
    noise_out_flat = noise_out.reshape(-1) if noise_out is not None else unused
    with rows_to_write(out, 1) as out_flat:
        launch(
            _step_flat, as_rows(xt, 1)[0], as_rows(model, 1)[0], noise_flat, mode, coefficients, limit,
            out.size // rows, out_flat[0], x0_flat, x0_out is not None, noise_out_flat, noise_out is not None, state,
        )


# q_sample, q_posterior (the mean), the conversions, ddpm_step and ddim_step
globals().update(_coefficients.backend_ops(_run_linear, _run_step))
