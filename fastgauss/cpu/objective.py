"""CPU kernels for the training objective: one fused parallel pass per call, the
per-sample reduction included, and one pass per backward.

Two kernels serve every op. ``_forward`` computes the op's weighted term
(fastgauss._device.objective) for each element of the data seen as (rows, width), one
row per sample with its timestep's coefficients (fastgauss._plans.objective), and writes
it (reduce=None) or reduces it per sample with fastgauss.cpu.kl's machinery: the same
work items (``_item``, ``_plan``), the same fixed-order float64 chunk sums (``_chunk_sum``)
and per-row combination (``_combine``), so sums are bitwise identical for any thread
count. ``_backward`` writes the wanted gradients of the same term times the cotangent.

The op is a runtime argument (each row runs one op-specific loop, so the inner loops stay
straight-line and the kernels compile once per dtype, not once per op); every operand is
a C-contiguous (rows, width) array of the compute dtype (other layouts and dtypes are
converted once). An op with fewer than four operands repeats its first one, never read.
"""

import numba
import numpy as np

from fastgauss import _checks, _device
from fastgauss._device import objective as _objective
from fastgauss._device.kl import F64
from fastgauss._device.objective import DECODER, LOGVAR, LOSS, MSE_WEIGHT, VLB
from fastgauss._plans import objective as plan
from fastgauss.cpu import diffusion as _cpu_diffusion
from fastgauss.cpu import kl as _cpu_kl
from fastgauss.cpu import DEVICE, launch, prefer_wide_vectors

KERNEL = _cpu_kl.KERNEL
_inline = numba.njit(error_model="numpy", inline="always")
_o = _device.compile_for(_inline, _objective, linked=(_cpu_kl._d, _cpu_diffusion._d))
_coefficients = _o.coefficients
_model_logvar = _o.model_logvar
_bound_kl = _o.bound_kl
_residual = _o.residual
_loss_gradient = _o.loss_gradient
# The bound's decoder rows (t = 0) forward, and its backward: compiled once per signature and
# inlined by LLVM (forceinline), so their loops vectorize without being re-typed inside each
# kernel. Called per element instead, they were the bottleneck: at (16, 3, 128, 128) one row
# of t = 0 made the float32 forward 0.55 -> 3.3 ms, and the backward ran at 20 ms (now 2).
_forced = _device.compile_for(numba.njit(**DEVICE, forceinline=True), _objective, linked=(_cpu_kl._d, _cpu_diffusion._d))
_bound_decoder = _forced.bound_decoder
_bound_gradient_kl = _forced.bound_gradient_kl
_bound_gradient_decoder = _forced.bound_gradient_decoder
_item, _chunk_sum, _combine, segment, at = _cpu_kl._item, _cpu_kl._chunk_sum, _cpu_kl._combine, _cpu_kl.segment, _cpu_kl.at
constants_like = _cpu_kl.constants_like


@_inline
def _fill(op, k, a, b, u, w, target, c):
    """target[j] = the op's weighted term at element j (one straight-line loop per op and, for
    the bound, per kind of row: decoder or KL)."""
    n = target.size
    if op == LOGVAR:
        for j in range(n):
            target[j] = _model_logvar(k, a[j])
    elif op == VLB:  # and HYBRID, PRIOR
        if k[DECODER] != c.zero:
            for j in range(n):
                target[j] = _bound_decoder(k, a[j], b[j], u[j], w[j], c)
        else:
            for j in range(n):
                target[j] = _bound_kl(k, a[j], b[j], u[j], w[j], c)
    else:
        s = k[MSE_WEIGHT]
        for j in range(n):
            r = _residual(k, a[j], b[j], u[j])
            target[j] = s * (r * r)


