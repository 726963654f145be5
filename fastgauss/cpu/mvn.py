"""CPU kernels for the multivariate-normal ops: many small matrices, one prange item per chunk.

Each chunk factors its matrices one by one into a small float64 buffer (L1-resident)
and goes straight on to the work that needs the factor: the sample x = mean + L eps
with eps drawn into a chunk buffer from the Philox stream (as q_sample does), the
whitening of x - mean, or the KL terms. A covariance that several outputs share
(a broadcast batch, or several samples of one distribution) is factored once first,
into a float64 scratch the size of that covariance, and the kernels read the factor.

For d >= LAPACK_MIN_D the factorization goes to LAPACK (numpy.linalg.cholesky): past
that order its blocked, vectorized potrf beats one scalar factorization per matrix.
The crossover is measured by benchmarks/bench_mvn.py (see benchmarks/README.md).
"""

import contextlib

import numba
import numpy as np

from fastgauss import _device
from fastgauss._device import mvn as _mvn
from fastgauss._plans import mvn as plan
from fastgauss._plans.mvn import NO_FAILURE, geometry, summarize
from fastgauss._plans.stream import kernel_state
from fastgauss.cpu import DEVICE, launch, rows_to_write
from fastgauss.cpu.random import normal_part

_d = _device.compile_for(numba.njit(**DEVICE, forceinline=True), _mvn)
_operand_index = _d.operand_index
_factor = _d.factor
_store = _d.store
_load_tril = _d.load_tril
_tril_apply = _d.tril_apply
_whiten = _d.whiten
_kl = _d.kl

KERNEL = dict(error_model="numpy", cache=True)
LAPACK_MIN_D = 64  # factor with LAPACK from this order up (crossover measured in benchmarks/README.md)
MAX_PER_CHUNK = 1024  # matrices (or vectors) per parallel work item
UNROLL_MAX_D = 8  # cholesky and mvn_sample compile one kernel per order up to this one (see dims)
LOG_2PI = float(np.log(2 * np.pi))


def dims(d):
    """The ``dims`` argument of the kernels: a tuple of d zeros for d <= UNROLL_MAX_D, whose
    type fixes d at compile time (one specialization per order: LLVM unrolls the loops over
    the matrix, 2-2.5x faster for d <= 8), else () and d comes from the arrays at run time."""
    return (0,) * d if d <= UNROLL_MAX_D else ()


