"""CUDA kernels for the training objective: the CPU backend's design (fastgauss.cpu.objective)
on the GPU, with fastgauss.cuda.kl's reduction machinery.

``_rows`` writes the op's weighted term (fastgauss._device.objective.value) for each
element of the data seen as (rows, width), one row per sample with its timestep's
coefficients (fastgauss._plans.objective); ``_partials`` sums them per (row, block) in
float64 (fastgauss.cuda.kl.block_sum's fixed tree) and fastgauss.cuda.kl._combine adds
each row's block partials in block order, so results are identical run to run.
``_backward`` writes the wanted gradients times the cotangent. Operands are
(rows, width) device views from fastgauss.cuda.kl.operand (converted once when their
dtype differs); the op is a runtime argument, so each kernel compiles once per dtype.
"""


import numpy as np
from numba import cuda, float64

from fastgauss import _checks, _device
from fastgauss._device import kl as _kl
from fastgauss._device import objective as _objective
from fastgauss._plans import objective as plan
from fastgauss.cuda import THREADS, _numba_view, as_flat, block_size, constant, grid, launch_stream, placeholder
from fastgauss.cuda import diffusion as _cuda_diffusion
from fastgauss.cuda import kl as _cuda_kl

_o = _device.compile_for(cuda.jit(device=True), _objective, linked=(_cuda_kl._d, _cuda_diffusion._d))
_coefficients = _o.coefficients
_value = _o.value
_gradient = _o.gradient
block_sum = _cuda_kl.block_sum


@cuda.jit(cache=True)
def _rows(op, a, b, u, w, table, c, out):
    rows, width = out.shape
    for r in range(cuda.blockIdx.y, rows, cuda.gridDim.y):
        k = _coefficients(table, r)
        for j in range(cuda.grid(1), width, cuda.gridsize(1)):
            out[r, j] = _value(op, k, a[r, j], b[r, j], u[r, j], w[r, j], c)


@cuda.jit(cache=True)
def _partials(op, a, b, u, w, table, c, width, partials):
    shared = cuda.shared.array(THREADS, float64)
    for r in range(cuda.blockIdx.y, partials.shape[0], cuda.gridDim.y):
        k = _coefficients(table, r)
        total = 0.0
        for j in range(cuda.grid(1), width, cuda.gridsize(1)):
            total += _value(op, k, a[r, j], b[r, j], u[r, j], w[r, j], c)
        total = block_sum(shared, total)
        if cuda.threadIdx.x == 0:
            partials[r, cuda.blockIdx.x] = total


@cuda.jit(cache=True)
def _backward(op, a, b, u, w, table, c, scale, factor, ga, gb, gu, gw, want_a, want_b, want_u, want_w):
    """g?[r, j] = factor scale(r, j) d term / d operand for the wanted operands; ``scale`` is
    (rows, 1) (the cotangent per sample) or (rows, width). The derivatives are evaluated in
    float64 (a float64 table and constants), whatever the operands' dtype, as the CPU's are
    (fastgauss.cpu.objective._backward)."""
    rows, width = a.shape
    for r in range(cuda.blockIdx.y, rows, cuda.gridDim.y):
        k = _coefficients(table, r)
        for j in range(cuda.grid(1), width, cuda.gridsize(1)):
            d_a, d_b, d_u, d_w = _gradient(op, k, float64(a[r, j]), float64(b[r, j]), float64(u[r, j]), float64(w[r, j]), c)
            f = factor * scale[r, j if scale.shape[1] > 1 else 0]
            if want_a:
                ga[r, j] = f * d_a
            if want_b:
                gb[r, j] = f * d_b
            if want_u:
                gu[r, j] = f * d_u
            if want_w:
                gw[r, j] = f * d_w


# --- host side ------------------------------------------------------------------------------


def _geometry(shape):
    return (shape[0] if len(shape) else 1), _checks.size(shape[1:])


def _operands(names, arrays, shape, dtype):
    rows, width = _geometry(shape)
    ops = [_cuda_kl.operand(n, a, shape, rows, width, dtype) for n, a in zip(names, arrays)]
    return ops + [ops[0]] * (4 - len(ops))


