"""Small-matrix Gaussian algebra, as scalar functions both targets compile.

Every function works on one matrix (or one vector) of a batch, addressed as
``array[index, i, j]`` so the same source serves a work buffer (a per-thread local
array on the GPU, a per-chunk buffer on the CPU, index 0) and a batched array in
memory (index = batch index). Arithmetic is float64 whatever the storage dtype:
float32 inputs are widened on load and the results rounded once on store.

The factorization is Cholesky-Banachiewicz, row by row:

    L_ij = (a_ij - sum_{k<j} L_ik L_jk) / L_jj    (j < i)
    L_ii = sqrt(a_ii - sum_{k<i} L_ik^2)

It reads only the lower triangle of ``a`` (the upper one when ``upper``), like
LAPACK's potrf, and stops at the first pivot that is not > 0 (NaN included): the
order of that leading minor is returned, 0 on success.
"""

import math

import numpy as np

NOT_SYMMETRIC = -1  # status of a matrix that factored but failed the symmetry check


def operand_index(b, shape, strides, nd):
    """Flat index into an operand's batch for flat output batch index ``b``.

    ``shape`` (nd,) is the output batch shape, ``strides`` (nd,) the operand's
    flat strides over it (0 on axes it broadcasts along).
    """
    index = 0
    for k in range(nd - 1, 0, -1):
        q = b // shape[k]
        index += (b - q * shape[k]) * strides[k]
        b = q
    return index + b * strides[0]


def factor(a, c, upper, tol, L, l, d):
    """Cholesky factor of a[c] into the lower triangle of L[l] (float64); the strict upper
    triangle of L[l] is left as it was.

    Returns 0; or the order (1-based) of the first leading minor that is not positive
    definite; or NOT_SYMMETRIC when tol >= 0 and a[c] is not close to its transpose,
    ``numpy.allclose(a, a.T, rtol=tol, atol=tol)`` false, after a successful factorization.
    """
    symmetric = True
    for i in range(d):
        for j in range(i + 1):
            if upper:
                s = np.float64(a[c, j, i])
            else:
                s = np.float64(a[c, i, j])
            if tol >= 0.0 and j < i:
                mirror = np.float64(a[c, i, j]) if upper else np.float64(a[c, j, i])
                # both orders of allclose: |x - y| <= tol + tol |y| and <= tol + tol |x|
                if not abs(s - mirror) <= tol + tol * min(abs(s), abs(mirror)):
                    symmetric = False
            for k in range(j):
                s -= L[l, i, k] * L[l, j, k]
            if j < i:
                L[l, i, j] = s / L[l, j, j]
            elif s > 0.0:
                L[l, i, i] = math.sqrt(s)
            else:
                return i + 1
    return 0 if symmetric else NOT_SYMMETRIC


def load_tril(src, c, L, l, d):
    """L[l] = the lower triangle of src[c], in float64 (the strict upper triangle untouched)."""
    for i in range(d):
        for j in range(i + 1):
            L[l, i, j] = np.float64(src[c, i, j])


def store(L, l, d, upper, out, c):
    """out[c] = L[l] with zeros above the diagonal (transposed when upper), rounded to out's dtype."""
    for i in range(d):
        for j in range(d):
            value = L[l, i, j] if j <= i else 0.0
            if upper:
                out[c, j, i] = value
            else:
                out[c, i, j] = value


def tril_apply(L, l, d, mean, m, eps, e0, out, o0):
    """out[o0 + i] = mean[m, i] + sum_{j <= i} L[l, i, j] eps[e0 + j] for i < d.

    Rows run from the last to the first, so ``out`` may be ``eps`` itself (row i reads
    eps[e0 + j] for j <= i only, and rows above it are written later).
    """
    for r in range(d):
        i = d - 1 - r
        acc = 0.0
        for j in range(i + 1):
            acc += np.float64(L[l, i, j]) * np.float64(eps[e0 + j])
        out[o0 + i] = np.float64(mean[m, i]) + acc


def whiten(L, l, d, x, xi, mean, m, z, zl):
    """Solve L[l] z = x[xi] - mean[m] by forward substitution into z[zl] (float64).

    Returns (|z|^2, sum_i log L_ii): the squared Mahalanobis distance and half the
    log-determinant of the covariance L L^T.
    """
    squared = 0.0
    half_logdet = 0.0
    for i in range(d):
        s = np.float64(x[xi, i]) - np.float64(mean[m, i])
        for j in range(i):
            s -= np.float64(L[l, i, j]) * z[zl, j]
        diagonal = np.float64(L[l, i, i])
        zi = s / diagonal
        z[zl, i] = zi
        squared += zi * zi
        half_logdet += math.log(diagonal)
    return squared, half_logdet


