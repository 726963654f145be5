"""CPU kernels for the diffusion ops, and the ops' CPU backend functions.

Two kernels serve every op: ``_linear_rows`` (out = a[r] u + b[r] w, for q_sample with
given noise, the posterior mean and the parameterization conversions) and
``_step_flat`` (the fused DDPM/DDIM step, and q_sample with generated noise), with
per-row coefficients and the noise mode from the shared plan, fastgauss._plans.diffusion.
"""

import numba
import numpy as np

from fastgauss._device import compile_for
from fastgauss._device import diffusion as _diffusion
from fastgauss._plans import diffusion as plan
from fastgauss._plans.diffusion import GENERATED_NOISE, GIVEN_NOISE
from fastgauss.cpu import CHUNK, DEVICE, as_rows, launch, prefer_wide_vectors, rows_to_write, static, unbroadcast
from fastgauss.cpu.random import normal_part

_d = compile_for(numba.njit(**DEVICE, forceinline=True), _diffusion)
_linear_element = _d.linear_element
_step_element = _d.step_element
_step_vjp_element = _d.step_vjp_element
KERNEL = dict(error_model="numpy", cache=True)


@numba.njit(parallel=True, **KERNEL)
def _linear_rows(u, w, a, b, out):
    rows, width = out.shape
    chunks_per_row = (width + CHUNK - 1) // CHUNK
    for chunk in numba.prange(rows * chunks_per_row):
        prefer_wide_vectors()
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
        prefer_wide_vectors()
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


