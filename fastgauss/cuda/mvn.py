"""CUDA kernels for the multivariate-normal ops: one thread per matrix (or output vector).

For d <= MAX_LOCAL_D each thread factors its matrix into a per-thread local array
(registers and L1) and goes straight on to the sample, the whitening or the KL terms,
drawing its noise from the Philox stream itself (the blocks that hold its d elements).
A covariance that several outputs share is factored first, into a float64 scratch
the size of the covariances. For larger d every covariance is factored first, one
thread per matrix, into that scratch in global memory, and the kernels read it;
correct, but not tuned for large d (cuSOLVER's batched potrf would be the fast path).

Same scalar code as the CPU (fastgauss._device.mvn), so the factorization and the
formulas are evaluated in the same order; NVVM may contract multiply-adds into FMAs,
so results agree with the CPU to rounding, not bitwise.
"""

import numpy as np
from numba import cuda

from fastgauss import _device
from fastgauss._checks import shape_dtype
from fastgauss._device import mvn as _mvn
from fastgauss._plans import mvn as plan
from fastgauss._plans.mvn import NO_FAILURE, geometry
from fastgauss._plans.stream import kernel_state, values_per_block, words
from fastgauss.cuda import _numba_view, constant, launch_stream, placeholder, to_device, to_host
from fastgauss.cuda.random import launch_config, normals, on_device, standard_normal, stream_slot

_d = _device.compile_for(cuda.jit(device=True), _mvn)
_operand_index = _d.operand_index
_factor = _d.factor
_store = _d.store
_tril_apply = _d.tril_apply
_whiten = _d.whiten
_kl = _d.kl

MAX_LOCAL_D = 16  # largest order factored in a per-thread local array
UNROLL_MAX_D = 8  # kernels are compiled per order up to this one (see dims)
NONE = np.iinfo(np.int64).max


# --- kernels ------------------------------------------------------------------------------


@cuda.jit(cache=True)
def _cholesky_local(a, upper, tol, dims, out, status):
    L = cuda.local.array((1, MAX_LOCAL_D, MAX_LOCAL_D), np.float64)
    d = len(dims) if len(dims) else a.shape[1]
    for c in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        code = _factor(a, c, upper, tol, L, 0, d)
        status[c] = code
        if code <= 0:
            _store(L, 0, d, upper, out, c)


@cuda.jit(cache=True)
def _cholesky_global(a, upper, tol, work, out, status):
    """work: float64 (count, d, d) scratch, one matrix per thread; may be out itself."""
    d = a.shape[1]
    for c in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        code = _factor(a, c, upper, tol, work, c, d)
        status[c] = code
        if code <= 0:
            _store(work, c, d, upper, out, c)


@cuda.jit(device=True)
def _vector_normals(eps, d, e, per_block, k0, k1, o0, o1, o2, o3, base, run, extents, strides):
    """eps[0 .. d-1] = the stream values of local elements e .. e + d - 1 (global elements
    window_index(e + i): stream_slot; the Philox blocks holding them)."""
    held = np.int64(-1)
    values = (0.0, 0.0, 0.0, 0.0)
    for i in range(d):
        block, lane = stream_slot(np.int64(e + i), per_block, base, run, extents, strides)
        if block != held:
            values = normals(per_block, o0, o1, o2, o3, k0, k1, block)
            held = block
        eps[i] = values[lane]