def kl(L1, l1, L2, l2, d, mean1, m1, mean2, m2, z, zl):
    """KL(N(mean1, L1 L1^T) || N(mean2, L2 L2^T)) through triangular solves with L2.

    0.5 (|L2^-1 L1|_F^2 + |L2^-1 (mean2 - mean1)|^2 - d) + sum_i (log L2_ii - log L1_ii).
    Column j of L2^-1 L1 is the forward substitution of column j of L1, which is zero
    above row j, so its first j entries are zero and the solve starts at row j.
    """
    trace = 0.0
    for j in range(d):
        for i in range(j, d):
            s = np.float64(L1[l1, i, j])
            for k in range(j, i):
                s -= np.float64(L2[l2, i, k]) * z[zl, k]
            zi = s / np.float64(L2[l2, i, i])
            z[zl, i] = zi
            trace += zi * zi
    squared = 0.0
    log_ratio = 0.0
    for i in range(d):
        s = np.float64(mean2[m2, i]) - np.float64(mean1[m1, i])
        for k in range(i):
            s -= np.float64(L2[l2, i, k]) * z[zl, k]
        zi = s / np.float64(L2[l2, i, i])
        z[zl, i] = zi
        squared += zi * zi
        log_ratio += math.log(np.float64(L2[l2, i, i])) - math.log(np.float64(L1[l1, i, i]))
    return 0.5 * (trace + squared - d) + log_ratio


# --- gradients ---------------------------------------------------------------------------
# The backward passes (formulas in fastgauss.reference.mvn). Work matrices G hold a factor's
# gradient in their lower triangle, float64; ``tril_vjp`` turns it into the covariance's.


def preimage(c, j, shape, kept, nd):
    """Flat index (C order over ``shape``) of the j-th element that operand element c broadcasts to.

    ``kept[k]`` is 1 on the axes the operand has (c's coordinates, C order over them) and 0
    on the axes it is broadcast along (j's coordinates, C order over them).
    """
    n = 0
    step = 1
    for r in range(nd):
        k = nd - 1 - r
        size = shape[k]
        if kept[k]:
            q = c // size
            n += (c - q * size) * step
            c = q
        else:
            q = j // size
            n += (j - q * size) * step
            j = q
        step *= size
    return n


def clear_tril(G, g, d):
    for i in range(d):
        for j in range(i + 1):
            G[g, i, j] = 0.0


def add_tril(G, g, d, src, s, transpose):
    """G[g] += the lower triangle of src[s] (of src[s]^T when ``transpose``), in float64."""
    for i in range(d):
        for j in range(i + 1):
            if transpose:
                G[g, i, j] += np.float64(src[s, j, i])
            else:
                G[g, i, j] += np.float64(src[s, i, j])


def outer_tril(G, g, d, a, a0, b, b0):
    """G[g] += tril(a[a0:a0 + d] b[b0:b0 + d]^T), float64."""
    for i in range(d):
        ai = np.float64(a[a0 + i])
        for j in range(i + 1):
            G[g, i, j] += ai * np.float64(b[b0 + j])


def tril_t_apply(L, l, d, x, x0, out, o0):
    """out[o0 + i] = sum_{k >= i} L[l, k, i] x[x0 + k]: L^T x."""
    for i in range(d):
        acc = 0.0
        for k in range(i, d):
            acc += np.float64(L[l, k, i]) * np.float64(x[x0 + k])
        out[o0 + i] = acc


def solve_lower_t(L, l, d, z, zl, u, ul):
    """Solve L[l]^T u = z[zl] by back substitution into u[ul] (float64); u may be z."""
    for r in range(d):
        i = d - 1 - r
        s = z[zl, i]
        for k in range(i + 1, d):
            s -= np.float64(L[l, k, i]) * u[ul, k]
        u[ul, i] = s / np.float64(L[l, i, i])


def tril_vjp(L, l, G, g, d):
    """Cholesky's reverse pass in place (Murray 2016, unblocked): G[g] holds the lower-triangular
    gradient of the factor L[l] on entry and Abar on exit, a lower triangle whose symmetric
    part (Abar + Abar^T) / 2 is the covariance's gradient (``store_symmetric`` writes it)."""
    for r in range(d):
        j = d - 1 - r
        pivot = np.float64(L[l, j, j])
        s = 0.0
        for i in range(j + 1, d):
            s += np.float64(L[l, i, j]) * G[g, i, j]
        G[g, j, j] -= s / pivot
        for i in range(j, d):
            G[g, i, j] /= pivot
        for k in range(j):
            acc = 0.0
            for i in range(j, d):
                acc += G[g, i, j] * np.float64(L[l, i, k])
            G[g, j, k] -= acc
        for i in range(j + 1, d):
            gij = G[g, i, j]
            for k in range(j):
                G[g, i, k] -= gij * np.float64(L[l, j, k])
        G[g, j, j] *= 0.5


