"""CPU kernels for the KL family: one fused parallel pass per call, reductions included.

Layout. The broadcast shape is seen as (rows, width), rows = its first axis. Each
argument arrives (from ``operand``) as one of two kinds, and Numba compiles one
specialization per combination that a program uses:

- a 2-D C-contiguous (rows or 1, width) array: a full tensor, or one shared by every
  row (shape (1, ...) or no batch axis);
- a 1-D C-contiguous (rows or 1,) array: one value per row, shape (B, 1, ..., 1), or one
  value for all (a Python or 0-d scalar).

One kernel, ``_rows``, serves the three ops: its ``op`` argument (a tuple whose length
names the op, so a compile-time constant) selects the element function from
fastgauss._device.kl, which LLVM inlines into the loop (forceinline, see
fastgauss.cpu.random); an op with three operands
passes a scalar zero as the fourth, which the loop never reads.

Inside a work item each argument becomes either a 1-D slice of the row or one scalar
(``segment``), and the inner loop reads ``at(segment, j)``: an indexed load or the
scalar itself. The loop body is then straight-line code that LLVM vectorizes, and a
per-row value's share of the math (e.g. e^-logvar2) is hoisted out of it. Broadcasts of
any other form are materialized once by ``operand`` (correct, not fast).

Work items are CHUNK elements of one row (or, for narrow rows, several whole rows).
Reductions: each item writes its values to a chunk-sized buffer, sums it in float64
(``_chunk_sum``: a fixed tree, written out so that no reassociation is left to the
compiler), and stores one partial per (row, chunk); the partials of a row are then
added in chunk order. The summation order is a function of the shape alone: results
are bitwise identical for any number of threads and on any x86-64 ISA level.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from fastgauss import _checks, _device
from fastgauss._device import kl as _kl
from fastgauss.cpu import CHUNK, DEVICE, launch, prefer_wide_vectors, unbroadcast

KERNEL = dict(error_model="numpy", cache=True)

# --- this target's versions of fastgauss._device.kl functions ---------------------------------
# Each is declared with @_replaces(name) where it is defined; compile_for (below) makes every
# portable function that calls ``name`` call it instead. The same values, fewer instructions.

CPU_VERSIONS = {}


def _replaces(name):
    """Declare the decorated function as the CPU's version of fastgauss._device.kl.<name>."""

    def declare(function):
        CPU_VERSIONS[name] = function
        return function

    return declare


# --- bit casts: the CPU's pow2 and split_unit ----------------------------------------------
# The portable versions in fastgauss._device.kl build powers of two by selects (the GPU
# and the simulator run those); vectorized on the CPU they cost ~300 instructions a 16-wide
# vector of exps (3.2 ns an element against NumPy's 0.32). Here the exponent field is
# written and read directly: the same values, a few vector instructions.

# float32 <-> int32 and float64 <-> int64: the type whose bits a value is reinterpreted as
_SAME_BITS = {types.float32: types.int32, types.float64: types.int64, types.int32: types.float32, types.int64: types.float64}


@intrinsic
def _reinterpret(typingctx, value):
    """The bits of a float32 / float64 as an int32 / int64, or the float whose bits an int32 /
    int64 holds: one bitcast, no instruction of its own in vector code."""
    if value not in _SAME_BITS:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(signature.return_type))

    return _SAME_BITS[value](value), codegen


@_replaces("pow2")
def _pow2(h, c):
    """2**h by writing the exponent field (h integral, in the dtype's normal range)."""


@_replaces("split_unit")
def _split_unit(x, c):
    """(m, e), x = m 2**e, m in [sqrt(1/2), sqrt(2)), by reading the exponent field (x normal, > 0)."""


def _layout(dtype):
    """(float, int, mantissa bits, exponent bias, mantissa mask, bits of 1.0) of a float type."""
    if dtype == types.float32:
        return np.float32, np.int32, 23, 127, 0x7FFFFF, 0x3F800000
    return np.float64, np.int64, 52, 1023, 0x000FFFFFFFFFFFFF, 0x3FF0000000000000


