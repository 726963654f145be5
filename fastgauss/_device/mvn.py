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
        inverse = 1.0 / np.float64(L[l, j, j])  # one division a column: the divider is the slow unit
        s = 0.0
        for i in range(j + 1, d):
            s += np.float64(L[l, i, j]) * G[g, i, j]
        G[g, j, j] -= s * inverse
        for i in range(j, d):
            G[g, i, j] *= inverse
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


# --- Gaussian algebra ---
# Work buffers are float64 matrices addressed [slot, i, j] (a vector is a column of one):
# the kernels load the blocks they need into them, factor in place and solve column-wise.


def sym(a, c, i, j):
    """Element (i, j) of the symmetric matrix that the lower triangle of a[c] defines (float64)."""
    if j > i:
        return np.float64(a[c, j, i])
    return np.float64(a[c, i, j])


def forward(L, l, n, B, w, cols):
    """B[w, :n, :cols] = L[l]^-1 B[w, :n, :cols] in place, by forward substitution (L lower, n x n)."""
    for i in range(n):
        diagonal = L[l, i, i]
        for c in range(cols):
            s = B[w, i, c]
            for k in range(i):
                s -= L[l, i, k] * B[w, k, c]
            B[w, i, c] = s / diagonal


def backward(L, l, n, B, w, cols):
    """B[w, :n, :cols] = L[l]^-T B[w, :n, :cols] in place, by back substitution with L^T."""
    for r in range(n):
        i = n - 1 - r
        diagonal = L[l, i, i]
        for c in range(cols):
            s = B[w, i, c]
            for k in range(i + 1, n):
                s -= L[l, k, i] * B[w, k, c]
            B[w, i, c] = s / diagonal


def half_logdet(L, l, n):
    """sum_i log L_ii: half the log-determinant of L L^T."""
    total = 0.0
    for i in range(n):
        total += math.log(L[l, i, i])
    return total


def column_dot(B, w, n, i, j):
    """sum_k B[w, k, i] B[w, k, j]: entry (i, j) of B^T B over the first n rows."""
    s = 0.0
    for k in range(n):
        s += B[w, k, i] * B[w, k, j]
    return s


def marginal(mean, m, cov, c, index, out_mean, out_cov, b):
    """The marginal over coordinates ``index``: mean[m, index] and cov[c][index, index] (lower triangle read)."""
    n = index.size
    for i in range(n):
        out_mean[b, i] = mean[m, index[i]]
        for j in range(i + 1):
            value = sym(cov, c, index[i], index[j])
            out_cov[b, i, j] = value
            out_cov[b, j, i] = value


def condition(mean, m, cov, c, value, v, index, other, work, w0, out_mean, out_cov, b):
    """The conditional of the coordinates ``other`` given x[index] = value[v]; returns the status
    of the Cholesky factorization of Sigma_22 (0, or the order of its failing leading minor).

    Slot w0 holds L (m x m, factored in place from Sigma_22), slot w0 + 1 holds
    [Sigma_21 | value - mu_2] (m x (r + 1)), then L^-1 of it: W = L^-1 Sigma_21 and
    z = L^-1 (value - mu_2). mean_1|2 = mu_1 + W^T z, Sigma_1|2 = Sigma_11 - W^T W.
    """
    nm = index.size
    r = other.size
    for i in range(nm):
        for j in range(i + 1):
            work[w0, i, j] = sym(cov, c, index[i], index[j])
        for j in range(r):
            work[w0 + 1, i, j] = sym(cov, c, index[i], other[j])
        work[w0 + 1, i, r] = np.float64(value[v, i]) - np.float64(mean[m, index[i]])
    code = factor(work, w0, False, -1.0, work, w0, nm)
    if code > 0:
        return code
    forward(work, w0, nm, work, w0 + 1, r + 1)
    for i in range(r):
        out_mean[b, i] = np.float64(mean[m, other[i]]) + column_dot(work, w0 + 1, nm, i, r)
        for j in range(i + 1):
            value_ij = sym(cov, c, other[i], other[j]) - column_dot(work, w0 + 1, nm, i, j)
            out_cov[b, i, j] = value_ij
            out_cov[b, j, i] = value_ij
    return 0


def affine(mean, m, cov, c, A, a, shift, s, d, k, work, w0, out_mean, out_cov, b):
    """N(A mean + shift, A cov A^T): slot w0 holds T = A Sigma (k x d); the covariance is
    computed on and below the diagonal, (T A^T)_ij, and mirrored."""
    for i in range(k):
        acc = np.float64(shift[s, i])
        for j in range(d):
            acc += np.float64(A[a, i, j]) * np.float64(mean[m, j])
        out_mean[b, i] = acc
        for l in range(d):
            t = 0.0
            for j in range(d):
                t += np.float64(A[a, i, j]) * sym(cov, c, j, l)
            work[w0, i, l] = t
    for i in range(k):
        for j in range(i + 1):
            t = 0.0
            for l in range(d):
                t += work[w0, i, l] * np.float64(A[a, j, l])
            out_cov[b, i, j] = t
            out_cov[b, j, i] = t