@numba.njit(parallel=True, **KERNEL)
def _forward(op, a, b, u, w, table, values, partials, rows, width, chunks_per_row, rows_per_item):
    """values[r, start:stop] = the op's terms; or, when reducing (partials not empty), one
    float64 partial sum per (row, chunk) of them (as fastgauss.cpu.kl._rows)."""
    reducing = partials.size > 0
    for item in numba.prange(-(-rows // rows_per_item) * chunks_per_row):
        prefer_wide_vectors()
        c = constants_like(values)
        first, last, chunk, start, stop = _item(item, rows, width, chunks_per_row, rows_per_item)
        buffer = np.empty(stop - start if reducing else 0, values.dtype)
        for r in range(first, last):
            k = _coefficients(table, r)
            target = buffer if reducing else values[r, start:stop]
            _fill(op, k, a[r, start:stop], b[r, start:stop], u[r, start:stop], w[r, start:stop], target, c)
            if reducing:
                partials[r * chunks_per_row + chunk] = _chunk_sum(target)


@numba.njit(parallel=True, **KERNEL)
def _backward(op, a, b, u, w, table, scale, ga, gb, gu, gw, wants, rows, width, chunks_per_row, rows_per_item):
    """g?[r, j] = scale(r, j) * d term / d operand, for the wanted operands (``wants``: four
    booleans; an unwanted gradient is a (1, 1) array never written). ``scale`` is the
    cotangent per row (1-D, divided by the width for a mean) or per element (2-D).

    The derivatives are evaluated in float64 (a float64 table) whatever the operands' dtype, as
    the KL family's are: in float32 the bound's cancellations (the true and model means,
    1 - e^(true_logvar - logvar), the decoder's two CDF terms) cost up to 3e-5 of a row's
    gradient scale against the reference (measured at (8, 3, 32, 32)); in float64, 4e-8. The
    squared error's loop runs as fast either way (0.83-0.85 ms at (16, 3, 128, 128) float32)."""
    want_a, want_b, want_u, want_w = wants
    for item in numba.prange(-(-rows // rows_per_item) * chunks_per_row):
        prefer_wide_vectors()
        c = F64
        first, last, _, start, stop = _item(item, rows, width, chunks_per_row, rows_per_item)
        for r in range(first, last):
            k = _coefficients(table, r)
            sa, sb, su, sw = a[r, start:stop], b[r, start:stop], u[r, start:stop], w[r, start:stop]
            ss = segment(scale, r, start, stop)
            ta, tb, tu, tw = segment(ga, r, start, stop), segment(gb, r, start, stop), segment(gu, r, start, stop), segment(gw, r, start, stop)
            if op == LOSS:
                for j in range(stop - start):
                    d_a, d_b, d_u, d_w = _loss_gradient(k, np.float64(sa[j]), np.float64(sb[j]), np.float64(su[j]), c)
                    _store(at(ss, j), d_a, d_b, d_u, d_w, ta, tb, tu, tw, j, want_a, want_b, want_u, want_w)
            elif k[DECODER] != c.zero:
                for j in range(stop - start):
                    d_a, d_b, d_u, d_w = _bound_gradient_decoder(k, np.float64(sa[j]), np.float64(sb[j]), np.float64(su[j]), np.float64(sw[j]), c)
                    _store(at(ss, j), d_a, d_b, d_u, d_w, ta, tb, tu, tw, j, want_a, want_b, want_u, want_w)
            else:
                for j in range(stop - start):
                    d_a, d_b, d_u, d_w = _bound_gradient_kl(k, np.float64(sa[j]), np.float64(sb[j]), np.float64(su[j]), np.float64(sw[j]), c)
                    _store(at(ss, j), d_a, d_b, d_u, d_w, ta, tb, tu, tw, j, want_a, want_b, want_u, want_w)


@_inline
def _store(f, d_a, d_b, d_u, d_w, ta, tb, tu, tw, j, want_a, want_b, want_u, want_w):
    if want_a:
        ta[j] = f * d_a
    if want_b:
        tb[j] = f * d_b
    if want_u:
        tu[j] = f * d_u
    if want_w:
        tw[j] = f * d_w


# --- host side ------------------------------------------------------------------------------


def _geometry(shape):
    rows = shape[0] if len(shape) else 1
    return rows, _checks.size(shape[1:])


def _operands(arrays, rows, width, dtype):
    ops = [np.ascontiguousarray(np.reshape(a, (rows, width)), dtype=dtype) for a in arrays]
    return ops + [ops[0]] * (4 - len(ops))


def _run(op, arrays, table, shape, reduce, out):
    """Run ``_forward`` once on the operands and write (or reduce into) ``out``."""
    dtype = out.dtype
    rows, width = _geometry(shape)
    if _cpu_kl.nothing_to_compute(out, rows, width, reduce):
        return
    operands = _operands(arrays, rows, width, dtype)
    chunks_per_row, rows_per_item = _cpu_kl._plan(rows, width)
    if reduce is None:
        values = out.reshape(rows, width) if out.flags.c_contiguous else np.empty((rows, width), dtype)
        launch(_forward, op, *operands, table, values, np.empty(0), rows, width, chunks_per_row, rows_per_item)
        if not np.may_share_memory(values, out):
            out[...] = values.reshape(out.shape)
        return
    partials = np.empty(rows * chunks_per_row)
    launch(_forward, op, *operands, table, np.empty((1, 1), dtype), partials, rows, width, chunks_per_row, rows_per_item)
    sums = out if out.flags.c_contiguous else np.empty(rows, dtype)
    launch(_combine, partials, chunks_per_row, width, _cpu_kl.MODES[reduce], sums)
    if sums is not out:
        out[...] = sums


def _run_vjp(op, cotangent, arrays, table, shape, reduce, grads):
    """Run ``_backward`` once; ``grads`` are the four operands' gradient arrays or None."""
    dtype = next(g.dtype for g in grads if g is not None)
    rows, width = _geometry(shape)
    if rows == 0 or width == 0:
        return
    operands = _operands(arrays, rows, width, dtype)
    if reduce is None:
        scale = np.ascontiguousarray(np.reshape(cotangent, (rows, width)), dtype=dtype)
    else:
        scale = np.ascontiguousarray(np.asarray(cotangent, np.float64) / (width if reduce == "mean" else 1), dtype=dtype)
    # a separate placeholder for each gradient not asked for: two unwanted targets in one array
    # fail the vectorized loop's runtime overlap check, and the loop ran scalar (5x slower)
    targets = [
        np.empty((1, 1), dtype) if g is None else (g.reshape(rows, width) if g.flags.c_contiguous else np.empty((rows, width), dtype))
        for g in grads
    ]
    wants = tuple(g is not None for g in grads)
    chunks_per_row, rows_per_item = _cpu_kl._plan(rows, width)
    launch(_backward, op, *operands, table, scale, *targets, wants, rows, width, chunks_per_row, rows_per_item)
    for g, target in zip(grads, targets):
        if g is not None and not np.may_share_memory(g, target):
            g[...] = target.reshape(g.shape)


def _table(op, schedule, t, shape, dtype, **options):
    """(kernel op code, coefficient table) of the public op ``op``."""
    return plan.OP_CODES[op], plan.table(op, schedule, t, _geometry(shape)[0], dtype, **options)


# --- backend functions ----------------------------------------------------------------------


def model_log_variance(var_output, t, schedule, out, *, kind):
    op, table = _table("model_log_variance", schedule, t, out.shape, out.dtype, var_kind=kind)
    _run(op, (var_output,), table, out.shape, None, out)


def vlb_terms(x0, xt, t, model_output, schedule, var_output, out, *, prediction, var_kind, clip, reduce):
    shape = np.shape(x0)
    op, table = _table("vlb_terms", schedule, t, shape, out.dtype, prediction=prediction, var_kind=var_kind, clip=clip)
    v = model_output if var_output is None else var_output
    _run(op, (x0, xt, model_output, v), table, shape, reduce, out)


def prior_bpd(x0, schedule, out):
    shape = np.shape(x0)
    op, table = _table("prior_bpd", schedule, 0, shape, out.dtype)
    _run(op, (x0,), table, shape, "mean", out)


def diffusion_loss(model_output, x0, noise, t, schedule, out, *, prediction, weighting, gamma, reduce):
    shape = np.shape(x0)
    op, table = _table("diffusion_loss", schedule, t, shape, out.dtype, prediction=prediction, weighting=weighting, gamma=gamma)
    _run(op, (model_output, x0, noise), table, shape, reduce, out)


def hybrid_loss(model_output, var_output, x0, noise, t, schedule, out, *, prediction, var_kind, weighting, gamma, vb_scale, reduce):
    shape = np.shape(x0)
    op, table = _table("hybrid_loss", schedule, t, shape, out.dtype, prediction=prediction, var_kind=var_kind,
                       weighting=weighting, gamma=gamma, vb_scale=vb_scale)
    _run(op, (x0, noise, model_output, var_output), table, shape, reduce, out)


def vlb_terms_vjp(cotangent, x0, xt, t, model_output, schedule, var_output, *, prediction, var_kind, clip, reduce,
                  x0_grad, xt_grad, model_output_grad, var_output_grad):
    shape = np.shape(x0)
    op, table = _table("vlb_terms", schedule, t, shape, np.float64, prediction=prediction, var_kind=var_kind, clip=clip)
    v = model_output if var_output is None else var_output
    _run_vjp(op, cotangent, (x0, xt, model_output, v), table, shape, reduce, (x0_grad, xt_grad, model_output_grad, var_output_grad))


def diffusion_loss_vjp(cotangent, model_output, x0, noise, t, schedule, *, prediction, weighting, gamma, reduce,
                       model_output_grad, x0_grad):
    shape = np.shape(x0)
    op, table = _table("diffusion_loss", schedule, t, shape, np.float64, prediction=prediction, weighting=weighting, gamma=gamma)
    _run_vjp(op, cotangent, (model_output, x0, noise), table, shape, reduce, (model_output_grad, x0_grad, None, None))


def hybrid_loss_vjp(cotangent, model_output, var_output, x0, noise, t, schedule, *, prediction, var_kind, weighting, gamma,
                    vb_scale, reduce, model_output_grad, var_output_grad):
    shape = np.shape(x0)
    op, table = _table("hybrid_loss", schedule, t, shape, np.float64, prediction=prediction, var_kind=var_kind,
                       weighting=weighting, gamma=gamma, vb_scale=vb_scale)
    _run_vjp(op, cotangent, (x0, noise, model_output, var_output), table, shape, reduce,
             (None, None, model_output_grad, var_output_grad))