def _run(op, names, arrays, table, shape, reduce, out):
    dtype = _checks.shape_dtype(out)[1]
    rows, width = _geometry(shape)
    if _cuda_kl.nothing_to_compute(out, rows, width, reduce):
        return
    out_view = _numba_view(out)
    operands = _operands(names, arrays, shape, dtype)
    table, c = constant(table), _kl.constants(dtype)
    blocks, threads = grid(rows, width)
    if reduce is None:
        _rows[blocks, threads, launch_stream()](op, *operands, table, c, as_flat("out", out_view).reshape(rows, width))
        return
    partials = cuda.device_array((rows, blocks[0]), np.float64)
    _partials[blocks, threads, launch_stream()](op, *operands, table, c, width, partials)
    _cuda_kl._combine[max(1, min(-(-rows // THREADS), 4096)), block_size(rows), launch_stream()](partials, width, reduce == "mean", as_flat("out", out_view))


def _run_vjp(op, cotangent, names, arrays, table, shape, reduce, grads):
    dtype = next(_checks.shape_dtype(g)[1] for g in grads if g is not None)
    rows, width = _geometry(shape)
    if rows == 0 or width == 0:
        return
    operands = _operands(names, arrays, shape, dtype)
    if reduce is None:
        scale = _cuda_kl.operand("cotangent", cotangent, shape, rows, width, dtype)
    else:
        scale = _cuda_kl.operand("cotangent", cotangent, (rows,), rows, 1, dtype)
    factor = np.dtype(dtype).type(1.0 / width if reduce == "mean" else 1.0)
    unused = placeholder((1, 1), dtype)
    targets = [unused if g is None else as_flat("gradient", _numba_view(g)).reshape(rows, width) for g in grads]
    blocks, threads = grid(rows, width)
    _backward[blocks, threads, launch_stream()](op, *operands, constant(table), _kl.F64, scale, factor, *targets,
                               *(g is not None for g in grads))


def _table(op, schedule, t, shape, dtype, **options):
    return plan.OP_CODES[op], plan.table(op, schedule, t, _geometry(shape)[0], dtype, **options)


def _shape(a):
    return tuple(_checks.shape_dtype(a)[0])


# --- backend functions ----------------------------------------------------------------------


def model_log_variance(var_output, t, schedule, out, *, kind):
    shape, dtype = _checks.shape_dtype(out)
    op, table = _table("model_log_variance", schedule, t, shape, dtype, var_kind=kind)
    _run(op, ("var_output",), (var_output,), table, tuple(shape), None, out)


def vlb_terms(x0, xt, t, model_output, schedule, var_output, out, *, prediction, var_kind, clip, reduce):
    shape = _shape(x0)
    op, table = _table("vlb_terms", schedule, t, shape, _checks.shape_dtype(out)[1], prediction=prediction, var_kind=var_kind,
                       clip=clip)
    v = model_output if var_output is None else var_output
    _run(op, ("x0", "xt", "model_output", "var_output"), (x0, xt, model_output, v), table, shape, reduce, out)


def prior_bpd(x0, schedule, out):
    shape = _shape(x0)
    op, table = _table("prior_bpd", schedule, 0, shape, _checks.shape_dtype(out)[1])
    _run(op, ("x0",), (x0,), table, shape, "mean", out)


def diffusion_loss(model_output, x0, noise, t, schedule, out, *, prediction, weighting, gamma, reduce):
    shape = _shape(x0)
    op, table = _table("diffusion_loss", schedule, t, shape, _checks.shape_dtype(out)[1], prediction=prediction,
                       weighting=weighting, gamma=gamma)
    _run(op, ("model_output", "x0", "noise"), (model_output, x0, noise), table, shape, reduce, out)


def hybrid_loss(model_output, var_output, x0, noise, t, schedule, out, *, prediction, var_kind, weighting, gamma, vb_scale, reduce):
    shape = _shape(x0)
    op, table = _table("hybrid_loss", schedule, t, shape, _checks.shape_dtype(out)[1], prediction=prediction,
                       var_kind=var_kind, weighting=weighting, gamma=gamma, vb_scale=vb_scale)
    _run(op, ("x0", "noise", "model_output", "var_output"), (x0, noise, model_output, var_output), table, shape, reduce, out)


def vlb_terms_vjp(cotangent, x0, xt, t, model_output, schedule, var_output, *, prediction, var_kind, clip, reduce,
                  x0_grad, xt_grad, model_output_grad, var_output_grad):
    shape = _shape(x0)
    grads = (x0_grad, xt_grad, model_output_grad, var_output_grad)
    op, table = _table("vlb_terms", schedule, t, shape, np.float64, prediction=prediction, var_kind=var_kind, clip=clip)
    v = model_output if var_output is None else var_output
    _run_vjp(op, cotangent, ("x0", "xt", "model_output", "var_output"), (x0, xt, model_output, v), table, shape, reduce, grads)


def diffusion_loss_vjp(cotangent, model_output, x0, noise, t, schedule, *, prediction, weighting, gamma, reduce,
                       model_output_grad, x0_grad):
    shape = _shape(x0)
    op, table = _table("diffusion_loss", schedule, t, shape, np.float64, prediction=prediction,
                       weighting=weighting, gamma=gamma)
    _run_vjp(op, cotangent, ("model_output", "x0", "noise"), (model_output, x0, noise), table, shape, reduce,
             (model_output_grad, x0_grad, None, None))


def hybrid_loss_vjp(cotangent, model_output, var_output, x0, noise, t, schedule, *, prediction, var_kind, weighting, gamma,
                    vb_scale, reduce, model_output_grad, var_output_grad):
    shape = _shape(x0)
    op, table = _table("hybrid_loss", schedule, t, shape, np.float64, prediction=prediction,
                       var_kind=var_kind, weighting=weighting, gamma=gamma, vb_scale=vb_scale)
    _run_vjp(op, cotangent, ("x0", "noise", "model_output", "var_output"), (x0, noise, model_output, var_output), table, shape,
             reduce, (None, None, model_output_grad, var_output_grad))
