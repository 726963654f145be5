"""The multivariate-normal plan both compiled backends share: the failure protocol of the
batched factorizations, the fuse-or-factor-first decision, and batch geometry.

Failure protocol. A factorization kernel writes one status code per matrix: 0 factored,
k > 0 the order of its first leading minor that is not positive definite, -1 factored
but not symmetric within ``tol`` (``tol = NO_CHECK``: not checked). ``summarize`` turns
the codes into one ``Failure``; backend functions return {argument name: Failure} for
the arguments they factored (an argument missing from it did not fail), and the public
functions raise from it.

Fuse or factor first. A covariance that serves exactly one output is factored in the
kernel pass that uses it (fused: one pass, the factor never leaves registers or the
chunk buffer) when the target can (``Target.fuses(d)``); otherwise every covariance is
factored first, once, by the target's ``factor_batch``, and the kernel reads the factors.
"""

from typing import Callable, NamedTuple

import numpy as np

NO_CHECK = -1.0  # tol: symmetry not checked


class Failure(NamedTuple):
    """What a batch of factorizations reports: flat batch indices in C order, -1 for none."""

    failed: int  # the first matrix that is not positive definite (or holds NaN)
    order: int  # the order of its first leading minor that is not positive definite (0 if none failed)
    asymmetric: int  # the first matrix factored but not symmetric within tol


NO_FAILURE = Failure(-1, 0, -1)


def summarize(status):
    """The Failure of one status code per matrix (a host array)."""
    flat = np.asarray(status).reshape(-1)
    if not flat.any():
        return NO_FAILURE
    failed = np.flatnonzero(flat > 0)
    asymmetric = np.flatnonzero(flat < 0)
    first = int(failed[0]) if failed.size else -1
    return Failure(first, int(flat[first]) if failed.size else 0, int(asymmetric[0]) if asymmetric.size else -1)


def any_failed(status):
    """True when some argument of a backend's {name: Failure} failed to factor."""
    return any(failure.failed >= 0 for failure in status.values())


class Target(NamedTuple):
    """What the plan needs from a compiled backend."""

    fuses: Callable  # fuses(d): whether the fused kernels factor matrices of order d
    factor_batch: Callable  # factor_batch(mat, tol=...) -> (float64 factors, Failure), in the target's memory
    summarize: Callable  # summarize(codes) -> Failure, for codes in the target's memory


class Factors(NamedTuple):
    """The matrices each operand's kernel reads, and whether it factors them itself."""

    mats: list  # per operand: covariances (fused) or lower factors
    fused: list  # per operand: True when the kernel factors them in its pass
    status: dict  # {name: Failure} of the operands factored first
    done: bool  # nothing left to launch: a factorization failed, or there are no outputs


def factor_first(target, operands, count, tol=NO_CHECK):
    """The fuse decision and the factor-first pass, for ``count`` outputs.

    operands: [(name, mat, covariance)]: mat a (matrices, d, d) array in the target's
    memory, covariance False when mat already holds lower factors (never factored).
    """
    mats, fused, status = [], [], {}
    for name, mat, covariance in operands:
        fuse = covariance and mat.shape[0] == count and target.fuses(mat.shape[2])  # shape[2]: simulator shapes take no negative index
        if covariance and not fuse:
            mat, status[name] = target.factor_batch(mat, tol=tol)
        mats.append(mat)
        fused.append(fuse)
    return Factors(mats, fused, status, any_failed(status) or count == 0)


def record_fused(target, factors, names, codes):
    """Add the Failures of the fused operands (their per-matrix codes) to factors.status."""
    for name, fuse, code in zip(names, factors.fused, codes):
        if fuse:
            factors.status[name] = target.summarize(code)
    return factors.status


def geometry(batch, *operand_batches):
    """How each operand's batch maps onto the output batch, for kernels.

    Returns (shape, strides...): int64 arrays over the output batch's axes (size-1 axes
    dropped, mergeable neighbours merged, at least one axis), where an operand's strides
    are those of its own flat (C-order) batch index, 0 along broadcast axes. The flat
    index of output batch element b in an operand is then ``operand_index(b, ...)`` of
    fastgauss._device.mvn: for the common cases (equal batches, or one unbatched
    operand) a single axis, with stride 1 or 0.
    """
    nd = len(batch)
    per_operand = []
    for operand in operand_batches:
        operand = (1,) * (nd - len(operand)) + tuple(operand)
        strides, step = [], 1
        for n, full in zip(reversed(operand), reversed(batch)):
            strides.append(step if n == full and n != 1 else 0)
            step *= n
        per_operand.append(strides[::-1])
    shape, merged = [], [[] for _ in per_operand]
    for k in range(nd):
        if batch[k] == 1:
            continue
        if shape and all(m[-1] == s[k] * batch[k] for m, s in zip(merged, per_operand)):
            shape[-1] *= batch[k]
            for m, s in zip(merged, per_operand):
                m[-1] = s[k]
        else:
            shape.append(batch[k])
            for m, s in zip(merged, per_operand):
                m.append(s[k])
    if not shape:
        shape, merged = [1], [[0] for _ in per_operand]
    return (np.array(shape, np.int64),) + tuple(np.array(m, np.int64) for m in merged)


# --- gradients ---------------------------------------------------------------------------
# A gradient of a broadcast argument sums, for each of its elements, the values of the
# elements it was broadcast to. The kernels walk that preimage in a fixed order (the
# ``preimage`` function of fastgauss._device.mvn), split into a number of segments that
# depends on the shapes alone (so the sums are the same bits for any thread count), and the
# segments' partial sums are added in segment order.

SEGMENT = 4096  # preimage elements per segment at least (a segment is one work item)
MAX_SEGMENTS = 64


def broadcast_geometry(full, operand):
    """How an operand (shape ``operand``) broadcasts to ``full``, for ``preimage``: (shape, kept,
    elements, per_element). shape and kept are int64 arrays over full's axes (size-1 axes dropped,
    neighbours with the same role merged, at least one axis); kept is 1 where the operand has the
    axis, 0 where it is broadcast along it; elements = the operand's size, per_element = the size
    of each element's preimage."""
    padded = (1,) * (len(full) - len(operand)) + tuple(operand)
    shape, kept = [], []
    for n, m in zip(full, padded):
        if n == 1:
            continue
        role = int(m == n)
        if kept and kept[-1] == role:
            shape[-1] *= n
        else:
            shape.append(n)
            kept.append(role)
    if not shape:
        shape, kept = [1], [1]
    elements = int(np.prod([n for n, k in zip(shape, kept) if k]))
    per_element = int(np.prod([n for n, k in zip(shape, kept) if not k]))
    return np.array(shape, np.int64), np.array(kept, np.int64), elements, per_element


def segments(per_element):
    """Segments an element's preimage of ``per_element`` values is summed in (a function of the shape)."""
    return max(1, min(MAX_SEGMENTS, per_element // SEGMENT))