@cuda.jit(cache=True)
def _sample_local(
    mean, mat, factor, tol, shape, mean_strides, mat_strides, nbatch, noise, generate, per_block, k0, k1, o0, o1, o2, o3,
    base, run, extents, strides, dims, out, status
):
    """out (flat) = mean + L eps per vector n (batch index n % nbatch), one thread per vector."""
    L = cuda.local.array((1, MAX_LOCAL_D, MAX_LOCAL_D), np.float64)
    eps = cuda.local.array(MAX_LOCAL_D, np.float64)
    d = len(dims) if len(dims) else mean.shape[1]
    nd = shape.size
    for v in range(cuda.grid(1), out.size // d, cuda.gridsize(1)):
        b = v % nbatch
        m = _operand_index(b, shape, mean_strides, nd)
        c = _operand_index(b, shape, mat_strides, nd)
        if factor:
            code = _factor(mat, c, False, tol, L, 0, d)
            status[c] = code
            if code > 0:
                continue
        if generate:
            _vector_normals(eps, d, v * d, per_block, k0, k1, o0, o1, o2, o3, base, run, extents, strides)
            if factor:
                _tril_apply(L, 0, d, mean, m, eps, 0, out, v * d)
            else:
                _tril_apply(mat, c, d, mean, m, eps, 0, out, v * d)
        elif factor:
            _tril_apply(L, 0, d, mean, m, noise, v * d, out, v * d)
        else:
            _tril_apply(mat, c, d, mean, m, noise, v * d, out, v * d)


@cuda.jit(cache=True)
def _sample_global(mean, L, shape, mean_strides, mat_strides, nbatch, eps, out):
    """out = mean + L eps per vector with factors L in memory; eps may be out itself."""
    d = mean.shape[1]
    nd = shape.size
    for v in range(cuda.grid(1), out.size // d, cuda.gridsize(1)):
        b = v % nbatch
        m = _operand_index(b, shape, mean_strides, nd)
        c = _operand_index(b, shape, mat_strides, nd)
        _tril_apply(L, c, d, mean, m, eps, v * d, out, v * d)


@cuda.jit(cache=True)
def _logpdf_local(x, mean, mat, factor, shape, x_strides, mean_strides, mat_strides, log_2pi, dims, out, status):
    L = cuda.local.array((1, MAX_LOCAL_D, MAX_LOCAL_D), np.float64)
    z = cuda.local.array((1, MAX_LOCAL_D), np.float64)
    d = len(dims) if len(dims) else x.shape[1]
    nd = shape.size
    for b in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        xi = _operand_index(b, shape, x_strides, nd)
        m = _operand_index(b, shape, mean_strides, nd)
        c = _operand_index(b, shape, mat_strides, nd)
        if factor:
            code = _factor(mat, c, False, -1.0, L, 0, d)
            status[c] = code
            if code > 0:
                continue
            squared, half_logdet = _whiten(L, 0, d, x, xi, mean, m, z, 0)
        else:
            squared, half_logdet = _whiten(mat, c, d, x, xi, mean, m, z, 0)
        out[b] = -0.5 * (d * log_2pi + squared) - half_logdet


@cuda.jit(cache=True)
def _logpdf_global(x, mean, L, shape, x_strides, mean_strides, mat_strides, log_2pi, z, out):
    """z: float64 (count, d) scratch, one row per output."""
    d = x.shape[1]
    nd = shape.size
    for b in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        xi = _operand_index(b, shape, x_strides, nd)
        m = _operand_index(b, shape, mean_strides, nd)
        c = _operand_index(b, shape, mat_strides, nd)
        squared, half_logdet = _whiten(L, c, d, x, xi, mean, m, z, b)
        out[b] = -0.5 * (d * log_2pi + squared) - half_logdet


@cuda.jit(cache=True)
def _kl_local(mean1, mat1, factor1, mean2, mat2, factor2, shape, strides, dims, out, status1, status2):
    L1 = cuda.local.array((1, MAX_LOCAL_D, MAX_LOCAL_D), np.float64)
    L2 = cuda.local.array((1, MAX_LOCAL_D, MAX_LOCAL_D), np.float64)
    z = cuda.local.array((1, MAX_LOCAL_D), np.float64)
    d = len(dims) if len(dims) else mean1.shape[1]
    nd = shape.size
    for b in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        m1 = _operand_index(b, shape, strides[0], nd)
        c1 = _operand_index(b, shape, strides[1], nd)
        m2 = _operand_index(b, shape, strides[2], nd)
        c2 = _operand_index(b, shape, strides[3], nd)
        if factor1:
            code = _factor(mat1, c1, False, -1.0, L1, 0, d)
            status1[c1] = code
            if code > 0:
                continue
        if factor2:
            code = _factor(mat2, c2, False, -1.0, L2, 0, d)
            status2[c2] = code
            if code > 0:
                continue
        if factor1 and factor2:
            out[b] = _kl(L1, 0, L2, 0, d, mean1, m1, mean2, m2, z, 0)
        elif factor1:
            out[b] = _kl(L1, 0, mat2, c2, d, mean1, m1, mean2, m2, z, 0)
        elif factor2:
            out[b] = _kl(mat1, c1, L2, 0, d, mean1, m1, mean2, m2, z, 0)
        else:
            out[b] = _kl(mat1, c1, mat2, c2, d, mean1, m1, mean2, m2, z, 0)


@cuda.jit(cache=True)
def _kl_global(mean1, L1, mean2, L2, shape, strides, z, out):
    d = mean1.shape[1]
    nd = shape.size
    for b in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        m1 = _operand_index(b, shape, strides[0], nd)
        c1 = _operand_index(b, shape, strides[1], nd)
        m2 = _operand_index(b, shape, strides[2], nd)
        c2 = _operand_index(b, shape, strides[3], nd)
        out[b] = _kl(L1, c1, L2, c2, d, mean1, m1, mean2, m2, z, b)


@cuda.jit(cache=True)
def _first_flags(status, first):
    """first[0] = smallest index with status > 0, first[1] = smallest with status < 0 (atomic min)."""
    for c in range(cuda.grid(1), status.size, cuda.gridsize(1)):
        code = status[c]
        if code > 0:
            cuda.atomic.min(first, 0, c)
        elif code < 0:
            cuda.atomic.min(first, 1, c)


# --- host side ------------------------------------------------------------------------------


def dims(d):
    """A tuple of d zeros for d <= UNROLL_MAX_D: its type fixes d at compile time, so the loops
    unroll and the local arrays can live in registers; () for a run-time d."""
    return (0,) * d if d <= UNROLL_MAX_D else ()


def _launch(kernel, count, *args):
    blocks, threads = launch_config(count)
    kernel[blocks, threads, launch_stream()](*args)


def _view(name, a, shape):
    """A Numba device view of ``a`` with ``shape``; its axes must merge without a copy."""
    view = _numba_view(a)
    try:
        return view.reshape(*shape)
    except NotImplementedError as exc:
        raise ValueError(f"{name}: non-contiguous CUDA arrays are not supported; pass a C-contiguous array") from exc


def _matrices(name, a):
    shape = shape_dtype(a)[0]
    return _view(name, a, (int(np.prod(shape[:-2])),) + tuple(shape[-2:]))


def _vectors(name, x):
    shape = shape_dtype(x)[0]
    return _view(name, x, (int(np.prod(shape[:-1])), shape[-1]))


def _summary(status):
    """fastgauss._plans.mvn.summarize on the device: two atomics and a few bytes back to the host."""
    if status.size == 0:
        return NO_FAILURE
    first = to_device(np.array([NONE, NONE], np.int64))
    _launch(_first_flags, status.size, status, first)
    failed, asymmetric = (int(v) for v in to_host(first))
    order = int(to_host(status[failed : failed + 1])[0]) if failed != NONE else 0
    return plan.Failure((failed if failed != NONE else -1), order, (asymmetric if asymmetric != NONE else -1))


def _geometry(batch, *operands):
    return tuple(constant(a) for a in geometry(batch, *operands))


def factor_batch(a, upper=False, tol=plan.NO_CHECK, out=None):
    """(L, Failure): factors of a (count, d, d) device view into out (float64 scratch when None)."""
    count, d = a.shape[0], a.shape[2]
    if out is None:
        out = cuda.device_array((count, d, d), np.float64)
    if count == 0 or d == 0:
        return out, NO_FAILURE
    status = cuda.device_array(count, np.int32)
    if d <= MAX_LOCAL_D:
        _launch(_cholesky_local, count, a, upper, tol, dims(d), out, status)
    else:
        lower64 = out.dtype == np.float64 and not upper
        work = out if lower64 else cuda.device_array((count, d, d), np.float64)
        _launch(_cholesky_global, count, a, upper, tol, work, out, status)
    return out, _summary(status)


# What the shared plan (fastgauss._plans.mvn) needs from this target: per-thread local
# arrays hold matrices up to MAX_LOCAL_D, so only those orders are fused.
TARGET = plan.Target(fuses=lambda d: d <= MAX_LOCAL_D, factor_batch=factor_batch, summarize=_summary)


def cholesky(a, upper, out):
    _, summary = factor_batch(_matrices("a", a), upper, plan.NO_CHECK, _matrices("out", out))
    return out, {"a": summary}


def mvn_sample(mean, cov, scale_tril, batch, noise, out, *, fresh, stream, tol):
    shape, dtype = shape_dtype(out)
    d = shape[-1]
    matrix = cov if cov is not None else scale_tril
    vectors = int(np.prod(shape[:-1])) if d else 0
    mat = _matrices("cov" if cov is not None else "scale_tril", matrix)
    factors = plan.factor_first(TARGET, [("cov", mat, cov is not None)], vectors, tol)
    if factors.done:
        return factors.status
    (mat,), (fused,) = factors.mats, factors.fused
    nbatch = int(np.prod(batch))
    geometry_arrays = _geometry(batch, shape_dtype(mean)[0][:-1], shape_dtype(matrix)[0][:-2])
    mean_2d = _vectors("mean", mean)
    target = out if fresh or not fused else cuda.device_array(shape, dtype)  # a user's out: written once all factored
    out_flat = _view("out", target, (vectors * d,))
    if d > MAX_LOCAL_D:
        if noise is None:
            standard_normal(target, *stream)  # the stream, in place (out_flat is its view), then x = mean + L x
            eps = out_flat
        else:
            eps = _view("noise", noise, (vectors * d,))
        _launch(_sample_global, vectors, mean_2d, mat, *geometry_arrays, nbatch, eps, out_flat)
        return factors.status
    generate = noise is None
    noise_flat = cuda.device_array(1, dtype) if generate else _view("noise", noise, (vectors * d,))
    codes = cuda.device_array(mat.shape[0] if fused else 1, np.int32)
    _launch(
        _sample_local, vectors, mean_2d, mat, fused, tol, *geometry_arrays, nbatch, noise_flat, generate, values_per_block(dtype),
        *on_device(kernel_state(stream if generate else None, shape)), dims(d), out_flat, codes,
    )
    status = plan.record_fused(TARGET, factors, ["cov"], [codes])
    if not plan.any_failed(status) and target is not out:
        _view("out", out, (vectors * d,)).copy_to_device(out_flat, stream=launch_stream())
    return status


def mvn_logpdf(x, mean, cov, scale_tril, batch, out):
    shape, _ = shape_dtype(out)
    matrix = cov if cov is not None else scale_tril
    n = int(np.prod(shape))
    factors = plan.factor_first(TARGET, [("cov", _matrices("cov" if cov is not None else "scale_tril", matrix), cov is not None)], n)
    if factors.done:
        return factors.status
    (mat,), (fused,) = factors.mats, factors.fused
    d = mat.shape[2]
    geometry_arrays = _geometry(batch, shape_dtype(x)[0][:-1], shape_dtype(mean)[0][:-1], shape_dtype(matrix)[0][:-2])
    x_2d, mean_2d, out_flat = _vectors("x", x), _vectors("mean", mean), _view("out", out, (n,))
    log_2pi = float(np.log(2 * np.pi))
    if d > MAX_LOCAL_D:
        z = cuda.device_array((n, d), np.float64)
        _launch(_logpdf_global, n, x_2d, mean_2d, mat, *geometry_arrays, log_2pi, z, out_flat)
        return factors.status
    codes = cuda.device_array(mat.shape[0] if fused else 1, np.int32)
    _launch(_logpdf_local, n, x_2d, mean_2d, mat, fused, *geometry_arrays, log_2pi, dims(d), out_flat, codes)
    return plan.record_fused(TARGET, factors, ["cov"], [codes])


def mvn_kl(mean1, cov1, mean2, cov2, batch, out):
    shape, _ = shape_dtype(out)
    n = int(np.prod(shape))
    factors = plan.factor_first(TARGET, [("cov1", _matrices("cov1", cov1), True), ("cov2", _matrices("cov2", cov2), True)], n)
    if factors.done:
        return factors.status
    mats, fused = factors.mats, factors.fused
    d = mats[0].shape[2]
    geometry_host = geometry(batch, *(shape_dtype(a)[0][:k] for a, k in ((mean1, -1), (cov1, -2), (mean2, -1), (cov2, -2))))
    shape_array, strides = constant(geometry_host[0]), constant(np.stack(geometry_host[1:]))
    mean1_2d, mean2_2d, out_flat = _vectors("mean1", mean1), _vectors("mean2", mean2), _view("out", out, (n,))
    if d > MAX_LOCAL_D:
        z = cuda.device_array((n, d), np.float64)
        _launch(_kl_global, n, mean1_2d, mats[0], mean2_2d, mats[1], shape_array, strides, z, out_flat)
        return factors.status
    codes = [cuda.device_array(mat.shape[0] if fuse else 1, np.int32) for mat, fuse in zip(mats, fused)]
    _launch(
        _kl_local, n, mean1_2d, mats[0], fused[0], mean2_2d, mats[1], fused[1], shape_array, strides, dims(d), out_flat, codes[0], codes[1]
    )
    return plan.record_fused(TARGET, factors, ["cov1", "cov2"], codes)


# --- gradients ---------------------------------------------------------------------------
# Backward kernels (formulas: fastgauss.reference.mvn), one thread per work item, the same
# scalar code as the CPU (fastgauss._device.mvn). Each op has one item function and two thin
# kernels around it: ``_local`` with the work matrices in per-thread local arrays (d up to
# MAX_LOCAL_D), ``_global`` with them in a float64 scratch in global memory, one slice per item
# (any d; correct, not tuned). A covariance's gradient is reversed through Cholesky in the pass
# that made its factor's gradient when each covariance serves one output; otherwise the factor
# gradients are summed over each matrix's preimage (``_plans.mvn.broadcast_geometry``) first, in
# segments whose partials are added in segment order (fastgauss.cuda.kl's ``_combine``), then
# reversed once per matrix (``_matrix_grad``).

from fastgauss._plans.mvn import broadcast_geometry, segments  # noqa: E402
from fastgauss.cuda.kl import _combine  # noqa: E402

_load_tril = _d.load_tril
_preimage = _d.preimage
_clear_tril = _d.clear_tril
_add_tril = _d.add_tril
_outer_tril = _d.outer_tril
_tril_t_apply = _d.tril_t_apply
_logpdf_vjp = _d.logpdf_vjp
_kl_vjp = _d.kl_vjp
_store_matrix_grad = _d.store_matrix_grad
_store_opposite = _d.store_opposite


@cuda.jit(device=True)
def _lower(mat, c, factor, upper, W, w, d, status):
    """W[w] = the lower factor of mat[c]: factored (its status recorded) or loaded. False on failure."""
    if factor:
        code = _factor(mat, c, upper, -1.0, W, w, d)
        status[c] = code
        return code <= 0
    _load_tril(mat, c, W, w, d)
    return True


@cuda.jit(device=True)
def _matrix_grad_item(c, mat, factor, upper, reverse, partials, out, status, W, w):
    """out[c] from the sum over p of partials[c, p] (lower triangles; transposed when upper): reversed
    through Cholesky into the symmetric covariance gradient (reverse), else stored as a lower triangle."""
    parts, d = partials.shape[1], partials.shape[2]
    if reverse and not _lower(mat, c, factor, upper, W, w, d, status):
        return
    _clear_tril(W, w + 1, d)
    for p in range(parts):
        _add_tril(W, w + 1, d, partials[c], p, upper)
    _store_matrix_grad(W, w, W, w + 1, d, reverse, out, c)


@cuda.jit(cache=True)
def _matrix_grad_local(mat, factor, upper, reverse, partials, out, status):
    W = cuda.local.array((2, MAX_LOCAL_D, MAX_LOCAL_D), np.float64)
    for c in range(cuda.grid(1), partials.shape[0], cuda.gridsize(1)):
        _matrix_grad_item(c, mat, factor, upper, reverse, partials, out, status, W, 0)


@cuda.jit(cache=True)
def _matrix_grad_global(mat, factor, upper, reverse, partials, out, status, work):
    for c in range(cuda.grid(1), partials.shape[0], cuda.gridsize(1)):
        _matrix_grad_item(c, mat, factor, upper, reverse, partials, out, status, work, 2 * c)


@cuda.jit(cache=True)
def _reduce_partials(src, shape, kept, per_element, parts, partials):
    """partials[c * width + k, p] = the sum of src[n, k] over segment p of element c's preimage n."""
    width = src.shape[1]
    nd = shape.size
    for item in range(cuda.grid(1), partials.shape[0] * parts, cuda.gridsize(1)):
        row = item // parts
        p = item - row * parts
        c = row // width
        k = row - c * width
        acc = 0.0
        for j in range(p * per_element // parts, (p + 1) * per_element // parts):
            acc += np.float64(src[_preimage(c, j, shape, kept, nd), k])
        partials[row, p] = acc


WHOLE_RUN = np.int64(2**63 - 1)  # a window run no array reaches: stream_slot's identity


@cuda.jit(device=True)
def _sample_item(
    item, cot, mat, factor, noise, generate, per_block, k0, k1, o0, o1, o2, o3, shape, kept, per_element, parts,
    want_matrix, want_noise, grad_noise, partials, out, status, W, w, eps
):
    """Item (c, p): matrix c's factor and, over segment p of its preimage (vectors n), G = sum
    tril(g_n eps_n^T) and grad_noise_n = L^T g_n. One segment: out[c] = the matrix gradient
    (factor: reversed, symmetric; else G); else partials[c * parts + p] = G."""
    d = mat.shape[1]
    c = item // parts
    p = item - c * parts
    if not _lower(mat, c, factor, False, W, w, d, status):
        return
    _clear_tril(W, w + 1, d)
    for j in range(p * per_element // parts, (p + 1) * per_element // parts):
        n = _preimage(c, j, shape, kept, shape.size)
        if want_noise:
            _tril_t_apply(W, w, d, cot, n * d, grad_noise, n * d)
        if want_matrix:
            if generate:
                # the whole array's stream (no window): every element in the first run
                _vector_normals(eps, d, n * d, per_block, k0, k1, o0, o1, o2, o3, np.int64(0), WHOLE_RUN, shape, kept)
                _outer_tril(W, w + 1, d, cot, n * d, eps, 0)
            else:
                _outer_tril(W, w + 1, d, cot, n * d, noise, n * d)
    if not want_matrix:
        return
    if parts > 1:
        _store(W, w + 1, d, False, partials, item)
    else:
        _store_matrix_grad(W, w, W, w + 1, d, factor, out, c)


@cuda.jit(cache=True)
def _sample_vjp_local(
    cot, mat, factor, noise, generate, per_block, k0, k1, o0, o1, o2, o3, shape, kept, per_element, parts,
    want_matrix, want_noise, grad_noise, partials, out, status
):
    W = cuda.local.array((2, MAX_LOCAL_D, MAX_LOCAL_D), np.float64)
    eps = cuda.local.array(MAX_LOCAL_D, np.float64)
    for item in range(cuda.grid(1), mat.shape[0] * parts, cuda.gridsize(1)):
        _sample_item(
            item, cot, mat, factor, noise, generate, per_block, k0, k1, o0, o1, o2, o3, shape, kept, per_element, parts,
            want_matrix, want_noise, grad_noise, partials, out, status, W, 0, eps,
        )


@cuda.jit(cache=True)
def _sample_vjp_global(
    cot, mat, factor, noise, generate, per_block, k0, k1, o0, o1, o2, o3, shape, kept, per_element, parts,
    want_matrix, want_noise, grad_noise, partials, out, status, work, eps
):
    for item in range(cuda.grid(1), mat.shape[0] * parts, cuda.gridsize(1)):
        _sample_item(
            item, cot, mat, factor, noise, generate, per_block, k0, k1, o0, o1, o2, o3, shape, kept, per_element, parts,
            want_matrix, want_noise, grad_noise, partials, out, status, work, 2 * item, eps[item],
        )


@cuda.jit(device=True)
def _logpdf_item(b, cot, x, mean, mat, factor, shape, strides, want, grad_x, grad_mean, finish, covariance, grad_mat, status, W, w, z, zl):
    """Point b: grad_x[b] = -g u, grad_mean[b] = g u, grad_mat[b] = the factor's gradient
    (finish: reversed into the covariance's when covariance). want: (x, mean, matrix)."""
    d = x.shape[1]
    nd = shape.size
    xi = _operand_index(b, shape, strides[0], nd)
    m = _operand_index(b, shape, strides[1], nd)
    if not _lower(mat, _operand_index(b, shape, strides[2], nd), factor, False, W, w, d, status):
        return
    _logpdf_vjp(W, w, d, x, xi, mean, m, np.float64(cot[b]), z, zl, W, w + 1)
    _store_opposite(z, zl, d, want[0], grad_x, want[1], grad_mean, b)
    if want[2]:
        _store_matrix_grad(W, w, W, w + 1, d, finish and covariance, grad_mat, b)


@cuda.jit(cache=True)
def _logpdf_vjp_local(cot, x, mean, mat, factor, shape, strides, want, grad_x, grad_mean, finish, covariance, grad_mat, status):
    W = cuda.local.array((2, MAX_LOCAL_D, MAX_LOCAL_D), np.float64)
    z = cuda.local.array((1, MAX_LOCAL_D), np.float64)
    for b in range(cuda.grid(1), cot.size, cuda.gridsize(1)):
        _logpdf_item(b, cot, x, mean, mat, factor, shape, strides, want, grad_x, grad_mean, finish, covariance, grad_mat, status, W, 0, z, 0)


@cuda.jit(cache=True)
def _logpdf_vjp_global(cot, x, mean, mat, factor, shape, strides, want, grad_x, grad_mean, finish, covariance, grad_mat, status, work, z):
    for b in range(cuda.grid(1), cot.size, cuda.gridsize(1)):
        _logpdf_item(b, cot, x, mean, mat, factor, shape, strides, want, grad_x, grad_mean, finish, covariance, grad_mat, status, work, 2 * b, z, b)


@cuda.jit(device=True)
def _kl_item(b, cot, mean1, mat1, factor1, mean2, mat2, factor2, shape, strides, want, finish, grad_v1, grad_v2, grad_m1, grad_m2, status1, status2, W, w, v, vl):
    """Pair b; W[w .. w + 4] hold L1, L2, M, L1's gradient, L2's gradient. want: (mean1, cov1, mean2, cov2)."""
    d = mean1.shape[1]
    nd = shape.size
    m1 = _operand_index(b, shape, strides[0], nd)
    m2 = _operand_index(b, shape, strides[2], nd)
    if not _lower(mat1, _operand_index(b, shape, strides[1], nd), factor1, False, W, w, d, status1):
        return
    if not _lower(mat2, _operand_index(b, shape, strides[3], nd), factor2, False, W, w + 1, d, status2):
        return
    _kl_vjp(W, w, W, w + 1, d, mean1, m1, mean2, m2, np.float64(cot[b]), W, w + 2, W, w + 3, v, vl, W, w + 4)
    _store_opposite(v, vl, d, want[0], grad_v1, want[2], grad_v2, b)
    if want[1]:
        _store_matrix_grad(W, w, W, w + 3, d, finish[0], grad_m1, b)
    if want[3]:
        _store_matrix_grad(W, w + 1, W, w + 4, d, finish[1], grad_m2, b)


@cuda.jit(cache=True)
def _kl_vjp_local(cot, mean1, mat1, factor1, mean2, mat2, factor2, shape, strides, want, finish, grad_v1, grad_v2, grad_m1, grad_m2, status1, status2):
    W = cuda.local.array((5, MAX_LOCAL_D, MAX_LOCAL_D), np.float64)
    v = cuda.local.array((1, MAX_LOCAL_D), np.float64)
    for b in range(cuda.grid(1), cot.size, cuda.gridsize(1)):
        _kl_item(b, cot, mean1, mat1, factor1, mean2, mat2, factor2, shape, strides, want, finish, grad_v1, grad_v2, grad_m1, grad_m2, status1, status2, W, 0, v, 0)


@cuda.jit(cache=True)
def _kl_vjp_global(cot, mean1, mat1, factor1, mean2, mat2, factor2, shape, strides, want, finish, grad_v1, grad_v2, grad_m1, grad_m2, status1, status2, work, v):
    for b in range(cuda.grid(1), cot.size, cuda.gridsize(1)):
        _kl_item(b, cot, mean1, mat1, factor1, mean2, mat2, factor2, shape, strides, want, finish, grad_v1, grad_v2, grad_m1, grad_m2, status1, status2, work, 5 * b, v, b)


def _unused(tail, dtype=np.float64):
    """A placeholder for an output a kernel does not write (a gradient that is not wanted)."""
    return placeholder((1,) + tuple(tail), dtype)


def _reduce(src, full, operand, out):
    """out (flat: elements * width) = src (prod(full), width) summed over each operand element's preimage."""
    shape, kept, count, per_element = broadcast_geometry(full, operand)
    parts = segments(per_element)
    width = src.shape[1]
    partials = cuda.device_array((count * width, parts), np.float64)
    _launch(_reduce_partials, count * width * parts, src, constant(shape), constant(kept), per_element, parts, partials)
    _launch(_combine, count * width, partials, 1, False, out)


def _matrix_grad(mat, factor, upper, reverse, partials, out, status):
    count, d = partials.shape[0], partials.shape[2]
    if d <= MAX_LOCAL_D:
        _launch(_matrix_grad_local, count, mat, factor, upper, reverse, partials, out, status)
    else:
        _launch(_matrix_grad_global, count, mat, factor, upper, reverse, partials, out, status, cuda.device_array((2 * count, d, d), np.float64))


def _per_point(name, grad, same, count, tail):
    """Where a kernel writes an argument's gradient per point: the gradient itself when the argument is
    not broadcast, else a float64 scratch to reduce; a placeholder when it is not wanted."""
    if grad is None:
        return _unused(tail)
    return _view(name, grad, (count,) + tail) if same else cuda.device_array((count,) + tail, np.float64)


def _finish(name, grad, per_point, batch, operand, covariance=False, mat=None):
    """A broadcast argument's gradient from the per-point values: summed over each element's preimage
    (matrices: factor gradients, then reversed through Cholesky when ``covariance``)."""
    count = int(np.prod(operand))
    if grad is None or count == per_point.shape[0]:
        return
    width = int(np.prod(per_point.shape[1:]))
    if per_point.ndim == 2:
        _reduce(per_point, batch, operand, _view(name, grad, (count * width,)))
        return
    d = per_point.shape[2]
    reduced = cuda.device_array(count * width, np.float64)
    _reduce(per_point.reshape(per_point.shape[0], width), batch, operand, reduced)
    _matrix_grad(mat, False, False, covariance, reduced.reshape(count, 1, d, d), _matrices(name, grad), _unused((), np.int32))


def cholesky_vjp(cotangent, a, upper, grad_a):
    mats = _matrices("a", a)
    count, d = mats.shape[0], mats.shape[2]
    status = cuda.device_array(count, np.int32)
    _matrix_grad(mats, True, upper, True, _matrices("cotangent", cotangent).reshape(count, 1, d, d), _matrices("grad_a", grad_a), status)
    return {"a": _summary(status)}


def mvn_sample_vjp(cotangent, mean, cov, scale_tril, batch, noise, *, stream, grad_mean, grad_cov, grad_scale_tril, grad_noise):
    shape, dtype = shape_dtype(cotangent)
    d = shape[-1]
    full = tuple(shape[:-1])
    vectors = int(np.prod(full))
    matrix_name = "cov" if cov is not None else "scale_tril"
    matrix = cov if cov is not None else scale_tril
    grad_matrix = grad_cov if cov is not None else grad_scale_tril
    cot = _view("cotangent", cotangent, (vectors * d,))
    status = {}
    if grad_matrix is not None or grad_noise is not None:
        geometry_shape, kept, count, per_element = broadcast_geometry(full, shape_dtype(matrix)[0][:-2])
        parts = segments(per_element)
        items = count * parts
        generate = noise is None
        direct = parts == 1
        want_matrix = grad_matrix is not None
        mat = _matrices(matrix_name, matrix)
        codes = cuda.device_array(count, np.int32)
        partials = cuda.device_array((items, d, d), np.float64) if want_matrix and not direct else _unused((d, d))
        args = (
            cot, mat, cov is not None, _unused((), dtype) if generate else _view("noise", noise, (vectors * d,)), generate,
            values_per_block(dtype), *words(*(tuple(stream)[:2] if generate else (0, 0))), constant(geometry_shape), constant(kept),
            per_element, parts, want_matrix, grad_noise is not None,
            _view("grad_noise", grad_noise, (vectors * d,)) if grad_noise is not None else _unused((), dtype), partials,
            _matrices(matrix_name, grad_matrix) if want_matrix and direct else _unused((d, d), dtype), codes,
        )
        if d <= MAX_LOCAL_D:
            _launch(_sample_vjp_local, items, *args)
        else:
            _launch(_sample_vjp_global, items, *args, cuda.device_array((2 * items, d, d), np.float64), cuda.device_array((items, d), np.float64))
        if cov is not None:
            status["cov"] = _summary(codes)
            if status["cov"].failed >= 0:
                return status
        if want_matrix and not direct:
            _matrix_grad(mat, cov is not None, False, cov is not None, partials.reshape(count, parts, d, d), _matrices(matrix_name, grad_matrix), codes)
    if grad_mean is not None:
        mean_batch = shape_dtype(mean)[0][:-1]
        if int(np.prod(mean_batch)) == vectors:
            _view("grad_mean", grad_mean, (vectors * d,)).copy_to_device(cot, stream=launch_stream())
        else:
            _reduce(cot.reshape(vectors, d), full, mean_batch, _view("grad_mean", grad_mean, (int(np.prod(mean_batch)) * d,)))
    return status


def mvn_logpdf_vjp(cotangent, x, mean, cov, scale_tril, batch, *, grad_x, grad_mean, grad_cov, grad_scale_tril):
    n = int(np.prod(shape_dtype(cotangent)[0]))
    matrix_name = "cov" if cov is not None else "scale_tril"
    matrix = cov if cov is not None else scale_tril
    grad_matrix = grad_cov if cov is not None else grad_scale_tril
    factors = plan.factor_first(TARGET, [("cov", _matrices(matrix_name, matrix), cov is not None)], n)
    if factors.done:
        return factors.status
    (mat,), (fused,) = factors.mats, factors.fused
    d = mat.shape[2]
    batches = (shape_dtype(x)[0][:-1], shape_dtype(mean)[0][:-1], shape_dtype(matrix)[0][:-2])
    geometry_host = geometry(batch, *batches)
    identity = [int(np.prod(a)) == n for a in batches]
    gx, gm, gmat = (
        _per_point(name, g, same, n, tail)
        for name, g, same, tail in zip(("grad_x", "grad_mean", matrix_name), (grad_x, grad_mean, grad_matrix), identity, ((d,), (d,), (d, d)))
    )
    codes = cuda.device_array(mat.shape[0] if fused else 1, np.int32)
    args = (
        _view("cotangent", cotangent, (n,)), _vectors("x", x), _vectors("mean", mean), mat, fused, constant(geometry_host[0]),
        constant(np.stack(geometry_host[1:])), (grad_x is not None, grad_mean is not None, grad_matrix is not None),
        gx, gm, identity[2], cov is not None, gmat, codes,
    )
    if d <= MAX_LOCAL_D:
        _launch(_logpdf_vjp_local, n, *args)
    else:
        _launch(_logpdf_vjp_global, n, *args, cuda.device_array((2 * n, d, d), np.float64), cuda.device_array((n, d), np.float64))
    status = plan.record_fused(TARGET, factors, ["cov"], [codes])
    if plan.any_failed(status):
        return status
    _finish("grad_x", grad_x, gx, batch, batches[0])
    _finish("grad_mean", grad_mean, gm, batch, batches[1])
    _finish(matrix_name, grad_matrix, gmat, batch, batches[2], cov is not None, mat)
    return status


def mvn_kl_vjp(cotangent, mean1, cov1, mean2, cov2, batch, *, grad_mean1, grad_cov1, grad_mean2, grad_cov2):
    n = int(np.prod(shape_dtype(cotangent)[0]))
    factors = plan.factor_first(TARGET, [("cov1", _matrices("cov1", cov1), True), ("cov2", _matrices("cov2", cov2), True)], n)
    if factors.done:
        return factors.status
    mats, fused = factors.mats, factors.fused
    d = mats[0].shape[2]
    names = ("mean1", "cov1", "mean2", "cov2")
    batches = tuple(shape_dtype(a)[0][:k] for a, k in ((mean1, -1), (cov1, -2), (mean2, -1), (cov2, -2)))
    geometry_host = geometry(batch, *batches)
    grads = (grad_mean1, grad_cov1, grad_mean2, grad_cov2)
    identity = [int(np.prod(a)) == n for a in batches]
    targets = [_per_point(name, g, same, n, tail) for name, g, same, tail in zip(names, grads, identity, ((d,), (d, d), (d,), (d, d)))]
    codes = [cuda.device_array(mat.shape[0] if fuse else 1, np.int32) for mat, fuse in zip(mats, fused)]
    args = (
        _view("cotangent", cotangent, (n,)), _vectors("mean1", mean1), mats[0], fused[0], _vectors("mean2", mean2), mats[1], fused[1],
        constant(geometry_host[0]), constant(np.stack(geometry_host[1:])), tuple(g is not None for g in grads),
        (identity[1], identity[3]), targets[0], targets[2], targets[1], targets[3], codes[0], codes[1],
    )
    if d <= MAX_LOCAL_D:
        _launch(_kl_vjp_local, n, *args)
    else:
        _launch(_kl_vjp_global, n, *args, cuda.device_array((5 * n, d, d), np.float64), cuda.device_array((n, d), np.float64))
    status = plan.record_fused(TARGET, factors, ["cov1", "cov2"], codes)
    if plan.any_failed(status):
        return status
    _finish("mean1", grad_mean1, targets[0], batch, batches[0])
    _finish("cov1", grad_cov1, targets[1], batch, batches[1], True, mats[0])
    _finish("mean2", grad_mean2, targets[2], batch, batches[2])
    _finish("cov2", grad_cov2, targets[3], batch, batches[3], True, mats[1])
    return status


# --- Gaussian algebra ---
# One thread per output (grid-stride). Each thread's work buffer (the slots of the blocks it
# factors and solves) is its own rows of a float64 scratch in global memory, sized by the
# threads launched, not by the batch (L1/L2-resident for small d; correct for any d, not tuned).

_marginal = _d.marginal
_condition = _d.condition
_affine = _d.affine
_product = _d.product
_kalman = _d.kalman
LOG_2PI = float(np.log(2 * np.pi))


@cuda.jit(cache=True)
def _marginal_kernel(mean, cov, index, shape, strides, out_mean, out_cov):
    nd = shape.size
    for b in range(cuda.grid(1), out_mean.shape[0], cuda.gridsize(1)):
        m = _operand_index(b, shape, strides[0], nd)
        c = _operand_index(b, shape, strides[1], nd)
        _marginal(mean, m, cov, c, index, out_mean, out_cov, b)


@cuda.jit(cache=True)
def _condition_kernel(mean, cov, value, index, other, shape, strides, work, out_mean, out_cov, status):
    nd = shape.size
    w0 = 2 * cuda.grid(1)
    for b in range(cuda.grid(1), out_mean.shape[0], cuda.gridsize(1)):
        m = _operand_index(b, shape, strides[0], nd)
        c = _operand_index(b, shape, strides[1], nd)
        v = _operand_index(b, shape, strides[2], nd)
        code = _condition(mean, m, cov, c, value, v, index, other, work, w0, out_mean, out_cov, b)
        if code > 0:
            status[c] = code


@cuda.jit(cache=True)
def _affine_kernel(mean, cov, A, shift, shape, strides, work, out_mean, out_cov):
    nd = shape.size
    d = mean.shape[1]
    k = A.shape[1]
    for b in range(cuda.grid(1), out_mean.shape[0], cuda.gridsize(1)):
        m = _operand_index(b, shape, strides[0], nd)
        c = _operand_index(b, shape, strides[1], nd)
        a = _operand_index(b, shape, strides[2], nd)
        s = _operand_index(b, shape, strides[3], nd)
        _affine(mean, m, cov, c, A, a, shift, s, d, k, work, cuda.grid(1), out_mean, out_cov, b)


@cuda.jit(cache=True)
def _product_kernel(mean1, cov1, mean2, cov2, shape, strides, log_2pi, work, out_mean, out_cov, out_log_scale, status):
    nd = shape.size
    d = mean1.shape[1]
    w0 = 2 * cuda.grid(1)
    for b in range(cuda.grid(1), out_mean.shape[0], cuda.gridsize(1)):
        m1 = _operand_index(b, shape, strides[0], nd)
        c1 = _operand_index(b, shape, strides[1], nd)
        m2 = _operand_index(b, shape, strides[2], nd)
        c2 = _operand_index(b, shape, strides[3], nd)
        code, log_scale = _product(mean1, m1, cov1, c1, mean2, m2, cov2, c2, d, log_2pi, work, w0, out_mean, out_cov, b)
        status[b] = code
        out_log_scale[b] = log_scale


@cuda.jit(cache=True)
def _kalman_kernel(mean, cov, H, R, y, shape, strides, log_2pi, work, out_mean, out_cov, out_log_likelihood, status):
    nd = shape.size
    d = mean.shape[1]
    k = y.shape[1]
    w0 = 6 * cuda.grid(1)
    for b in range(cuda.grid(1), out_mean.shape[0], cuda.gridsize(1)):
        m = _operand_index(b, shape, strides[0], nd)
        c = _operand_index(b, shape, strides[1], nd)
        h = _operand_index(b, shape, strides[2], nd)
        r = _operand_index(b, shape, strides[3], nd)
        yy = _operand_index(b, shape, strides[4], nd)
        code, log_likelihood = _kalman(mean, m, cov, c, H, h, R, r, y, yy, d, k, log_2pi, work, w0, out_mean, out_cov, b)
        status[b] = code
        out_log_likelihood[b] = log_likelihood


def _algebra_geometry(batch, *operands):
    """Device (shape, strides (operands, nd)) of geometry(), for operands given as (array, trailing axes)."""
    host = geometry(batch, *(tuple(shape_dtype(a)[0])[: len(shape_dtype(a)[0]) - axes] for a, axes in operands))
    return constant(host[0]), constant(np.stack(host[1:]))


ALGEBRA_MAX_BLOCKS = 256  # 65,536 threads: about what an H100 keeps resident at these kernels' 96-160 registers


def _scratch(n, slots, rows, cols):
    """(blocks, threads, work): the launch over n outputs (at most ALGEBRA_MAX_BLOCKS blocks, the
    grid-stride loops cover the rest) and its float64 scratch, ``slots`` (rows, cols) buffers per
    thread launched: for kalman_update with d = 4, at most 65,536 x 1.2 kB."""
    blocks, threads = launch_config(n)
    blocks = min(blocks, ALGEBRA_MAX_BLOCKS)
    return blocks, threads, cuda.device_array((max(1, blocks * threads * slots), max(1, rows), max(1, cols)), np.float64)


def _flat(name, batch, out, trailing=()):
    """A fresh output viewed as (batch count,) + trailing."""
    return _view(name, out, (int(np.prod(batch)),) + tuple(trailing))


def mvn_affine(mean, cov, A, b, batch, mean_out, cov_out):
    d = shape_dtype(mean)[0][-1]
    k = shape_dtype(A)[0][-2]
    n = int(np.prod(batch))
    if n == 0 or k == 0:
        return {}
    if b is None:
        b = constant(np.zeros(k, shape_dtype(mean_out)[1]))
    geometry_arrays = _algebra_geometry(batch, (mean, 1), (cov, 2), (A, 2), (b, 1))
    blocks, threads, work = _scratch(n, 1, k, d)
    _affine_kernel[blocks, threads, launch_stream()](
        _vectors("mean", mean), _matrices("cov", cov), _matrices("A", A), _vectors("b", b), *geometry_arrays, work,
        _flat("mean_out", batch, mean_out, (k,)), _flat("cov_out", batch, cov_out, (k, k)),
    )
    return {}


def mvn_marginal(mean, cov, index, batch, mean_out, cov_out):
    n = int(np.prod(batch))
    m = index.size
    if n == 0 or m == 0:
        return {}
    geometry_arrays = _algebra_geometry(batch, (mean, 1), (cov, 2))
    _launch(
        _marginal_kernel, n, _vectors("mean", mean), _matrices("cov", cov), constant(index), *geometry_arrays,
        _flat("mean_out", batch, mean_out, (m,)), _flat("cov_out", batch, cov_out, (m, m)),
    )
    return {}


def mvn_condition(mean, cov, index, other, value, batch, mean_out, *, cov_out):
    n = int(np.prod(batch))
    covs = _matrices("cov", cov)
    if n == 0:
        return {"cov": NO_FAILURE}
    m, r = index.size, other.size
    status = to_device(np.zeros(covs.shape[0], np.int32))
    geometry_arrays = _algebra_geometry(batch, (mean, 1), (cov, 2), (value, 1))
    blocks, threads, work = _scratch(n, 2, m, max(m, r + 1))
    _condition_kernel[blocks, threads, launch_stream()](
        _vectors("mean", mean), covs, _vectors("value", value), constant(index), constant(other), *geometry_arrays,
        work, _flat("mean_out", batch, mean_out, (r,)), _flat("cov_out", batch, cov_out, (r, r)), status,
    )
    return {"cov": _summary(status)}


def gaussian_product(mean1, cov1, mean2, cov2, batch, mean_out, cov_out, *, log_scale_out):
    n = int(np.prod(batch))
    if n == 0:
        return {"sum": NO_FAILURE}
    d = shape_dtype(mean1)[0][-1]
    status = cuda.device_array(n, np.int32)
    geometry_arrays = _algebra_geometry(batch, (mean1, 1), (cov1, 2), (mean2, 1), (cov2, 2))
    blocks, threads, work = _scratch(n, 2, d, 2 * d + 1)
    _product_kernel[blocks, threads, launch_stream()](
        _vectors("mean1", mean1), _matrices("cov1", cov1), _vectors("mean2", mean2), _matrices("cov2", cov2), *geometry_arrays,
        LOG_2PI, work, _flat("mean_out", batch, mean_out, (d,)), _flat("cov_out", batch, cov_out, (d, d)),
        _flat("log_scale_out", batch, log_scale_out), status,
    )
    return {"sum": _summary(status)}


def kalman_update(mean, cov, H, R, y, batch, mean_out, *, cov_out, log_likelihood_out):
    n = int(np.prod(batch))
    if n == 0:
        return {"innovation": NO_FAILURE}
    d, k = shape_dtype(mean)[0][-1], shape_dtype(y)[0][-1]
    status = cuda.device_array(n, np.int32)
    geometry_arrays = _algebra_geometry(batch, (mean, 1), (cov, 2), (H, 2), (R, 2), (y, 1))
    size = max(d, k) + 1
    blocks, threads, work = _scratch(n, 6, size, size)
    _kalman_kernel[blocks, threads, launch_stream()](
        _vectors("mean", mean), _matrices("cov", cov), _matrices("H", H), _matrices("R", R), _vectors("y", y), *geometry_arrays,
        LOG_2PI, work, _flat("mean_out", batch, mean_out, (d,)), _flat("cov_out", batch, cov_out, (d, d)),
        _flat("log_likelihood_out", batch, log_likelihood_out), status,
    )
    return {"innovation": _summary(status)}