@overload(_pow2, inline="always", jit_options=KERNEL)
def _pow2_impl(h, c):
    _, integer, mantissa_bits, bias, _, _ = _layout(h)
    shift, offset = integer(mantissa_bits), integer(bias)
    return lambda h, c: _reinterpret(integer((integer(h) + offset) << shift))  # Numba widens int32 math: narrow it back


@overload(_split_unit, inline="always", jit_options=KERNEL)
def _split_unit_impl(x, c):
    real, integer, mantissa_bits, bias, mantissa_mask, one_bits = _layout(x)
    shift, offset, mask, one = integer(mantissa_bits), integer(bias), integer(mantissa_mask), integer(one_bits)

    def impl(x, c):
        bits = _reinterpret(x)
        m = _reinterpret(integer((bits & mask) | one))  # in [1, 2)
        e = real((bits >> shift) - offset)
        big = m > c.sqrt_half * c.two
        m = m * c.half if big else m
        return (m if x == x else x), (e + c.one if big else e)

    return impl


# --- fused multiply-add -----------------------------------------------------------------
# Numba never contracts a * b + c (its floats carry no "contract" flag): llvm.fma is asked
# for explicitly. One rounding, so the same bits on every ISA (AVX-512 and AVX2 have the
# instruction; a build without it calls libm's fma). Measured: normal_product float32 on one
# core 2.04 -> 1.21 ns an element.


@_replaces("fma")
def _fma(a, b, addend):
    """a * b + addend with one rounding (fastgauss._device.kl.fma)."""