def store_symmetric(G, g, d, out, c):
    """out[c] = (G[g] + G[g]^T) / 2 for a lower-triangular G[g], rounded to out's dtype."""
    for i in range(d):
        for j in range(i):
            half = 0.5 * G[g, i, j]
            out[c, i, j] = half
            out[c, j, i] = half
        out[c, i, i] = G[g, i, i]


def logpdf_vjp(L, l, d, x, xi, mean, m, weight, z, zl, G, g):
    """The gradient of weight * logpdf for one point: z[zl] = u = Sigma^-1 (x - mean) (d/dmean is
    weight u, d/dx its negative) and G[g] = weight (tril(u z^T) - diag(1 / L_ii)), the factor's."""
    whiten(L, l, d, x, xi, mean, m, z, zl)
    for i in range(d):
        for j in range(i + 1):
            G[g, i, j] = z[zl, j]  # keep z in G's lower triangle while u overwrites it
    solve_lower_t(L, l, d, z, zl, z, zl)
    for i in range(d):
        ui = weight * z[zl, i]
        for j in range(i):
            G[g, i, j] = ui * G[g, i, j]
        G[g, i, i] = ui * G[g, i, i] - weight / np.float64(L[l, i, i])
        z[zl, i] = ui


def kl_vjp(L1, l1, L2, l2, d, mean1, m1, mean2, m2, weight, M, mm, A, aa, w, wl, G2, g2):
    """The gradient of weight * KL for one pair, with M = L2^-1 L1, A = L2^-T M, w = L2^-1 (mean2 - mean1),
    v = L2^-T w: w[wl] = weight v (d/dmean2; d/dmean1 is its negative), A[aa] = weight (tril(A) -
    diag(1 / L1_ii)) (L1's gradient) and G2[g2] = weight (diag(1 / L2_ii) - tril(A M^T) - tril(v w^T))
    (L2's). M[mm] is work space."""
    for j in range(d):  # M = L2^-1 L1, column by column (zero above the diagonal)
        for i in range(j):
            M[mm, i, j] = 0.0
        for i in range(j, d):
            s = np.float64(L1[l1, i, j])
            for k in range(j, i):
                s -= np.float64(L2[l2, i, k]) * M[mm, k, j]
            M[mm, i, j] = s / np.float64(L2[l2, i, i])
    for j in range(d):  # A = L2^-T M, column by column
        for r in range(d):
            i = d - 1 - r
            s = M[mm, i, j]
            for k in range(i + 1, d):
                s -= np.float64(L2[l2, k, i]) * A[aa, k, j]
            A[aa, i, j] = s / np.float64(L2[l2, i, i])
    for i in range(d):  # w = L2^-1 (mean2 - mean1)
        s = np.float64(mean2[m2, i]) - np.float64(mean1[m1, i])
        for k in range(i):
            s -= np.float64(L2[l2, i, k]) * w[wl, k]
        w[wl, i] = s / np.float64(L2[l2, i, i])
    for i in range(d):  # G2 = -tril(A M^T) - tril(v w^T) + diag(1 / L2_ii), v = L2^-T w filled below
        for j in range(i + 1):
            acc = 0.0
            for k in range(j + 1):  # M[j, k] = 0 for k > j
                acc += A[aa, i, k] * M[mm, j, k]
            G2[g2, i, j] = -weight * acc
    for i in range(d):  # keep w in M's first row (M is no longer needed) while v overwrites it
        M[mm, 0, i] = w[wl, i]
    solve_lower_t(L2, l2, d, w, wl, w, wl)  # w <- v
    for i in range(d):
        vi = weight * w[wl, i]
        for j in range(i):
            G2[g2, i, j] -= vi * M[mm, 0, j]
        G2[g2, i, i] += weight / np.float64(L2[l2, i, i]) - vi * M[mm, 0, i]
        w[wl, i] = vi
    for i in range(d):
        for j in range(i):
            A[aa, i, j] = weight * A[aa, i, j]
        A[aa, i, i] = weight * (A[aa, i, i] - 1.0 / np.float64(L1[l1, i, i]))


def store_matrix_grad(L, l, G, g, d, reverse, out, c):
    """out[c] = the covariance gradient from the factor gradient G[g] (reversed through Cholesky with
    the factor L[l], symmetric) when ``reverse``, else G[g] itself (lower, zeros above)."""
    if reverse:
        tril_vjp(L, l, G, g, d)
        store_symmetric(G, g, d, out, c)
    else:
        store(G, g, d, False, out, c)


def store_opposite(v, vl, d, want_minus, minus, want_plus, plus, b):
    """minus[b] = -v[vl] and plus[b] = v[vl] (each when wanted): the gradients of the two sides of a difference."""
    for i in range(d):
        if want_minus:
            minus[b, i] = -v[vl, i]
        if want_plus:
            plus[b, i] = v[vl, i]