def product(mean1, m1, cov1, c1, mean2, m2, cov2, c2, d, log_2pi, work, w0, out_mean, out_cov, b):
    """The normalized product N(x; mean1, cov1) N(x; mean2, cov2) / Z and log Z; returns
    (status of the factorization of cov1 + cov2, log Z).

    Only S = cov1 + cov2 is factored (L L^T = S), never cov1 or cov2, so either may be
    singular or tiny. Slot w0 + 1 holds [cov1 | cov2 | mean2 - mean1] (d x (2d + 1)), then
    W1 = L^-1 cov1, W2 = L^-1 cov2, z = L^-1 (mean2 - mean1):
    mean = mean1 + W1^T z, cov = cov1 S^-1 cov2 = W1^T W2 symmetrized (a product of the two
    covariances, no difference of large terms), log Z = log N(mean1; mean2, S).
    """
    for i in range(d):
        for j in range(i + 1):
            work[w0, i, j] = sym(cov1, c1, i, j) + sym(cov2, c2, i, j)
        for j in range(d):
            work[w0 + 1, i, j] = sym(cov1, c1, i, j)
            work[w0 + 1, i, d + j] = sym(cov2, c2, i, j)
        work[w0 + 1, i, 2 * d] = np.float64(mean2[m2, i]) - np.float64(mean1[m1, i])
    code = factor(work, w0, False, -1.0, work, w0, d)
    if code > 0:
        return code, 0.0
    forward(work, w0, d, work, w0 + 1, 2 * d + 1)
    squared = column_dot(work, w0 + 1, d, 2 * d, 2 * d)
    for i in range(d):
        out_mean[b, i] = np.float64(mean1[m1, i]) + column_dot(work, w0 + 1, d, i, 2 * d)
        for j in range(i + 1):
            value = 0.5 * (column_dot(work, w0 + 1, d, i, d + j) + column_dot(work, w0 + 1, d, d + i, j))
            out_cov[b, i, j] = value
            out_cov[b, j, i] = value
    return 0, -0.5 * (d * log_2pi + squared) - half_logdet(work, w0, d)


def kalman(mean, m, cov, c, H, h, R, rr, y, yy, d, k, log_2pi, work, w0, out_mean, out_cov, b):
    """One Kalman measurement update in Joseph form; returns (status of the factorization of
    the innovation covariance S = H Sigma H^T + R, log N(y; H mean, S)).

    Slots (from w0): 0 Sigma (d x d), 1 P = [H Sigma | y - H mean] (k x (d + 1)), 2 L with
    L L^T = S (k x k, S's lower triangle then its factor in place), 3 A = I - K H (d x d),
    4 A Sigma (d x d), 5 R K^T (k x d). With W = L^-1 H Sigma and z = L^-1 (y - H mean):
    mean' = mean + W^T z; K^T = L^-T W; Sigma' = A Sigma A^T + K R K^T, a sum of two
    positive semi-definite terms, computed on and below the diagonal and mirrored.
    """
    sig, p, lk, am, asig, q = w0, w0 + 1, w0 + 2, w0 + 3, w0 + 4, w0 + 5
    for i in range(d):
        for j in range(d):
            work[sig, i, j] = sym(cov, c, i, j)
    for i in range(k):
        hm = 0.0
        for l in range(d):
            hm += np.float64(H[h, i, l]) * np.float64(mean[m, l])
            t = 0.0
            for j in range(d):
                t += np.float64(H[h, i, j]) * work[sig, j, l]
            work[p, i, l] = t
        work[p, i, d] = np.float64(y[yy, i]) - hm
    for i in range(k):
        for j in range(i + 1):
            t = sym(R, rr, i, j)
            for l in range(d):
                t += work[p, i, l] * np.float64(H[h, j, l])
            work[lk, i, j] = t
    code = factor(work, lk, False, -1.0, work, lk, k)
    if code > 0:
        return code, 0.0
    forward(work, lk, k, work, p, d + 1)
    squared = column_dot(work, p, k, d, d)
    for i in range(d):
        out_mean[b, i] = np.float64(mean[m, i]) + column_dot(work, p, k, i, d)
    backward(work, lk, k, work, p, d)  # P[:, :d] = K^T
    for i in range(d):
        for j in range(d):
            t = 1.0 if i == j else 0.0
            for a in range(k):
                t -= work[p, a, i] * np.float64(H[h, a, j])
            work[am, i, j] = t
    for i in range(d):
        for j in range(d):
            t = 0.0
            for l in range(d):
                t += work[am, i, l] * work[sig, l, j]
            work[asig, i, j] = t
    for a in range(k):
        for j in range(d):
            t = 0.0
            for e in range(k):
                t += sym(R, rr, a, e) * work[p, e, j]
            work[q, a, j] = t
    for i in range(d):
        for j in range(i + 1):
            t = 0.0
            for l in range(d):
                t += work[asig, i, l] * work[am, j, l]
            for a in range(k):
                t += work[p, a, i] * work[q, a, j]
            out_cov[b, i, j] = t
            out_cov[b, j, i] = t
    return 0, -0.5 * (k * log_2pi + squared) - half_logdet(work, lk, k)
