"""The multivariate-normal plan both compiled backends share: batch geometry and the
failure protocol of the batched factorizations.

Failure protocol. A factorization kernel writes one status code per matrix: 0 factored,
k > 0 the order of its first leading minor that is not positive definite, -1 factored
but not symmetric within ``tol`` (``tol < 0``: not checked). ``summarize`` turns the
codes into a summary (first failing flat index, its minor order, first asymmetric flat
index), -1 for none; backend functions return {argument name: summary} for the
arguments they factored, and the public functions raise from it.
"""

import numpy as np

NO_FAILURE = (-1, 0, -1)  # (first failing flat index, its minor order, first asymmetric flat index)


def summarize(status):
    """(first flat index with status > 0, its status, first flat index with status < 0), -1 for none.

    ``status`` holds one code per matrix: 0 factored, k > 0 the order of the failing leading
    minor, -1 factored but not symmetric within tol.
    """
    flat = np.asarray(status).reshape(-1)
    if not flat.any():
        return NO_FAILURE
    failed = np.flatnonzero(flat > 0)
    asymmetric = np.flatnonzero(flat < 0)
    first = int(failed[0]) if failed.size else -1
    return first, int(flat[first]) if failed.size else 0, int(asymmetric[0]) if asymmetric.size else -1


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