def per_chunk(count):
    """Items per chunk: at most MAX_PER_CHUNK, enough chunks to balance the threads, a multiple
    of 4 (so a chunk of vectors starts at a stream element that is a multiple of 4)."""
    size = -(-count // (8 * numba.get_num_threads()))
    size = min(MAX_PER_CHUNK, max(4, size))
    return -(-size // 4) * 4


# --- kernels ------------------------------------------------------------------------------


@numba.njit(parallel=True, **KERNEL)
def _cholesky(a, upper, tol, per_chunk, dims, out, status):
    count = a.shape[0]
    d = len(dims) if len(dims) else a.shape[1]
    for chunk in numba.prange((count + per_chunk - 1) // per_chunk):
        work = np.empty((1, d, d))
        start = chunk * per_chunk
        for c in range(start, min(start + per_chunk, count)):
            code = _factor(a, c, upper, tol, work, 0, d)
            status[c] = code
            if code <= 0:
                _store(work, 0, d, upper, out, c)


@numba.njit(parallel=True, **KERNEL)
def _sample(mean, mat, factor, tol, shape, mean_strides, mat_strides, nbatch, noise, generate, state, per_chunk, dims, out, status):
    """out (flat, C order) = mean + L eps per vector; vector n has batch index n % nbatch.

    factor: mat holds covariances, each used by exactly one vector, factored here;
    else mat holds lower factors (loaded into the work buffer when they change).
    generate: eps of vector n is stream elements n d .. n d + d - 1; else it is
    noise[n d:(n + 1) d].
    """
    d = len(dims) if len(dims) else mean.shape[1]
    n = out.size // d
    nd = shape.size
    for chunk in numba.prange((n + per_chunk - 1) // per_chunk):
        first = chunk * per_chunk
        count = min(per_chunk, n - first)
        work = np.empty((1, d, d))
        eps = np.empty(count * d, out.dtype)  # cache-resident, not a full-size temporary
        if generate:
            normal_part(eps, first * d, state)
        else:
            eps[:] = noise[first * d : (first + count) * d]
        b = first % nbatch
        loaded = -1
        for v in range(count):
            m = _operand_index(b, shape, mean_strides, nd)
            c = _operand_index(b, shape, mat_strides, nd)
            b = b + 1 if b + 1 < nbatch else 0
            if factor:
                code = _factor(mat, c, False, tol, work, 0, d)
                status[c] = code
                if code > 0:
                    continue
            elif c != loaded:
                _load_tril(mat, c, work, 0, d)
                loaded = c
            _tril_apply(work, 0, d, mean, m, eps, v * d, out, (first + v) * d)


@numba.njit(inline="always")
def _lower_factor(mat, c, factor, tol, work, loaded, status):
    """Put the lower factor of mat[c] in work: factor it (recording its status) or load it
    unless it is already there. Returns (status, index now loaded)."""
    if factor:
        code = _factor(mat, c, False, tol, work, 0, mat.shape[1])
        status[c] = code
        return code, -1
    if c != loaded:
        _load_tril(mat, c, work, 0, mat.shape[1])
    return 0, c


@numba.njit(parallel=True, **KERNEL)
def _logpdf(x, mean, mat, factor, shape, x_strides, mean_strides, mat_strides, per_chunk, out, status):
    d = x.shape[1]
    n = out.size
    nd = shape.size
    for chunk in numba.prange((n + per_chunk - 1) // per_chunk):
        work = np.empty((1, d, d))
        z = np.empty((1, d))
        loaded = -1
        start = chunk * per_chunk
        for b in range(start, min(start + per_chunk, n)):
            xi = _operand_index(b, shape, x_strides, nd)
            m = _operand_index(b, shape, mean_strides, nd)
            code, loaded = _lower_factor(mat, _operand_index(b, shape, mat_strides, nd), factor, -1.0, work, loaded, status)
            if code > 0:
                continue
            squared, half_logdet = _whiten(work, 0, d, x, xi, mean, m, z, 0)
            out[b] = -0.5 * (d * LOG_2PI + squared) - half_logdet


@numba.njit(parallel=True, **KERNEL)
def _kl_kernel(mean1, mat1, factor1, mean2, mat2, factor2, shape, strides, per_chunk, out, status1, status2):
    """strides: (4, nd) operand strides of mean1, mat1, mean2, mat2."""
    d = mean1.shape[1]
    n = out.size
    nd = shape.size
    for chunk in numba.prange((n + per_chunk - 1) // per_chunk):
        work1 = np.empty((1, d, d))
        work2 = np.empty((1, d, d))
        z = np.empty((1, d))
        loaded1 = loaded2 = -1
        start = chunk * per_chunk
        for b in range(start, min(start + per_chunk, n)):
            m1 = _operand_index(b, shape, strides[0], nd)
            m2 = _operand_index(b, shape, strides[2], nd)
            code1, loaded1 = _lower_factor(mat1, _operand_index(b, shape, strides[1], nd), factor1, -1.0, work1, loaded1, status1)
            code2, loaded2 = _lower_factor(mat2, _operand_index(b, shape, strides[3], nd), factor2, -1.0, work2, loaded2, status2)
            if code1 > 0 or code2 > 0:
                continue
            out[b] = _kl(work1, 0, work2, 0, d, mean1, m1, mean2, m2, z, 0)


# --- factorization of whole batches ----------------------------------------------------------


def _lapack(a, upper, dtype):
    """numpy.linalg.cholesky (LAPACK potrf) of a (count, d, d) in ``dtype``, or None when some
    matrix is not positive definite (LAPACK's error, or the NaN pivots it lets through)."""
    try:
        with np.errstate(invalid="ignore"):
            L = np.linalg.cholesky(a.astype(dtype, copy=False), upper=upper)
    except np.linalg.LinAlgError:
        return None
    return L if np.all(np.diagonal(L, axis1=-2, axis2=-1) > 0) else None


def factor_batch(a, upper=False, tol=plan.NO_CHECK, dtype=np.float64, out=None):
    """(L, Failure) for a (count, d, d): LAPACK from LAPACK_MIN_D up, else the kernel into ``out``.

    When LAPACK reports a failure, the kernel runs instead, to name the first failing
    matrix and minor by the same rule as the small-matrix path.
    """
    count, d = a.shape[0], a.shape[-1]
    if out is None:
        out = np.empty((count, d, d), dtype)
    if count == 0 or d == 0:
        return out, NO_FAILURE
    if d >= LAPACK_MIN_D:
        L = _lapack(a, upper, dtype)
        if L is not None:
            asymmetric = -1
            if tol >= 0:
                mirror = np.swapaxes(a, -1, -2)
                close = np.abs(a - mirror) <= tol + tol * np.minimum(np.abs(a), np.abs(mirror))
                bad = np.flatnonzero(~np.all(close, axis=(-2, -1)))
                asymmetric = int(bad[0]) if bad.size else -1
            return L, plan.Failure(-1, 0, asymmetric)
    status = np.empty(count, np.int32)
    launch(_cholesky, a, upper, tol, per_chunk(count), dims(d), out, status)
    return out, summarize(status)


# Kernels see C-contiguous (count, d, d) and (count, d) arrays of the result dtype: a copy
# only for non-contiguous or mixed-dtype inputs, and few compiled specializations.


def _matrices(a, dtype):
    return np.ascontiguousarray(a.reshape((int(np.prod(a.shape[:-2])),) + a.shape[-2:]), dtype=dtype)


def _vectors(x, dtype):
    return np.ascontiguousarray(x.reshape((int(np.prod(x.shape[:-1])), x.shape[-1])), dtype=dtype)


# What the shared plan (fastgauss._plans.mvn) needs from this target: LAPACK factors from
# LAPACK_MIN_D up, so only smaller orders are fused.
TARGET = plan.Target(fuses=lambda d: d < LAPACK_MIN_D, factor_batch=factor_batch, summarize=summarize)


# --- backend functions ------------------------------------------------------------------------


def cholesky(a, upper, out):
    # out is fresh and C-contiguous, so _matrices(out) is a view of it
    L, summary = factor_batch(_matrices(a, out.dtype), upper, plan.NO_CHECK, out.dtype, _matrices(out, out.dtype))
    return L.reshape(out.shape), {"a": summary}


def mvn_sample(mean, cov, scale_tril, batch, noise, out, *, fresh, stream, tol):
    d = out.shape[-1]
    matrix = cov if cov is not None else scale_tril
    vectors = out.size // d if d else 0
    # Fused: each covariance serves exactly one output vector, so it is factored in the
    # sampling pass. Otherwise each is factored once, first, into a float64 scratch.
    factors = plan.factor_first(TARGET, [("cov", _matrices(matrix, out.dtype), cov is not None)], vectors, tol)
    if factors.done:
        return factors.status
    (mat,), (fused,) = factors.mats, factors.fused
    shape, mean_strides, mat_strides = geometry(batch, mean.shape[:-1], matrix.shape[:-2])
    generate = noise is None
    noise_flat = np.empty(0, out.dtype) if generate else np.ascontiguousarray(noise.reshape(-1), dtype=out.dtype)
    state = kernel_state(stream if generate else None, out.shape)
    codes = np.zeros(mat.shape[0] if fused else 0, np.int32)
    target = out if fresh or not fused else np.empty(out.shape, out.dtype)  # a user's out: written once all factored
    with rows_to_write(target, 1) as flat:
        launch(
            _sample, _vectors(mean, out.dtype), mat, fused, tol, shape, mean_strides, mat_strides, int(np.prod(batch)),
            noise_flat, generate, state, per_chunk(vectors), dims(d), flat[0], codes,
        )
    status = plan.record_fused(TARGET, factors, ["cov"], [codes])
    if not plan.any_failed(status) and target is not out:
        out[...] = target
    return status


# mvn_logpdf and mvn_kl compute in float64 and write a small (batch,) result. Their kernels read
# the inputs in the result's dtype and widen each value as they load it (fastgauss._device.mvn
# widens every load): float32 inputs are not copied to float64 first, which made float32 twice
# as slow as float64 (786k 4x4 mvn_logpdf, 2-core Xeon: 65.6 ms against 31.7 ms). Mixed inputs
# (a float64 result) are widened by a copy, as before: two specializations each.


@contextlib.contextmanager
def _float64_result(out):
    """A flat float64 array to write; rounded into ``out`` afterwards when out is float32."""
    with rows_to_write(out, 1) as flat:
        if out.dtype == np.float64:
            yield flat[0]
        else:
            result = np.empty(out.size)
            yield result
            flat[0][...] = result


def mvn_logpdf(x, mean, cov, scale_tril, batch, out):
    matrix = cov if cov is not None else scale_tril
    n = out.size
    factors = plan.factor_first(TARGET, [("cov", _matrices(matrix, out.dtype), cov is not None)], n)
    if factors.done:
        return factors.status
    (mat,), (fused,) = factors.mats, factors.fused
    shape, x_strides, mean_strides, mat_strides = geometry(batch, x.shape[:-1], mean.shape[:-1], matrix.shape[:-2])
    codes = np.zeros(mat.shape[0] if fused else 0, np.int32)
    with _float64_result(out) as result:
        launch(
            _logpdf, _vectors(x, out.dtype), _vectors(mean, out.dtype), mat, fused,
            shape, x_strides, mean_strides, mat_strides, per_chunk(n), result, codes,
        )
    return plan.record_fused(TARGET, factors, ["cov"], [codes])


def mvn_kl(mean1, cov1, mean2, cov2, batch, out):
    n = out.size
    dtype = out.dtype
    factors = plan.factor_first(TARGET, [("cov1", _matrices(cov1, dtype), True), ("cov2", _matrices(cov2, dtype), True)], n)
    if factors.done:
        return factors.status
    mats, fused = factors.mats, factors.fused
    shape, *strides = geometry(batch, mean1.shape[:-1], cov1.shape[:-2], mean2.shape[:-1], cov2.shape[:-2])
    codes = [np.zeros(mat.shape[0] if fuse else 0, np.int32) for mat, fuse in zip(mats, fused)]
    with _float64_result(out) as result:
        launch(
            _kl_kernel, _vectors(mean1, dtype), mats[0], fused[0], _vectors(mean2, dtype), mats[1], fused[1],
            shape, np.stack(strides), per_chunk(n), result, codes[0], codes[1],
        )
    return plan.record_fused(TARGET, factors, ["cov1", "cov2"], codes)


# --- gradients ---------------------------------------------------------------------------
# Backward kernels (formulas: fastgauss.reference.mvn). A covariance's gradient comes from its
# factor's by Cholesky's reverse pass (_device.mvn.tril_vjp) in the pass that made the factor's
# gradient when each covariance serves one output; otherwise the factor gradients are summed
# over each matrix's preimage (``_plans.mvn.broadcast_geometry``) first, in segments whose
# partials are added in order, then reversed once per matrix (``_tril_vjp_kernel``).
# mvn_logpdf and mvn_kl take float64 inputs and write float64 gradients (one specialization
# each, as their forward kernels); mvn_sample's reads the cotangent and noise in the result
# dtype, the dtype its noise is regenerated in.

from fastgauss._plans.mvn import broadcast_geometry, segments  # noqa: E402

# Compiled without Numba-level inlining (LLVM still inlines what pays): the reverse passes are
# long, and inlining them into the parallel kernels' IR multiplies the compile time.
_g = _device.compile_for(numba.njit(**DEVICE), _mvn)
_preimage = _g.preimage
_clear_tril = _g.clear_tril
_add_tril = _g.add_tril
_outer_tril = _g.outer_tril
_tril_t_apply = _g.tril_t_apply
_logpdf_vjp = _g.logpdf_vjp
_kl_vjp = _g.kl_vjp
_factor_call = _g.factor
_load_call = _g.load_tril
_store_call = _g.store
_store_matrix_grad = _g.store_matrix_grad
_store_opposite = _g.store_opposite


@numba.njit(**KERNEL)
def _factor_or_load(mat, c, factor, upper, work, w, status):
    """work[w] = the lower factor of mat[c]: factored (its code recorded in status[c]) or loaded.
    Returns the code (> 0: not positive definite)."""
    d = mat.shape[1]
    if factor:
        code = _factor_call(mat, c, upper, -1.0, work, w, d)
        status[c] = code
        return code
    _load_call(mat, c, work, w, d)
    return 0


@numba.njit(parallel=True, **KERNEL)
def _tril_vjp_kernel(mat, factor, upper, partials, per_chunk, out, status):
    """out[c] = the covariance gradient of matrix c from its factor's gradient, the sum over p of the
    lower triangles of partials[c, p] (of their transposes when ``upper``). mat holds the
    covariances (factor: factored here, from the upper triangle when ``upper``) or the factors."""
    count, parts, d = partials.shape[0], partials.shape[1], partials.shape[2]
    for chunk in numba.prange((count + per_chunk - 1) // per_chunk):
        work = np.empty((2, d, d))
        start = chunk * per_chunk
        for c in range(start, min(start + per_chunk, count)):
            if _factor_or_load(mat, c, factor, upper, work, 0, status) > 0:
                continue
            _clear_tril(work, 1, d)
            block = partials[c]
            for p in range(parts):
                _add_tril(work, 1, d, block, p, upper)
            _store_matrix_grad(work, 0, work, 1, d, True, out, c)


@numba.njit(parallel=True, **KERNEL)
def _reduce_kernel(src, shape, kept, per_element, per_chunk, partials):
    """partials[c, p, k] = the sum of src[n, k] over segment p of element c's preimage n."""
    count, parts, width = partials.shape
    items = count * parts
    nd = shape.size
    for chunk in numba.prange((items + per_chunk - 1) // per_chunk):
        acc = np.empty(width)
        for item in range(chunk * per_chunk, min((chunk + 1) * per_chunk, items)):
            c = item // parts
            p = item - c * parts
            acc[:] = 0.0
            for j in range(p * per_element // parts, (p + 1) * per_element // parts):
                n = _preimage(c, j, shape, kept, nd)
                for k in range(width):
                    acc[k] += np.float64(src[n, k])
            for k in range(width):
                partials[c, p, k] = acc[k]


@numba.njit(parallel=True, **KERNEL)
def _sample_vjp_kernel(
    cot, mat, factor, noise, generate, state, shape, kept, per_element, parts, per_chunk, dims, want_matrix, want_noise, grad_noise,
    partials, out, status
):
    """Item (c, p): matrix c's factor, and over segment p of its preimage (vectors n):
    G = sum tril(g_n eps_n^T) and grad_noise_n = L^T g_n. With one segment, out[c] = the matrix
    gradient (factor: covariance, reversed; else the factor's); else partials[c, p] = G.
    dims: d known at compile time (see ``dims``), so the per-matrix loops unroll."""
    count = mat.shape[0]
    d = len(dims) if len(dims) else mat.shape[1]
    items = count * parts
    nd = shape.size
    for chunk in numba.prange((items + per_chunk - 1) // per_chunk):
        work = np.empty((2, d, d))
        eps = np.empty(d + 4, cot.dtype)
        for item in range(chunk * per_chunk, min((chunk + 1) * per_chunk, items)):
            c = item // parts
            p = item - c * parts
            if _factor_or_load(mat, c, factor, False, work, 0, status) > 0:
                continue
            _clear_tril(work, 1, d)
            for j in range(p * per_element // parts, (p + 1) * per_element // parts):
                n = _preimage(c, j, shape, kept, nd)
                if want_noise:
                    _tril_t_apply(work, 0, d, cot, n * d, grad_noise, n * d)
                if want_matrix:
                    if generate:  # the blocks holding elements n d .. n d + d - 1, from a multiple of 4
                        first = n * d
                        aligned = first - first % 4
                        normal_part(eps[: first + d - aligned], aligned, state)
                        _outer_tril(work, 1, d, cot, first, eps, first - aligned)
                    else:
                        _outer_tril(work, 1, d, cot, n * d, noise, n * d)
            if not want_matrix:
                continue
            if parts == 1:
                _store_matrix_grad(work, 0, work, 1, d, factor, out, c)
            else:
                _store_call(work, 1, d, False, partials[c], p)


@numba.njit(parallel=True, **KERNEL)
def _logpdf_vjp_kernel(cot, x, mean, mat, factor, shape, strides, per_chunk, want, grad_x, grad_mean, finish, covariance, grad_mat, status):
    """Per point b: grad_x[b] = -g u, grad_mean[b] = g u and grad_mat[b] = the factor's gradient G
    (``finish``: reversed into the covariance's when ``covariance``, symmetric; else G, lower).
    strides: (3, nd) of x, mean, mat; want: (x, mean, matrix)."""
    d = x.shape[1]
    n = cot.size
    nd = shape.size
    for chunk in numba.prange((n + per_chunk - 1) // per_chunk):
        work = np.empty((2, d, d))
        z = np.empty((1, d))
        start = chunk * per_chunk
        for b in range(start, min(start + per_chunk, n)):
            xi = _operand_index(b, shape, strides[0], nd)
            m = _operand_index(b, shape, strides[1], nd)
            if _factor_or_load(mat, _operand_index(b, shape, strides[2], nd), factor, False, work, 0, status) > 0:
                continue
            _logpdf_vjp(work, 0, d, x, xi, mean, m, cot[b], z, 0, work, 1)
            _store_opposite(z, 0, d, want[0], grad_x, want[1], grad_mean, b)
            if want[2]:
                _store_matrix_grad(work, 0, work, 1, d, finish and covariance, grad_mat, b)


@numba.njit(parallel=True, **KERNEL)
def _kl_vjp_kernel(cot, mean1, mat1, factor1, mean2, mat2, factor2, shape, strides, per_chunk, want, finish, grads_v1, grads_v2, grad_m1, grad_m2, status1, status2):
    """Per pair b: grad_v1[b] = -g v, grad_v2[b] = g v (the means') and grad_m1[b], grad_m2[b] the
    factors' gradients (``finish``: (1, 2) flags, reversed into the covariances', symmetric).
    strides: (4, nd) of mean1, mat1, mean2, mat2; want: (mean1, cov1, mean2, cov2)."""
    d = mean1.shape[1]
    n = cot.size
    nd = shape.size
    for chunk in numba.prange((n + per_chunk - 1) // per_chunk):
        work1 = np.empty((1, d, d))
        work2 = np.empty((1, d, d))
        work = np.empty((3, d, d))  # M, then L1's gradient, L2's gradient
        w = np.empty((1, d))
        start = chunk * per_chunk
        for b in range(start, min(start + per_chunk, n)):
            m1 = _operand_index(b, shape, strides[0], nd)
            m2 = _operand_index(b, shape, strides[2], nd)
            if _factor_or_load(mat1, _operand_index(b, shape, strides[1], nd), factor1, False, work1, 0, status1) > 0:
                continue
            if _factor_or_load(mat2, _operand_index(b, shape, strides[3], nd), factor2, False, work2, 0, status2) > 0:
                continue
            _kl_vjp(work1, 0, work2, 0, d, mean1, m1, mean2, m2, cot[b], work, 0, work, 1, w, 0, work, 2)
            _store_opposite(w, 0, d, want[0], grads_v1, want[2], grads_v2, b)
            if want[1]:
                _store_matrix_grad(work1, 0, work, 1, d, finish[0], grad_m1, b)
            if want[3]:
                _store_matrix_grad(work2, 0, work, 2, d, finish[1], grad_m2, b)


def _reduce(src, full, operand):
    """Partial sums (elements, segments, width) of src (prod(full), width) over each element's
    preimage, for an operand of batch shape ``operand`` broadcast to ``full``."""
    shape, kept, count, per_element = broadcast_geometry(full, operand)
    partials = np.empty((count, segments(per_element), src.shape[1]))
    launch(_reduce_kernel, src, shape, kept, per_element, per_chunk(count * partials.shape[1]), partials)
    return partials


def _float64_view(grad, count, tail):
    """A float64 (count,) + tail array of the gradient ``grad`` (a view when it can be one)."""
    if grad is None:
        return np.empty((0,) + tail)
    if grad.dtype == np.float64 and grad.flags.c_contiguous and grad.size == count * int(np.prod(tail)):
        return grad.reshape((count,) + tail)
    return np.empty((count,) + tail)


def _per_point(grad, same, count, tail):
    """Where a kernel writes an argument's gradient per point: the gradient itself (a float64 view
    where it can be one) when the argument is not broadcast, else a float64 scratch to reduce;
    an empty array when the gradient is not wanted."""
    if grad is None:
        return np.empty((0,) + tail)
    return _float64_view(grad, count, tail) if same else np.empty((count,) + tail)


def _finish_vectors(grad, per_point, batch, operand):
    """grad = per_point (batch size, d) summed to the operand's shape (a copy unless already there)."""
    if grad is None:
        return
    if int(np.prod(operand)) != per_point.shape[0]:
        per_point = _reduce(per_point, batch, operand).sum(axis=1)
    if not np.may_share_memory(per_point, grad):
        grad[...] = per_point.reshape(grad.shape)


def _finish_matrices(grad, per_point, batch, operand, covariance, mat):
    """grad = the matrix gradient from per_point: final (per-point operand) or factor gradients
    to sum over each matrix's preimage, then reverse through Cholesky (``covariance``, factors mat)."""
    if grad is None:
        return
    d = per_point.shape[-1]
    if int(np.prod(operand)) != per_point.shape[0]:
        partials = _reduce(per_point.reshape(per_point.shape[0], d * d), batch, operand)
        count, parts = partials.shape[:2]
        if covariance:
            per_point = _float64_view(grad, count, (d, d))
            launch(_tril_vjp_kernel, mat, False, False, partials.reshape(count, parts, d, d), per_chunk(count), per_point, np.empty(0, np.int32))
        else:
            per_point = partials.sum(axis=1)
    if not np.may_share_memory(per_point, grad):
        grad[...] = per_point.reshape(grad.shape)


def cholesky_vjp(cotangent, a, upper, grad_a):
    d = a.shape[-1]
    count = grad_a.size // (d * d) if d else 0
    if count == 0:
        return {"a": NO_FAILURE}
    target = _float64_view(grad_a, count, (d, d))
    g = _matrices(cotangent, np.float64).reshape(count, 1, d, d)
    status = np.zeros(count, np.int32)
    launch(_tril_vjp_kernel, _matrices(a, np.float64), True, bool(upper), g, per_chunk(count), target, status)
    summary = summarize(status)
    if summary.failed < 0 and not np.may_share_memory(target, grad_a):
        grad_a[...] = target.reshape(grad_a.shape)
    return {"a": summary}


def mvn_sample_vjp(cotangent, mean, cov, scale_tril, batch, noise, *, stream, grad_mean, grad_cov, grad_scale_tril, grad_noise):
    dtype = cotangent.dtype
    d = cotangent.shape[-1]
    full = cotangent.shape[:-1]
    vectors = int(np.prod(full))
    matrix = cov if cov is not None else scale_tril
    grad_matrix = grad_cov if cov is not None else grad_scale_tril
    cot = np.ascontiguousarray(cotangent.reshape(-1))
    status = {}
    if grad_matrix is not None or grad_noise is not None:
        shape, kept, count, per_element = broadcast_geometry(full, matrix.shape[:-2])
        parts = segments(per_element)
        generate = noise is None
        noise_flat = np.empty(0, dtype) if generate else np.ascontiguousarray(noise.reshape(-1), dtype=dtype)
        state = kernel_state(tuple(stream)[:2] if generate else None, cotangent.shape)  # the whole array: no window
        noise_target = grad_noise.reshape(-1) if grad_noise is not None else np.empty(0, dtype)
        direct = parts == 1
        out = _matrices(grad_matrix, dtype) if grad_matrix is not None and direct else np.empty((0, d, d), dtype)
        partials = np.empty((count, parts, d, d) if grad_matrix is not None and not direct else (0, 1, d, d))
        codes = np.zeros(count, np.int32)
        mat = _matrices(matrix, dtype)  # read in its own dtype (factored in float64): no float64 copy of every matrix
        launch(
            _sample_vjp_kernel, cot, mat, cov is not None, noise_flat, generate, state, shape, kept, per_element, parts,
            per_chunk(count * parts), dims(d), grad_matrix is not None, grad_noise is not None, noise_target, partials, out, codes,
        )
        if cov is not None:
            status["cov"] = summarize(codes)
            if status["cov"].failed >= 0:
                return status
        if grad_matrix is not None and not direct:
            if cov is not None:
                target = _float64_view(grad_cov, count, (d, d))
                launch(_tril_vjp_kernel, mat, True, False, partials, per_chunk(count), target, codes)
            else:
                target = partials.sum(axis=1)
            if not np.may_share_memory(target, grad_matrix):
                grad_matrix[...] = target.reshape(grad_matrix.shape)
        elif grad_matrix is not None and not np.may_share_memory(out, grad_matrix):
            grad_matrix[...] = out.reshape(grad_matrix.shape)
    if grad_mean is not None:
        if int(np.prod(mean.shape[:-1])) == vectors:
            grad_mean[...] = cotangent.reshape(grad_mean.shape)
        else:
            grad_mean[...] = _reduce(cot.reshape(vectors, d), full, mean.shape[:-1]).sum(axis=1).reshape(grad_mean.shape)
    return status


def mvn_logpdf_vjp(cotangent, x, mean, cov, scale_tril, batch, *, grad_x, grad_mean, grad_cov, grad_scale_tril):
    matrix = cov if cov is not None else scale_tril
    grad_matrix = grad_cov if cov is not None else grad_scale_tril
    n = cotangent.size
    d = x.shape[-1]
    factors = plan.factor_first(TARGET, [("cov", _matrices(matrix, np.float64), cov is not None)], n)
    if factors.done:
        return factors.status
    (mat,), (fused,) = factors.mats, factors.fused
    shape, *strides = geometry(batch, x.shape[:-1], mean.shape[:-1], matrix.shape[:-2])
    identity = [int(np.prod(a)) == n for a in (x.shape[:-1], mean.shape[:-1], matrix.shape[:-2])]
    gx, gm, gmat = (_per_point(g, same, n, tail) for g, same, tail in zip((grad_x, grad_mean, grad_matrix), identity, ((d,), (d,), (d, d))))
    codes = np.zeros(mat.shape[0] if fused else 0, np.int32)
    want = (grad_x is not None, grad_mean is not None, grad_matrix is not None)
    launch(
        _logpdf_vjp_kernel, np.ascontiguousarray(cotangent.reshape(-1), dtype=np.float64), _vectors(x, np.float64),
        _vectors(mean, np.float64), mat, fused, shape, np.stack(strides), per_chunk(n), want, gx, gm, identity[2],
        cov is not None, gmat, codes,
    )
    status = plan.record_fused(TARGET, factors, ["cov"], [codes])
    if plan.any_failed(status):
        return status
    _finish_vectors(grad_x, gx, batch, x.shape[:-1])
    _finish_vectors(grad_mean, gm, batch, mean.shape[:-1])
    _finish_matrices(grad_matrix, gmat, batch, matrix.shape[:-2], cov is not None, mat)
    return status


def mvn_kl_vjp(cotangent, mean1, cov1, mean2, cov2, batch, *, grad_mean1, grad_cov1, grad_mean2, grad_cov2):
    n = cotangent.size
    d = mean1.shape[-1]
    factors = plan.factor_first(TARGET, [("cov1", _matrices(cov1, np.float64), True), ("cov2", _matrices(cov2, np.float64), True)], n)
    if factors.done:
        return factors.status
    mats, fused = factors.mats, factors.fused
    batches = (mean1.shape[:-1], cov1.shape[:-2], mean2.shape[:-1], cov2.shape[:-2])
    shape, *strides = geometry(batch, *batches)
    grads = (grad_mean1, grad_cov1, grad_mean2, grad_cov2)
    identity = [int(np.prod(a)) == n for a in batches]
    targets = [_per_point(g, same, n, tail) for g, same, tail in zip(grads, identity, ((d,), (d, d), (d,), (d, d)))]
    codes = [np.zeros(mat.shape[0] if fuse else 0, np.int32) for mat, fuse in zip(mats, fused)]
    launch(
        _kl_vjp_kernel, np.ascontiguousarray(cotangent.reshape(-1), dtype=np.float64), _vectors(mean1, np.float64), mats[0], fused[0],
        _vectors(mean2, np.float64), mats[1], fused[1], shape, np.stack(strides), per_chunk(n), tuple(g is not None for g in grads),
        (identity[1], identity[3]), targets[0], targets[2], targets[1], targets[3], codes[0], codes[1],
    )
    status = plan.record_fused(TARGET, factors, ["cov1", "cov2"], codes)
    if plan.any_failed(status):
        return status
    _finish_vectors(grad_mean1, targets[0], batch, batches[0])
    _finish_vectors(grad_mean2, targets[2], batch, batches[2])
    _finish_matrices(grad_cov1, targets[1], batch, batches[1], True, mats[0])
    _finish_matrices(grad_cov2, targets[3], batch, batches[3], True, mats[1])
    return status


# --- Gaussian algebra ---
# One prange item per chunk of outputs; each chunk owns a small float64 work buffer (slots of
# the blocks being factored and solved, L1-resident) and writes each output once. Inputs are
# C-contiguous (count, ...) arrays of the result dtype (a copy only for non-contiguous or
# mixed-dtype inputs): one specialization per dtype. A covariance shared by several outputs
# (a broadcast batch) is read, and its block factored, once per output.

# The algebra's device functions are _g's, compiled without Numba-level inlining (LLVM still
# inlines them): the same speed, and half the compile time of kalman_update's kernel (8 s -> 4 s
# a dtype); one set with the backward passes', so a function both use compiles once.
_marginal = _g.marginal
_condition = _g.condition
_affine = _g.affine
_product = _g.product
_kalman = _g.kalman


@numba.njit(parallel=True, **KERNEL)
def _marginal_kernel(mean, cov, index, shape, strides, per_chunk, out_mean, out_cov):
    """strides: (2, nd) operand strides of mean and cov."""
    n = out_mean.shape[0]
    nd = shape.size
    for chunk in numba.prange((n + per_chunk - 1) // per_chunk):
        start = chunk * per_chunk
        for b in range(start, min(start + per_chunk, n)):
            m = _operand_index(b, shape, strides[0], nd)
            c = _operand_index(b, shape, strides[1], nd)
            _marginal(mean, m, cov, c, index, out_mean, out_cov, b)


@numba.njit(parallel=True, **KERNEL)
def _condition_kernel(mean, cov, value, index, other, shape, strides, per_chunk, out_mean, out_cov, status):
    """strides: (3, nd) of mean, cov, value; status[c] = the failing minor of cov c's Sigma_22."""
    n = out_mean.shape[0]
    nd = shape.size
    rows = index.size
    for chunk in numba.prange((n + per_chunk - 1) // per_chunk):
        work = np.empty((2, rows, max(rows, other.size + 1)))
        start = chunk * per_chunk
        for b in range(start, min(start + per_chunk, n)):
            m = _operand_index(b, shape, strides[0], nd)
            c = _operand_index(b, shape, strides[1], nd)
            v = _operand_index(b, shape, strides[2], nd)
            code = _condition(mean, m, cov, c, value, v, index, other, work, 0, out_mean, out_cov, b)
            if code > 0:
                status[c] = code


@numba.njit(parallel=True, **KERNEL)
def _affine_kernel(mean, cov, A, shift, shape, strides, per_chunk, out_mean, out_cov):
    """strides: (4, nd) of mean, cov, A, shift."""
    n = out_mean.shape[0]
    d = mean.shape[1]
    k = A.shape[1]
    nd = shape.size
    for chunk in numba.prange((n + per_chunk - 1) // per_chunk):
        work = np.empty((1, k, d))
        start = chunk * per_chunk
        for b in range(start, min(start + per_chunk, n)):
            m = _operand_index(b, shape, strides[0], nd)
            c = _operand_index(b, shape, strides[1], nd)
            a = _operand_index(b, shape, strides[2], nd)
            s = _operand_index(b, shape, strides[3], nd)
            _affine(mean, m, cov, c, A, a, shift, s, d, k, work, 0, out_mean, out_cov, b)


@numba.njit(parallel=True, **KERNEL)
def _product_kernel(mean1, cov1, mean2, cov2, shape, strides, per_chunk, out_mean, out_cov, out_log_scale, status):
    """strides: (4, nd) of mean1, cov1, mean2, cov2; status[b]: the failing minor of cov1 + cov2."""
    n = out_mean.shape[0]
    d = mean1.shape[1]
    nd = shape.size
    for chunk in numba.prange((n + per_chunk - 1) // per_chunk):
        work = np.empty((2, d, 2 * d + 1))
        start = chunk * per_chunk
        for b in range(start, min(start + per_chunk, n)):
            m1 = _operand_index(b, shape, strides[0], nd)
            c1 = _operand_index(b, shape, strides[1], nd)
            m2 = _operand_index(b, shape, strides[2], nd)
            c2 = _operand_index(b, shape, strides[3], nd)
            code, log_scale = _product(mean1, m1, cov1, c1, mean2, m2, cov2, c2, d, LOG_2PI, work, 0, out_mean, out_cov, b)
            status[b] = code
            out_log_scale[b] = log_scale


@numba.njit(parallel=True, **KERNEL)
def _kalman_kernel(mean, cov, H, R, y, shape, strides, per_chunk, out_mean, out_cov, out_log_likelihood, status):
    """strides: (5, nd) of mean, cov, H, R, y; status[b]: the failing minor of H cov H^T + R."""
    n = out_mean.shape[0]
    d = mean.shape[1]
    k = y.shape[1]
    nd = shape.size
    size = max(d, k) + 1
    for chunk in numba.prange((n + per_chunk - 1) // per_chunk):
        work = np.empty((6, size, size))
        start = chunk * per_chunk
        for b in range(start, min(start + per_chunk, n)):
            m = _operand_index(b, shape, strides[0], nd)
            c = _operand_index(b, shape, strides[1], nd)
            h = _operand_index(b, shape, strides[2], nd)
            r = _operand_index(b, shape, strides[3], nd)
            yy = _operand_index(b, shape, strides[4], nd)
            code, log_likelihood = _kalman(mean, m, cov, c, H, h, R, r, y, yy, d, k, LOG_2PI, work, 0, out_mean, out_cov, b)
            status[b] = code
            out_log_likelihood[b] = log_likelihood


def _algebra_geometry(batch, *operands):
    """(shape, strides (operands, nd)) of geometry(), for operands given as (array, trailing axes)."""
    shape, *strides = geometry(batch, *(a.shape[: a.ndim - axes] for a, axes in operands))
    return shape, np.stack(strides)


def _flat_outputs(batch, *outs):
    """Each output viewed as (batch count, ...) (fresh C-contiguous arrays, so views)."""
    n = int(np.prod(batch))
    return n, [out.reshape((n,) + out.shape[len(batch) :]) for out in outs]


def mvn_affine(mean, cov, A, b, batch, mean_out, cov_out):
    dtype = mean_out.dtype
    k = A.shape[-2]
    shift = np.zeros(k, dtype) if b is None else b
    n, (out_mean, out_cov) = _flat_outputs(batch, mean_out, cov_out)
    if n == 0 or k == 0:
        return {}
    shape, strides = _algebra_geometry(batch, (mean, 1), (cov, 2), (A, 2), (shift, 1))
    launch(
        _affine_kernel, _vectors(mean, dtype), _matrices(cov, dtype), _matrices(A, dtype), _vectors(shift, dtype),
        shape, strides, per_chunk(n), out_mean, out_cov,
    )
    return {}


def mvn_marginal(mean, cov, index, batch, mean_out, cov_out):
    dtype = mean_out.dtype
    n, (out_mean, out_cov) = _flat_outputs(batch, mean_out, cov_out)
    if n == 0 or index.size == 0:
        return {}
    shape, strides = _algebra_geometry(batch, (mean, 1), (cov, 2))
    launch(_marginal_kernel, _vectors(mean, dtype), _matrices(cov, dtype), index, shape, strides, per_chunk(n), out_mean, out_cov)
    return {}


def mvn_condition(mean, cov, index, other, value, batch, mean_out, *, cov_out):
    dtype = mean_out.dtype
    n, (out_mean, out_cov) = _flat_outputs(batch, mean_out, cov_out)
    covs = _matrices(cov, dtype)
    status = np.zeros(covs.shape[0], np.int32)
    if n == 0:
        return {"cov": NO_FAILURE}
    shape, strides = _algebra_geometry(batch, (mean, 1), (cov, 2), (value, 1))
    launch(
        _condition_kernel, _vectors(mean, dtype), covs, _vectors(value, dtype), index, other, shape, strides, per_chunk(n),
        out_mean, out_cov, status,
    )
    return {"cov": summarize(status)}


def gaussian_product(mean1, cov1, mean2, cov2, batch, mean_out, cov_out, *, log_scale_out):
    dtype = mean_out.dtype
    n, (out_mean, out_cov, out_log_scale) = _flat_outputs(batch, mean_out, cov_out, log_scale_out)
    if n == 0:
        return {"sum": NO_FAILURE}
    status = np.empty(n, np.int32)
    shape, strides = _algebra_geometry(batch, (mean1, 1), (cov1, 2), (mean2, 1), (cov2, 2))
    launch(
        _product_kernel, _vectors(mean1, dtype), _matrices(cov1, dtype), _vectors(mean2, dtype), _matrices(cov2, dtype),
        shape, strides, per_chunk(n), out_mean, out_cov, out_log_scale, status,
    )
    return {"sum": summarize(status)}


def kalman_update(mean, cov, H, R, y, batch, mean_out, *, cov_out, log_likelihood_out):
    dtype = mean_out.dtype
    n, (out_mean, out_cov, out_log_likelihood) = _flat_outputs(batch, mean_out, cov_out, log_likelihood_out)
    if n == 0:
        return {"innovation": NO_FAILURE}
    status = np.empty(n, np.int32)
    shape, strides = _algebra_geometry(batch, (mean, 1), (cov, 2), (H, 2), (R, 2), (y, 1))
    launch(
        _kalman_kernel, _vectors(mean, dtype), _matrices(cov, dtype), _matrices(H, dtype), _matrices(R, dtype), _vectors(y, dtype),
        shape, strides, per_chunk(n), out_mean, out_cov, out_log_likelihood, status,
    )
    return {"innovation": summarize(status)}
