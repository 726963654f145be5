"""CUDA kernels for the diffusion ops, and the ops' CUDA backend functions: the same two
kernels as the CPU backend (``_linear_rows`` and the fused step), with the same element
code and the same plan (coefficients and noise mode from fastgauss._plans.diffusion)."""

import numpy as np
from numba import cuda

from fastgauss._checks import shape_dtype, size as _size
from fastgauss._device import compile_for
from fastgauss._device import diffusion as _diffusion
from fastgauss._plans import diffusion as plan
from fastgauss._plans.diffusion import GENERATED_NOISE, GIVEN_NOISE
from fastgauss._plans.stream import values_per_block
from fastgauss.cuda import as_flat, as_rows, constant, grid, launch_stream, placeholder, rounded_product, to_device
from fastgauss.cuda.random import launch_config, normals, on_device, stream_slot

_d = compile_for(cuda.jit(device=True), _diffusion, overrides={"product": rounded_product})
_linear_element = _d.linear_element
_step_element = _d.step_element
_step_vjp_element = _d.step_vjp_element


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
                 noise_out, write_noise, per_block, k_0, k_1, o0, o1, o2, o3, base, run, extents, strides):
    """One thread per group of 4 (float32) or 2 (float64) elements in flat C order: one stream
    block for a whole array; in a window, element e uses global element window_index(e)."""
    n = out.size
    for j in range(cuda.grid(1), (n + per_block - 1) // per_block, cuda.gridsize(1)):
        held = np.int64(-1)  # the stream block in z
        z = (0.0, 0.0, 0.0, 0.0)
        for lane in range(per_block):
            e = j * per_block + lane
            if e < n:
                g = lane
                if noise_mode == GENERATED_NOISE:
                    b, g = stream_slot(np.int64(e), per_block, base, run, extents, strides)
                    if b != held:
                        z = normals(per_block, o0, o1, o2, o3, k_0, k_1, b)
                        held = b
                r = e // width
                xt_value = xt[e]  # read before out is touched: out may be xt or model
                model_value = model[e]
                if noise_mode == GIVEN_NOISE:
                    noise_value = noise[e]
                else:  # round the normal to out's dtype, as the CPU's buffer does
                    out[e] = z[g]
                    noise_value = out[e]
                value, x0 = _step_element(ax[r], am[r], k0[r], kx[r], km[r], ks[r], limit, xt_value, model_value, noise_value)
                out[e] = value
                if write_x0:
                    x0_out[e] = x0
                if write_noise:
                    noise_out[e] = z[g]


@cuda.jit(cache=True)
def _step_vjp_elements(g, g0, with_g0, xt, model, ax, am, k0, kx, km, ks, limit, width, zero,
                       grad_xt, want_xt, grad_m, want_m, grad_z, want_z):
    """The backward of the step (and of every linear op, as the step with kx = a, km = b): one
    thread per element, flat C order (see fastgauss.cpu.diffusion._step_vjp_flat)."""
    for e in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        r = e // width
        x0_g = g0[e] if with_g0 else zero
        d_xt, d_m, d_z = _step_vjp_element(ax[r], am[r], k0[r], kx[r], km[r], ks[r], limit, xt[e], model[e], g[e], x0_g)
        if want_xt:
            grad_xt[e] = d_xt
        if want_m:
            grad_m[e] = d_m
        if want_z:
            grad_z[e] = d_z


def _step_vjp(g, x0_g, xt, model, t, coefficients, clip, grad_xt, grad_m, grad_z):
    """Gradients of the step with coefficients (ax, am, k0, kx, km, ks) from the cotangents g (of
    the result; None: zero) and x0_g (of the clamped x0; None: none)."""
    grads = [a for a in (grad_xt, grad_m, grad_z) if a is not None]
    if not grads:
        return
    shape, dtype = shape_dtype(grads[0])
    if 0 in shape:
        return
    p = plan.step_plan(t, coefficients, clip, None, None, dtype, shape)
    g_flat = as_flat("cotangent", g) if g is not None else to_device(np.zeros(_size(shape), dtype))
    g0_flat = as_flat("x0 cotangent", x0_g) if x0_g is not None else g_flat
    # x_t and m are read for the clamp only; without one the kernel reads g in their place
    xt_flat, m_flat = (as_flat("xt", xt), as_flat("model_output", model)) if clip is not None else (g_flat, g_flat)
    unused = placeholder(1, dtype)
    outs = [as_flat("grad", a) if a is not None else unused for a in (grad_xt, grad_m, grad_z)]
    blocks, threads = launch_config(g_flat.size)
    _step_vjp_elements[blocks, threads, launch_stream()](
        g_flat, g0_flat, x0_g is not None, xt_flat, m_flat, *(constant(c) for c in p.coefficients), p.limit,
        g_flat.size // p.rows, dtype.type(0), outs[0], grad_xt is not None, outs[1], grad_m is not None, outs[2], grad_z is not None,
    )


def _linear_vjp(op, cotangent, t, schedule, grad_u, grad_w):
    _step_vjp(cotangent, None, None, None, t, plan.linear_step(op, schedule, t), None, grad_u, grad_w, None)


def _linear(op, u, w, t, schedule, out):
    """out = a[t] u + b[t] w with the op's tables (fastgauss._plans.diffusion.LINEAR)."""
    shape, dtype = shape_dtype(out)
    if 0 in shape:
        return
    p = plan.linear_plan(op, schedule, t, dtype)
    out_rows = as_rows("out", out, p.rows)
    blocks, threads = grid(*out_rows.shape)
    _linear_rows[blocks, threads, launch_stream()](as_rows("u", u, p.rows), as_rows("w", w, p.rows), constant(p.a), constant(p.b), out_rows)


def _step(xt, model, t, coefficients, clip, out, x0_out, noise, stream, noise_out=None):
    """The fused step with coefficients (ax, am, k0, kx, km, ks) (fastgauss._plans.diffusion)."""
    shape, dtype = shape_dtype(out)
    if 0 in shape:
        return
    p = plan.step_plan(t, coefficients, clip, noise, stream, dtype, shape)
    out_flat = as_flat("out", out)
    unused = placeholder(1, dtype)
    per_block = values_per_block(dtype)
    blocks, threads = launch_config(-(-out_flat.size // per_block))
    _step_blocks[blocks, threads, launch_stream()](
        as_flat("xt", xt), as_flat("model_output", model), as_flat("noise", noise) if noise is not None else unused, p.noise_mode,
        *(constant(c) for c in p.coefficients), p.limit, out_flat.size // p.rows, out_flat,
        as_flat("x0", x0_out) if x0_out is not None else unused, x0_out is not None,
        as_flat("noise", noise_out) if noise_out is not None else unused, noise_out is not None,
        per_block, *on_device(p.state),
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


# --- backward (VJP) backend functions: one kernel, _step_vjp_elements ---------------------------------


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