@intrinsic
def _llvm_fma(typingctx, a, b, addend):
    if not (a == b == addend and a in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        value = args[0].type
        fma = builder.module.declare_intrinsic("llvm.fma", [value], ir.FunctionType(value, [value] * 3))
        return builder.call(fma, args)

    return a(a, b, addend), codegen


@overload(_fma, inline="always", jit_options=KERNEL)
def _fma_impl(a, b, addend):
    return lambda a, b, addend: _llvm_fma(a, b, addend)


# --- polynomials of the dtype's own degree ----------------------------------------------
# The portable Horner forms run through float64's degree, with zero coefficients past
# float32's; here float32 starts at its own degree (the same values, a third fewer
# operations: exp 0.50 -> 0.31 ns an element on one core).


@_replaces("taylor")
def _taylor(r, c):
    """fastgauss._device.kl.taylor at the degree of r's dtype."""


@_replaces("atanh_series")
def _atanh_series(z, c):
    """fastgauss._device.kl.atanh_series at the length of z's dtype."""


@overload(_taylor, inline="always", jit_options=KERNEL)
def _taylor_impl(r, c):
    if r == types.float32:

        def short(r, c):
            q = _fma(c.e7, r, c.e6)
            q = _fma(q, r, c.e5)
            q = _fma(q, r, c.e4)
            q = _fma(q, r, c.e3)
            return _fma(q, r, c.half)

        return short
    return lambda r, c: _kl_taylor(r, c)


@overload(_atanh_series, inline="always", jit_options=KERNEL)
def _atanh_series_impl(z, c):
    if z == types.float32:

        def short(z, c):
            q = _fma(c.s9, z, c.s7)
            q = _fma(q, z, c.s5)
            q = _fma(q, z, c.s3)
            return _fma(q, z, c.one)

        return short
    return lambda z, c: _kl_atanh_series(z, c)


# the portable Horner forms (float64's degree), calling this target's fma
_portable = _device.compile_for(numba.njit(**DEVICE, forceinline=True), _kl, overrides={"fma": _fma})
_kl_taylor = _portable.taylor
_kl_atanh_series = _portable.atanh_series


_d = _device.compile_for(numba.njit(**DEVICE, forceinline=True), _kl, overrides=CPU_VERSIONS)
_normal_kl = _d.normal_kl
_normal_logpdf = _d.normal_logpdf
_discretized = _d.discretized_gaussian_log_likelihood
_normal_kl_vjp = _d.normal_kl_vjp
_normal_logpdf_vjp = _d.normal_logpdf_vjp
_discretized_vjp = _d.discretized_gaussian_log_likelihood_vjp
MODES = {None: 0, "sum": 1, "mean": 2}
_F64 = _kl.F64


def constants_like(values):
    """fastgauss._device.kl's Constants of the dtype of ``values`` (an array), as a compile-time
    constant. The kernels take it here rather than as an argument: a 69-float tuple argument
    is unboxed and passed to the parallel loop's body field by field, which cost the KL
    family's compilation 18% (33.3 -> 27.5 s on a cold cache), at the same speed."""


@overload(constants_like, inline="always", jit_options=KERNEL)
def _constants_like(values):
    c = _kl.constants(np.dtype(values.dtype.name))
    return lambda values: c


def segment(a, r, start, stop):
    """Row r of an operand, elements start:stop: a 1-D slice, or one scalar."""


def at(s, j):
    """Element j of a segment: s[j], or s itself for a scalar."""


@overload(segment, inline="always", jit_options=KERNEL)
def _segment(a, r, start, stop):
    if not isinstance(a, types.Array):  # an operand an op does not have (see _run)

        def absent(a, r, start, stop):
            return a

        return absent
    if a.ndim == 2:

        def row_slice(a, r, start, stop):
            return a[min(r, a.shape[0] - 1), start:stop]  # row 0 when shared by all rows

        return row_slice

    def row_value(a, r, start, stop):
        return a[min(r, a.shape[0] - 1)]

    return row_value


@overload(at, inline="always", jit_options=KERNEL)
def _at(s, j):
    if isinstance(s, types.Array):
        return lambda s, j: s[j]
    return lambda s, j: s


@numba.njit(**KERNEL)
def _chunk_sum(values):
    """The float64 sum of ``values`` in an order fixed by their count alone, so the same bits
    on every ISA (AVX-512, AVX2, SSE2) and thread count: element j of each eighth is added
    across the eighths by a fixed tree (elementwise, so LLVM vectorizes it without
    reassociation), those partials are folded in halves (pairwise), and the few left over
    are added in order. 1.3x the time of a reassociated sum (1.5 vs 1.15 us for 16384
    float32 values), a few percent of a pass."""
    q = values.size // 8
    s0, s1, s2, s3 = values[:q], values[q : 2 * q], values[2 * q : 3 * q], values[3 * q : 4 * q]
    s4, s5, s6, s7 = values[4 * q : 5 * q], values[5 * q : 6 * q], values[6 * q : 7 * q], values[7 * q : 8 * q]
    partials = np.empty(q)
    for j in range(q):
        low = (np.float64(s0[j]) + np.float64(s1[j])) + (np.float64(s2[j]) + np.float64(s3[j]))
        high = (np.float64(s4[j]) + np.float64(s5[j])) + (np.float64(s6[j]) + np.float64(s7[j]))
        partials[j] = low + high
    rest = values[8 * q :]
    total = 0.0
    for j in range(rest.size):
        total += np.float64(rest[j])
    n = q
    while n > 1:
        half = n // 2
        if n % 2:
            total += partials[n - 1]
        lower, upper = partials[:half], partials[half : 2 * half]
        for j in range(half):
            lower[j] += upper[j]
        n = half
    return total + partials[0] if n == 1 else total


@numba.njit(**KERNEL)
def _item(item, rows, width, chunks_per_row, rows_per_item):
    """Work item -> (first row, row stop, chunk index, start, stop)."""
    group = item // chunks_per_row
    chunk = item - group * chunks_per_row
    start = chunk * CHUNK
    first = group * rows_per_item
    return first, min(first + rows_per_item, rows), chunk, start, min(start + CHUNK, width)


@numba.njit(parallel=True, **KERNEL)
def _combine(partials, chunks_per_row, width, mode, sums):
    """Per-row sums (mode 1) or means (mode 2) from the partials, added in chunk order."""
    for r in numba.prange(sums.size):
        total = 0.0
        for k in range(chunks_per_row):
            total += partials[r * chunks_per_row + k]
        sums[r] = total / width if mode == 2 else total


# The element function a _rows call computes is fixed at compile time by the type of its
# ``op`` argument, a tuple of zeros whose length names it (as cpu/mvn's ``dims`` fixes d):
# one specialization per op and operand kinds, each inner loop the op's element inlined.
OPS = {"normal_kl": (0,), "normal_logpdf": (0, 0), "discretized_gaussian_log_likelihood": (0, 0, 0)}


def element(op, a, b, v, w, extra, c):
    """The element function of ``op`` on the operand values a, b, v (and w for normal_kl) and
    ``extra`` (half_bin for the discretized likelihood)."""


@overload(element, inline="always", jit_options=KERNEL)
def _element(op, a, b, v, w, extra, c):
    if op.count == len(OPS["normal_kl"]):
        return lambda op, a, b, v, w, extra, c: _normal_kl(a, b, v, w, c)
    if op.count == len(OPS["normal_logpdf"]):
        return lambda op, a, b, v, w, extra, c: _normal_logpdf(a, b, v, c)
    return lambda op, a, b, v, w, extra, c: _discretized(a, b, v, extra, c)


@numba.njit(parallel=True, **KERNEL)
def _rows(op, a, b, v, w, extra, values, partials, rows, width, chunks_per_row, rows_per_item):
    """values[r, start:stop] = element(op, ...) for each work item; or, when reducing (partials
    not empty), one float64 partial sum per (row, chunk) of those values."""
    reducing = partials.size > 0
    for item in numba.prange(-(-rows // rows_per_item) * chunks_per_row):
        prefer_wide_vectors()
        c = constants_like(values)
        first, last, chunk, start, stop = _item(item, rows, width, chunks_per_row, rows_per_item)
        buffer = np.empty(stop - start if reducing else 0, values.dtype)
        for r in range(first, last):
            sa = segment(a, r, start, stop)
            sb = segment(b, r, start, stop)
            sv = segment(v, r, start, stop)
            sw = segment(w, r, start, stop)
            target = buffer if reducing else values[r, start:stop]
            for j in range(target.size):
                target[j] = element(op, at(sa, j), at(sb, j), at(sv, j), at(sw, j), extra, c)
            if reducing:
                partials[r * chunks_per_row + chunk] = _chunk_sum(target)


# --- host side ------------------------------------------------------------------------


def operand(a, shape, rows, width, dtype):
    """An argument as the kernels see it (see the module docstring), in ``dtype``.

    Views where the layout allows (a copy only to change the dtype, to merge axes that
    do not merge, or for a broadcast of another form).
    """
    a = unbroadcast(np.asarray(a))
    kind, lead = _checks.broadcast_kind(a.shape, shape)
    if kind == "row":  # one value per row, or one for all
        return np.ascontiguousarray(a.reshape(lead), dtype=dtype)
    if kind == "full":
        return np.ascontiguousarray(a.reshape(lead, width), dtype=dtype)
    return np.ascontiguousarray(np.broadcast_to(a, shape).reshape(rows, width), dtype=dtype)


def _elementwise_operands(arrays, shape, rows, width, dtype):
    """(operands, rows, width) of an elementwise pass: when every argument is a full tensor or a
    single value, all are seen as one long row, so narrow rows (B, 3) cost no more."""
    if rows > 1 and _checks.one_row([np.shape(a) for a in arrays], shape):
        arrays = [np.reshape(a, (1, -1) if np.size(a) > 1 else (1,)) if np.ndim(a) else a for a in arrays]
        rows, width, shape = 1, rows * width, (1, rows * width)
    return [operand(a, shape, rows, width, dtype) for a in arrays], rows, width


def _plan(rows, width):
    chunks_per_row = -(-width // CHUNK)
    rows_per_item = max(1, CHUNK // width) if chunks_per_row == 1 else 1
    return chunks_per_row, rows_per_item


def nothing_to_compute(out, rows, width, reduce):
    """True when the shape leaves nothing to compute (no rows, or rows of width 0), with ``out``
    then complete: a reduction over no elements is 0 ("sum") or NaN ("mean"), as in NumPy."""
    if rows and width:
        return False
    if rows and reduce is not None:
        out[...] = 0.0 if reduce == "sum" else np.nan
    return True


def _run(op, arrays, extra, shape, reduce, out):
    """Normalize the operands, run op's kernel once, reduce or write into ``out``. An op with
    three operands passes a zero for the fourth, and ``extra`` is a zero where it has none:
    the kernel reads neither, so they cost nothing."""
    dtype = out.dtype
    rows = shape[0] if len(shape) else 1
    width = _checks.size(shape[1:])
    if nothing_to_compute(out, rows, width, reduce):
        return
    if reduce is None:
        operands, rows, width = _elementwise_operands(arrays, shape, rows, width, dtype)
    else:
        operands = [operand(a, shape, rows, width, dtype) for a in arrays]
    operands += [dtype.type(0)] * (4 - len(arrays))
    chunks_per_row, rows_per_item = _plan(rows, width)
    if reduce is None:
        values = out.reshape(rows, width) if out.flags.c_contiguous else np.empty((rows, width), dtype)
        partials = np.empty(0)
        launch(_rows, OPS[op], *operands, extra, values, partials, rows, width, chunks_per_row, rows_per_item)
        if not np.may_share_memory(values, out):
            out[...] = values.reshape(out.shape)
        return
    partials = np.empty(rows * chunks_per_row)
    launch(_rows, OPS[op], *operands, extra, np.empty((1, 1), dtype), partials, rows, width, chunks_per_row, rows_per_item)
    sums = out if out.flags.c_contiguous else np.empty(rows, dtype)
    launch(_combine, partials, chunks_per_row, width, MODES[reduce], sums)
    if sums is not out:
        out[...] = sums


def normal_kl(mean1, logvar1, mean2, logvar2, *, shape, reduce, out):
    _run("normal_kl", (mean1, logvar1, mean2, logvar2), out.dtype.type(0), shape, reduce, out)


def normal_logpdf(x, mean, logvar, *, shape, reduce, out):
    _run("normal_logpdf", (x, mean, logvar), out.dtype.type(0), shape, reduce, out)


def discretized_gaussian_log_likelihood(x, means, log_scales, *, bins, shape, reduce, out):
    _run("discretized_gaussian_log_likelihood", (x, means, log_scales), out.dtype.type(1.0 / bins), shape, reduce, out)


# --- Gaussian algebra ---
# normal_product: three outputs per element, the same layout, work items and operand kinds
# as _rows (elementwise only).

_normal_product = _d.normal_product


@numba.njit(parallel=True, **KERNEL)
def _product_rows(a, b, v, w, means, logvars, log_scales, rows, width, chunks_per_row, rows_per_item):
    for item in numba.prange(-(-rows // rows_per_item) * chunks_per_row):
        prefer_wide_vectors()
        c = constants_like(means)
        first, last, chunk, start, stop = _item(item, rows, width, chunks_per_row, rows_per_item)
        for r in range(first, last):
            sa = segment(a, r, start, stop)
            sb = segment(b, r, start, stop)
            sv = segment(v, r, start, stop)
            sw = segment(w, r, start, stop)
            mean_row, logvar_row, log_scale_row = means[r, start:stop], logvars[r, start:stop], log_scales[r, start:stop]
            for j in range(stop - start):
                mean_row[j], logvar_row[j], log_scale_row[j] = _normal_product(at(sa, j), at(sb, j), at(sv, j), at(sw, j), c)


def normal_product(mean1, logvar1, mean2, logvar2, *, shape, mean_out, logvar_out, log_scale_out):
    dtype = mean_out.dtype
    rows = shape[0] if len(shape) else 1
    width = _checks.size(shape[1:])
    if rows == 0 or width == 0:
        return
    operands, rows, width = _elementwise_operands((mean1, logvar1, mean2, logvar2), shape, rows, width, dtype)
    outs = (mean_out, logvar_out, log_scale_out)
    targets = [out.reshape(rows, width) if out.flags.c_contiguous else np.empty((rows, width), dtype) for out in outs]
    chunks_per_row, rows_per_item = _plan(rows, width)
    launch(_product_rows, *operands, *targets, rows, width, chunks_per_row, rows_per_item)
    for out, target in zip(outs, targets):
        if not np.may_share_memory(out, target):
            out[...] = target.reshape(out.shape)


# --- backward (VJP) kernel ------------------------------------------------------------------
# One pass reads the operands and the cotangent and writes every wanted gradient. Each
# gradient has a mode: DIRECT (a full argument: written elementwise into its (rows, width)
# destination, the gradient itself or, for broadcasts of other forms, a float64 temporary
# summed afterwards), ROW_SUM (one value per row or one for all: each work item sums its
# values in float64 by _chunk_sum into one partial per (row, chunk), added by _combine as the
# forward's reductions are) or ABSENT. The partial derivatives are evaluated in float64
# (fastgauss._device.kl's *_vjp with F64 constants) into a cache-resident buffer per
# gradient, then copied or summed, so the hot loop has no branches.

ABSENT, DIRECT, ROW_SUM = 0, 1, 2


def element_vjp(op, a, b, v, w, extra, c):
    """The four partial derivatives of ``op`` at one element (0 for an operand it lacks)."""


@overload(element_vjp, inline="always", jit_options=KERNEL)
def _element_vjp(op, a, b, v, w, extra, c):
    if op.count == len(OPS["normal_kl"]):
        return lambda op, a, b, v, w, extra, c: _normal_kl_vjp(a, b, v, w, c)
    if op.count == len(OPS["normal_logpdf"]):
        return lambda op, a, b, v, w, extra, c: _normal_logpdf_vjp(a, b, v, c)
    return lambda op, a, b, v, w, extra, c: _discretized_vjp(a, b, v, extra, c)


@numba.njit(**KERNEL)
def _settle(mode, buffer, dest, r, start, stop, partials, index):
    """Move one gradient's buffered values: into dest[r, start:stop], or summed into partials[index]."""
    if mode == DIRECT:
        row = dest[r, start:stop]
        for j in range(row.size):
            row[j] = buffer[j]
    elif mode == ROW_SUM:
        partials[index] = _chunk_sum(buffer)


@numba.njit(parallel=True, **KERNEL)
def _rows_vjp(op, a, b, v, w, extra, g, scale, modes, dest_a, dest_b, dest_v, dest_w, partials, rows, width,
              chunks_per_row, rows_per_item):
    """For each work item, the partial derivatives times the cotangent (g: a 2-D (rows, width) or
    1-D per-row operand, times ``scale``) of the four operands, settled by ``modes``; the ROW_SUM
    partials of operand k are partials[k, r * chunks_per_row + chunk]."""
    for item in numba.prange(-(-rows // rows_per_item) * chunks_per_row):
        prefer_wide_vectors()
        first, last, chunk, start, stop = _item(item, rows, width, chunks_per_row, rows_per_item)
        n = stop - start
        c = _F64
        buffers = np.empty((4, n))
        ba, bb, bv, bw = buffers[0], buffers[1], buffers[2], buffers[3]
        for r in range(first, last):
            sa = segment(a, r, start, stop)
            sb = segment(b, r, start, stop)
            sv = segment(v, r, start, stop)
            sw = segment(w, r, start, stop)
            sg = segment(g, r, start, stop)
            for j in range(n):
                gj = np.float64(at(sg, j)) * scale
                da, db, dv, dw = element_vjp(
                    op, np.float64(at(sa, j)), np.float64(at(sb, j)), np.float64(at(sv, j)), np.float64(at(sw, j)), extra, c
                )
                ba[j] = da * gj
                bb[j] = db * gj
                bv[j] = dv * gj
                bw[j] = dw * gj
            index = r * chunks_per_row + chunk
            _settle(modes[0], ba, dest_a, r, start, stop, partials[0], index)
            _settle(modes[1], bb, dest_b, r, start, stop, partials[1], index)
            _settle(modes[2], bv, dest_v, r, start, stop, partials[2], index)
            _settle(modes[3], bw, dest_w, r, start, stop, partials[3], index)


def _gradient_plan(a, grad, shape, rows, width, dtype):
    """(mode, destination) of one argument's gradient, see the kernel's comment."""
    if grad is None:
        return ABSENT, np.empty((1, 1), dtype)
    kind, lead = _checks.broadcast_kind(np.shape(a), shape)
    if kind == "full" and lead == rows:
        return DIRECT, grad.reshape(rows, width)  # a fresh C-contiguous gradient: a view
    if kind == "row":
        return ROW_SUM, np.empty((1, 1), dtype)
    return DIRECT, np.empty((rows, width))  # float64, summed over the broadcast axes afterwards


def _run_vjp(op, cotangent, arrays, grads, extra, shape, reduce):
    """Gradients of ``op`` (arguments ``arrays``) into ``grads`` (arrays of the arguments' own
    shapes, or None) from the cotangent of the forward's result, in one pass."""
    wanted = [grad for grad in grads if grad is not None]
    if not wanted:
        return
    dtype = wanted[0].dtype
    rows = shape[0] if len(shape) else 1
    width = _checks.size(shape[1:])
    if rows * width == 0:
        for grad in wanted:
            grad[...] = 0.0
        return
    operands = [operand(a, shape, rows, width, dtype) for a in arrays] + [dtype.type(0)] * (4 - len(arrays))
    if reduce is None:
        g = operand(cotangent, shape, rows, width, dtype)
        scale = 1.0
    else:
        g = np.ascontiguousarray(cotangent, dtype).reshape(rows)
        scale = 1.0 / width if reduce == "mean" else 1.0
    chunks_per_row, rows_per_item = _plan(rows, width)
    plans = [_gradient_plan(a, grad, shape, rows, width, dtype) for a, grad in zip(arrays, grads)]
    plans += [(ABSENT, np.empty((1, 1), dtype))] * (4 - len(plans))
    modes = np.array([mode for mode, _ in plans], np.int64)
    partials = np.empty((4, rows * chunks_per_row if (modes == ROW_SUM).any() else 0))
    launch(
        _rows_vjp, OPS[op], *operands, np.float64(extra), g, scale, modes, *(dest for _, dest in plans), partials,
        rows, width, chunks_per_row, rows_per_item,
    )
    for k, (a, grad) in enumerate(zip(arrays, grads)):
        mode, dest = plans[k]
        if grad is None or (mode == DIRECT and np.may_share_memory(dest, grad)):
            continue
        if mode == ROW_SUM:
            sums = np.empty(rows)
            launch(_combine, partials[k], chunks_per_row, width, 1, sums)
            grad[...] = (sums if grad.size == rows else sums.sum()).reshape(grad.shape)
        else:
            grad[...] = _sum_to(dest.reshape(shape), grad.shape)


def _sum_to(values, target_shape):
    """``values`` (float64) summed over the axes along which an argument of ``target_shape`` broadcast."""
    lead = values.ndim - len(target_shape)
    axes = tuple(range(lead)) + tuple(lead + k for k, n in enumerate(target_shape) if n == 1 and values.shape[lead + k] != 1)
    return values.sum(axis=axes).reshape(target_shape)


def normal_kl_vjp(cotangent, mean1, logvar1, mean2, logvar2, *, shape, reduce, grad_mean1, grad_logvar1, grad_mean2, grad_logvar2):
    _run_vjp(
        "normal_kl", cotangent, (mean1, logvar1, mean2, logvar2), (grad_mean1, grad_logvar1, grad_mean2, grad_logvar2), 0.0,
        shape, reduce,
    )


def normal_logpdf_vjp(cotangent, x, mean, logvar, *, shape, reduce, grad_x, grad_mean, grad_logvar):
    _run_vjp("normal_logpdf", cotangent, (x, mean, logvar), (grad_x, grad_mean, grad_logvar), 0.0, shape, reduce)


def discretized_gaussian_log_likelihood_vjp(cotangent, x, means, log_scales, *, bins, shape, reduce, grad_x, grad_means, grad_log_scales):
    _run_vjp(
        "discretized_gaussian_log_likelihood", cotangent, (x, means, log_scales), (grad_x, grad_means, grad_log_scales),
        1.0 / bins, shape, reduce,
    )