@numba.njit(parallel=True, **KERNEL)
def _step_vjp_flat(n, g, g_constant, g0, with_g0, xt, model, clamped, coefficients, limit, width, zero, grad_xt, want_xt,
                   grad_m, want_m, grad_z, want_z):
    """The backward of the step formula (and of every linear op, as the step with kx = a, km = b)
    on n elements of flat C-order data, one pass: reads the cotangents g (one value, g[0], when
    g_constant: the cotangent of a .sum()) and g0 of x0 when with_g0, and x_t and m only when
    clamped; writes the wanted gradients. An array that is not read may have one element.
    The six flags are ``static`` (compile-time) values: each combination is its own loop without
    branches, which LLVM vectorizes (runtime flags made the pass 2x slower)."""
    ax, am, k0, kx, km, ks = coefficients
    for chunk in numba.prange((n + CHUNK - 1) // CHUNK):
        prefer_wide_vectors()
        start = chunk * CHUNK
        stop = min(start + CHUNK, n)
        segment = start
        while segment < stop:  # the row segments of this chunk
            r = segment // width
            end = min(stop, (r + 1) * width)
            g_part, g0_part, xt_part, m_part = g[segment:end], g0[segment:end], xt[segment:end], model[segment:end]
            g_first = g[0]
            gx_part, gm_part, gz_part = grad_xt[segment:end], grad_m[segment:end], grad_z[segment:end]
            a_x, a_m, c0, cx, cm, cs, lim = ax[r], am[r], k0[r], kx[r], km[r], ks[r], limit
            for j in range(end - segment):
                x0_g = g0_part[j] if len(with_g0) else zero
                g_j = g_first if len(g_constant) else g_part[j]
                xt_j, m_j = (xt_part[j], m_part[j]) if len(clamped) else (zero, zero)
                d_xt, d_m, d_z = _step_vjp_element(a_x, a_m, c0, cx, cm, cs, lim, xt_j, m_j, g_j, x0_g)
                if len(want_xt):
                    gx_part[j] = d_xt
                if len(want_m):
                    gm_part[j] = d_m
                if len(want_z):
                    gz_part[j] = d_z
            segment = end


def _step_vjp(g, x0_g, xt, model, t, coefficients, clip, grad_xt, grad_m, grad_z):
    """Gradients of the step with coefficients (ax, am, k0, kx, km, ks) from the cotangents g (of
    the result; None: zero) and x0_g (of the clamped x0; None: none)."""
    grads = [a for a in (grad_xt, grad_m, grad_z) if a is not None]
    like = grads[0] if grads else None
    if like is None or like.size == 0:
        return
    dtype = like.dtype
    p = plan.step_plan(t, coefficients, clip, None, None, dtype, like.shape)
    flat = lambda a: np.ascontiguousarray(a, dtype).reshape(-1)  # noqa: E731  (a copy only for a mixed dtype or a broadcast)
    g = unbroadcast(g) if g is not None else np.zeros(1, dtype)
    g_constant = g.size == 1  # e.g. the cotangent of a .sum(): read once, not materialized
    g_flat = flat(g) if g_constant else flat(np.broadcast_to(g, like.shape))
    unused = np.empty(1, dtype)
    g0_flat = flat(x0_g) if x0_g is not None else unused
    # x_t and m are read for the clamp only
    xt_flat, m_flat = (as_rows(xt, 1)[0], as_rows(model, 1)[0]) if clip is not None else (unused, unused)
    outs = [a.reshape(-1) if a is not None else unused for a in (grad_xt, grad_m, grad_z)]  # fresh, contiguous
    launch(
        _step_vjp_flat, like.size, g_flat, static(g_constant), g0_flat, static(x0_g is not None), xt_flat, m_flat,
        static(clip is not None), p.coefficients, p.limit, like.size // p.rows, dtype.type(0),
        outs[0], static(grad_xt is not None), outs[1], static(grad_m is not None), outs[2], static(grad_z is not None),
    )


def _linear_vjp(op, cotangent, t, schedule, grad_u, grad_w):
    _step_vjp(cotangent, None, None, None, t, plan.linear_step(op, schedule, t), None, grad_u, grad_w, None)


def _linear(op, u, w, t, schedule, out):
    """out = a[t] u + b[t] w with the op's tables (fastgauss._plans.diffusion.LINEAR)."""
    if out.size == 0:
        return
    p = plan.linear_plan(op, schedule, t, out.dtype)
    with rows_to_write(out, p.rows) as out_rows:
        launch(_linear_rows, as_rows(u, p.rows), as_rows(w, p.rows), p.a, p.b, out_rows)


def _step(xt, model, t, coefficients, clip, out, x0_out, noise, stream, noise_out=None):
    """The fused step with coefficients (ax, am, k0, kx, km, ks) (fastgauss._plans.diffusion)."""
    if out.size == 0:
        return
    p = plan.step_plan(t, coefficients, clip, noise, stream, out.dtype, out.shape)
    # the kernel reads given noise and its own buffer alike: one dtype (a rare mixed-dtype
    # call pays a converted copy)
    noise_flat = as_rows(noise, 1)[0].astype(out.dtype, copy=False) if noise is not None else np.empty(1, out.dtype)
    unused = np.empty(1, out.dtype)
    x0_flat = x0_out.reshape(-1) if x0_out is not None else unused  # fresh, contiguous outputs
    noise_out_flat = noise_out.reshape(-1) if noise_out is not None else unused
    with rows_to_write(out, 1) as out_flat:
        launch(
            _step_flat, as_rows(xt, 1)[0], as_rows(model, 1)[0], noise_flat, p.noise_mode, p.coefficients, p.limit,
            out.size // p.rows, out_flat[0], x0_flat, x0_out is not None, noise_out_flat, noise_out is not None, p.state,
        )


# --- backend functions --------------------------------------------------------------------


def q_sample(x0, t, schedule, noise, out, noise_out, stream):
    if noise is not None:
        _linear("q_sample", x0, noise, t, schedule, out)
    else:
        _step(x0, x0, t, plan.q_sample_generated(schedule, t), None, out, None, None, stream, noise_out)


def q_posterior(x0, xt, t, schedule, out):
    _linear("q_posterior", x0, xt, t, schedule, out)


def predict_x0(xt, eps, t, schedule, out):
    _linear("predict_x0", xt, eps, t, schedule, out)


def predict_eps(xt, x0, t, schedule, out):
    _linear("predict_eps", xt, x0, t, schedule, out)


def predict_v(x0, eps, t, schedule, out):
    _linear("predict_v", x0, eps, t, schedule, out)


def v_to_x0(xt, v, t, schedule, out):
    _linear("v_to_x0", xt, v, t, schedule, out)


def v_to_eps(xt, v, t, schedule, out):
    _linear("v_to_eps", xt, v, t, schedule, out)


def posterior_mean_from_eps(xt, eps, t, schedule, out):
    _linear("posterior_mean_from_eps", xt, eps, t, schedule, out)


def ddpm_step(model_output, xt, t, schedule, out, *, x0_out, noise, stream, prediction, clip, variance):
    _step(xt, model_output, t, plan.ddpm(schedule, t, prediction, variance), clip, out, x0_out, noise, stream)


def ddim_step(model_output, xt, t, t_prev, schedule, out, *, x0_out, noise, stream, eta, prediction, clip):
    _step(xt, model_output, t, plan.ddim(schedule, t, t_prev, eta, prediction), clip, out, x0_out, noise, stream)


# --- backward (VJP) backend functions: one kernel, _step_vjp_flat ---------------------------------


def q_sample_vjp(cotangent, noise_cotangent, t, schedule, grad_x0, grad_noise):
    coefficients = plan.q_sample_vjp_step(schedule, t, noise_cotangent)
    _step_vjp(cotangent, noise_cotangent, None, None, t, coefficients, None, grad_x0, grad_noise, None)


def q_posterior_vjp(cotangent, t, schedule, grad_x0, grad_xt):
    _linear_vjp("q_posterior", cotangent, t, schedule, grad_x0, grad_xt)


def predict_x0_vjp(cotangent, t, schedule, grad_xt, grad_eps):
    _linear_vjp("predict_x0", cotangent, t, schedule, grad_xt, grad_eps)


def predict_eps_vjp(cotangent, t, schedule, grad_xt, grad_x0):
    _linear_vjp("predict_eps", cotangent, t, schedule, grad_xt, grad_x0)


def predict_v_vjp(cotangent, t, schedule, grad_x0, grad_eps):
    _linear_vjp("predict_v", cotangent, t, schedule, grad_x0, grad_eps)


def v_to_x0_vjp(cotangent, t, schedule, grad_xt, grad_v):
    _linear_vjp("v_to_x0", cotangent, t, schedule, grad_xt, grad_v)


def v_to_eps_vjp(cotangent, t, schedule, grad_xt, grad_v):
    _linear_vjp("v_to_eps", cotangent, t, schedule, grad_xt, grad_v)


def posterior_mean_from_eps_vjp(cotangent, t, schedule, grad_xt, grad_eps):
    _linear_vjp("posterior_mean_from_eps", cotangent, t, schedule, grad_xt, grad_eps)


def ddpm_step_vjp(cotangent, model_output, xt, t, schedule, grad_model_output, grad_xt, *, x0_cotangent, grad_noise, prediction, clip, variance):
    coefficients = plan.ddpm(schedule, t, prediction, variance)
    _step_vjp(cotangent, x0_cotangent, xt, model_output, t, coefficients, clip, grad_xt, grad_model_output, grad_noise)


def ddim_step_vjp(cotangent, model_output, xt, t, t_prev, schedule, grad_model_output, *, grad_xt, x0_cotangent, grad_noise, eta, prediction, clip):
    coefficients = plan.ddim(schedule, t, t_prev, eta, prediction)
    _step_vjp(cotangent, x0_cotangent, xt, model_output, t, coefficients, clip, grad_xt, grad_model_output, grad_noise)
