r"""Public multivariate-normal ops: batched Cholesky, sampling, log-density and KL.

Every op works on batches of d-dimensional Gaussians: means of shape (..., d) and
covariances (or their lower Cholesky factors, ``scale_tril``) of shape (..., d, d),
whose batch shapes (the axes before the last one or two) broadcast like NumPy
arrays. Kernels factor each matrix once, in registers or a small local buffer (one
prange item per chunk of matrices on the CPU, one thread per matrix on CUDA), and
fuse the work that follows (sampling, whitening, the KL terms) into the same pass.

Covariances are factored from their lower triangle, as ``numpy.linalg.cholesky``
does; the upper triangle is not read (``Generator.multivariate_normal`` with
``check_valid`` is the one op that compares the two). A covariance that is not
positive definite, or holds NaN in that triangle, raises
``numpy.linalg.LinAlgError`` naming the argument, the batch index of the first such
matrix (C order) and the order of its first leading minor that is not positive
definite.

Gradients: every op here has a VJP, ``_vjp_<op>`` (see "gradients" at the end of this
module), which ``fastgauss.vjp`` and the torch autograd adapter call; the backward kernels
recompute the factor from the forward's inputs (and mvn_sample's noise from its stream).
"""

import numbers
import warnings
from types import SimpleNamespace

import numpy as np

from fastgauss import _checks
from fastgauss._dispatch import adapts, implementation, resolve
from fastgauss._plans.mvn import NO_CHECK, NO_FAILURE
from fastgauss._plans.stream import as_stream, blocks_needed

__all__ = [
    "cholesky",
    "mvn_sample",
    "mvn_logpdf",
    "mvn_kl",
    "mvn_affine",
    "mvn_marginal",
    "mvn_condition",
    "gaussian_product",
    "kalman_update",
]

@adapts
def cholesky(a, *, upper=False, backend=None):
    r"""Batched Cholesky factorization: ``L`` with :math:`L L^T = a`, for every matrix of a batch.

    A drop-in for ``numpy.linalg.cholesky``: same shapes, dtypes and results up to
    rounding, for many small matrices at once.

    Parameters
    ----------
    a : array (..., d, d)
        Symmetric positive-definite matrices. Only the lower triangle is read (the
        upper one with ``upper=True``), as in NumPy.
    upper : bool
        Return the upper factor :math:`U = L^T` (with :math:`U^T U = a`) instead.
    backend : {"numpy", "cpu", "cuda"}, optional

    Returns
    -------
    L : array (..., d, d), zeros above (below, with ``upper``) the diagonal; dtype
        float32 for float32 input, else float64 (integer input gives float64).
        The kernels factor float32 matrices in float64 and round once; the CPU's LAPACK
        path (d >= LAPACK_MIN_D) factors them in float32, as NumPy does.

    Raises ``numpy.linalg.LinAlgError`` when a matrix is not positive definite or holds
    NaN, naming the first one (C order) and its failing leading minor, e.g.
    ``a matrix at batch index (3, 17) is not positive definite (leading minor of order 4)``.
    ValueError for a shape that is not (..., d, d); TypeError for unsupported dtypes.

    On the CPU, matrices with d >= ``fastgauss.cpu.mvn.LAPACK_MIN_D`` are factored by
    LAPACK (through ``numpy.linalg.cholesky``); smaller ones by the batched kernel.

    Examples
    --------
    >>> import numpy as np, fastgauss
    >>> a = np.array([[4.0, 2.0], [2.0, 3.0]])
    >>> fastgauss.cholesky(a)
    array([[2.        , 0.        ],
           [1.        , 1.41421356]])
    >>> fastgauss.cholesky(np.stack([a, 2 * a]), upper=True).shape
    (2, 2, 2)
    """
    call = _cholesky_call(a, upper, backend)
    out = _checks.output(None, call.shape, call.dtype, like=call.a, inputs={})
    result, status = implementation("cholesky", call.backend)(call.a, call.upper, out)
    _raise_failures(status, {"a": call.shape[:-2]})
    return result


@adapts
def mvn_sample(mean, cov=None, *, scale_tril=None, size=None, rng=None, noise=None, out=None, backend=None):
    r"""Samples of many multivariate normals at once: :math:`x = \mu + L \epsilon`.

    :math:`L` is the lower Cholesky factor of ``cov`` (:math:`L L^T = \Sigma`), or
    ``scale_tril`` itself; :math:`\epsilon \sim N(0, I_d)`. With ``cov`` the factor is
    computed in the same kernel pass as the samples.

    Parameters
    ----------
    mean : array (..., d)
    cov : array (..., d, d), optional
        Covariances (lower triangle read). Exactly one of ``cov`` and ``scale_tril``.
    scale_tril : array (..., d, d), optional
        Lower Cholesky factors (upper triangle ignored; not checked).
    size : int or tuple of ints, optional
        Sample shape S; None gives (). The batch shapes of ``mean`` and
        ``cov``/``scale_tril`` broadcast to the batch shape B; the result has shape
        S + B + (d,).
    rng : fastgauss.Generator, int seed or None
        The generator when ``noise`` is None (None: fresh OS entropy). The noise then
        equals ``rng.standard_normal(S + B + (d,), dtype=<result dtype>)`` from a
        generator in the same state, exactly (C order), on every backend, and ``rng``
        advances alike.
    noise : array (S + B + (d,)), optional
        Given noise: :math:`x = \mu + L\,\mathrm{noise}` exactly, the deterministic,
        differentiable path to replay. S is then the noise's axes before B + (d,); a
        ``size`` that disagrees is a ValueError. Passing ``rng`` as well is a ValueError.
    out : array (S + B + (d,)), optional
        Written only once every covariance has been factored; may be exactly ``mean``
        or ``noise`` (in place).
    backend : {"numpy", "cpu", "cuda"}, optional

    Returns
    -------
    x : array S + B + (d,), dtype ``numpy.result_type`` of mean, cov/scale_tril (and
        noise): float32 stays float32, integers give float64. Arithmetic is float64.

    Raises ``numpy.linalg.LinAlgError`` when a covariance is not positive definite
    (naming ``cov``'s batch index), found before ``out`` is written: a user's ``out``
    is filled only after every factorization succeeded (the fused kernel then writes
    to a temporary that is copied into ``out``; when a covariance serves several
    samples it is factored first into a float64 scratch of ``cov``'s size). The
    generator is advanced even then, as NumPy's ``multivariate_normal`` does. Argument
    errors (ValueError, TypeError) are raised before anything runs and leave ``rng``
    untouched.

    Examples
    --------
    >>> import numpy as np, fastgauss
    >>> mean = np.zeros((1000, 3))
    >>> cov = np.broadcast_to(np.eye(3) * [1.0, 2.0, 3.0], (1000, 3, 3))
    >>> fastgauss.mvn_sample(mean, cov, rng=0).shape
    (1000, 3)
    >>> fastgauss.mvn_sample(np.zeros(3), np.eye(3), size=(5, 2), rng=0).shape
    (5, 2, 3)
    >>> eps = np.ones((4, 3))
    >>> fastgauss.mvn_sample(np.zeros(3), scale_tril=np.eye(3) * 2, noise=eps)[0]
    array([2., 2., 2.])
    """
    out, status, _ = _sample(mean, cov, scale_tril, size, rng, noise, out, backend, tol=NO_CHECK)
    return out


@adapts
def mvn_logpdf(x, mean, cov=None, *, scale_tril=None, backend=None):
    r"""Log-density of multivariate normals, batched:

    .. math::  \log p(x) = -\tfrac12 \left(d \log 2\pi + \log\det\Sigma + (x - \mu)^T \Sigma^{-1} (x - \mu)\right)

    computed as :math:`-\tfrac12 (d \log 2\pi + |z|^2) - \sum_i \log L_{ii}` with
    :math:`L z = x - \mu` solved by forward substitution (no inverse).

    Parameters
    ----------
    x : array (..., d)
    mean : array (..., d)
    cov : array (..., d, d), optional
        Covariances (lower triangle read). Exactly one of ``cov`` and ``scale_tril``.
    scale_tril : array (..., d, d), optional
        Lower Cholesky factors with a positive diagonal (not checked: a diagonal that
        is not positive gives NaN or inf).
    backend : {"numpy", "cpu", "cuda"}, optional

    Returns
    -------
    logpdf : array of the broadcast batch shape of x, mean and cov (0-d for one point),
        dtype ``numpy.result_type`` of the arguments (float32 stays float32); computed
        in float64. Agrees with ``scipy.stats.multivariate_normal.logpdf``.

    Raises ``numpy.linalg.LinAlgError`` for a covariance that is not positive definite.

    Examples
    --------
    >>> import numpy as np, fastgauss
    >>> float(fastgauss.mvn_logpdf(np.zeros(2), np.zeros(2), np.eye(2)))  # -log(2 pi)
    -1.8378770664093453
    >>> fastgauss.mvn_logpdf(np.zeros((10, 2)), np.zeros(2), np.eye(2)).shape
    (10,)
    """
    call = _logpdf_call(x, mean, cov, scale_tril, backend)
    out = _checks.output(None, call.batch, call.dtype, like=call.x, inputs={})
    status = implementation("mvn_logpdf", call.backend)(call.x, call.mean, call.cov, call.scale_tril, call.batch, out)
    _raise_failures(status, {"cov": call.matrix_shape[:-2]})
    return out


@adapts
def mvn_kl(mean1, cov1, mean2, cov2, *, backend=None):
    r"""KL divergence :math:`KL(N(\mu_1, \Sigma_1) \,\|\, N(\mu_2, \Sigma_2))`, batched:

    .. math::

        \tfrac12 \left(\mathrm{tr}(\Sigma_2^{-1}\Sigma_1) + (\mu_2 - \mu_1)^T \Sigma_2^{-1} (\mu_2 - \mu_1)
        - d + \ln\frac{\det\Sigma_2}{\det\Sigma_1}\right)

    through the Cholesky factors and triangular solves, never explicit inverses:
    :math:`\mathrm{tr}(\Sigma_2^{-1}\Sigma_1) = \|L_2^{-1} L_1\|_F^2`, the quadratic
    term is :math:`\|L_2^{-1}(\mu_2 - \mu_1)\|^2` and
    :math:`\ln\det\Sigma_2/\det\Sigma_1 = 2 \sum_i (\ln L_{2,ii} - \ln L_{1,ii})`.

    Parameters
    ----------
    mean1, mean2 : arrays (..., d)
    cov1, cov2 : arrays (..., d, d)
        Covariances (lower triangles read). All four batch shapes broadcast.
    backend : {"numpy", "cpu", "cuda"}, optional

    Returns
    -------
    kl : array of the broadcast batch shape (0-d for one pair), dtype
        ``numpy.result_type`` of the arguments; computed in float64.

    Raises ``numpy.linalg.LinAlgError`` naming ``cov1`` or ``cov2`` (``cov1`` first)
    when a covariance is not positive definite.

    Examples
    --------
    >>> import numpy as np, fastgauss
    >>> float(fastgauss.mvn_kl(np.zeros(2), np.eye(2), np.ones(2), np.eye(2)))  # |m2 - m1|^2 / 2
    1.0
    """
    call = _kl_call(mean1, cov1, mean2, cov2, backend)
    out = _checks.output(None, call.batch, call.dtype, like=call.mean1, inputs={})
    status = implementation("mvn_kl", call.backend)(call.mean1, call.cov1, call.mean2, call.cov2, call.batch, out)
    _raise_failures(status, call.matrix_batches)
    return out


# --- Generator.multivariate_normal --------------------------------------------------------


def multivariate_normal(generator, mean, cov, size=None, check_valid="warn", tol=1e-8, method="cholesky", backend=None):
    """Generator.multivariate_normal: mvn_sample(mean, cov, size=size, rng=generator) plus NumPy's check_valid."""
    if check_valid not in ("warn", "raise", "ignore"):
        raise ValueError("check_valid must equal 'warn', 'raise', or 'ignore'")
    if method != "cholesky":
        raise ValueError(f"method must be 'cholesky' (fastgauss factors covariances by Cholesky); got {method!r}")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0:
        raise ValueError(f"tol must be a non-negative number; got {tol!r}")
    checking = check_valid != "ignore"
    tol_or_off = float(tol) if checking else NO_CHECK
    out, status, cov = _sample(mean, cov, None, size, generator, None, None, backend, tol=tol_or_off, raise_failures=False)
    failed, order, asymmetric = status.get("cov", NO_FAILURE)
    batch_shape = _checks.shape_dtype(cov)[0][:-2]
    message = "covariance is not symmetric positive-semidefinite."
    if failed >= 0:
        index = _batch_index(failed, batch_shape)
        if checking and not _positive_semidefinite(cov, failed, tol):
            if check_valid == "raise":
                raise ValueError(f"{message[:-1]} (cov matrix at batch index {index})")
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        raise np.linalg.LinAlgError(
            f"cov matrix at batch index {index} is not positive definite (leading minor of order {order}); "
            "method='cholesky' needs positive-definite covariances (a singular one can be regularized by adding "
            "a small multiple of the identity)"
        )
    if asymmetric >= 0:
        if check_valid == "raise":
            raise ValueError(f"{message[:-1]} (cov matrix at batch index {_batch_index(asymmetric, batch_shape)} is not symmetric)")
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return out


def _positive_semidefinite(cov, flat_index, tol):
    """NumPy's eigh criterion on one matrix: no eigenvalue below -tol (lower triangle, float64)."""
    shape = _checks.shape_dtype(cov)[0]
    batch_index = _batch_index(flat_index, tuple(shape[:-2]))
    if isinstance(cov, np.ndarray):
        matrix = cov[batch_index]
    else:
        matrix = _checks.numba_view(cov)[batch_index].copy_to_host()  # one d x d matrix, on the error path
    matrix = np.asarray(matrix, np.float64)
    if not np.isfinite(np.tril(matrix)).all():
        return False
    return bool(np.linalg.eigvalsh(matrix).min() >= -tol)


# --- shared steps -------------------------------------------------------------------------


def _cholesky_call(a, upper, backend, cotangent=None):
    """cholesky's validated arguments (and its backend, result shape and dtype)."""
    name = resolve(backend, {"a": a, "cotangent": cotangent})
    a, shape, a_dtype = _matrices("a", a, name == "cuda")
    dtype = _checks.result_dtype(a=a_dtype)
    if not isinstance(upper, (bool, np.bool_)):
        raise TypeError(f"upper must be a bool; got {type(upper).__name__}")
    return SimpleNamespace(backend=name, a=a, upper=bool(upper), shape=shape, dtype=dtype)


def _logpdf_call(x, mean, cov, scale_tril, backend, cotangent=None):
    """mvn_logpdf's validated arguments, backend, batch shape and result dtype."""
    if (cov is None) == (scale_tril is None):
        raise ValueError("pass exactly one of cov and scale_tril")
    name = resolve(backend, {"x": x, "mean": mean, "cov": cov, "scale_tril": scale_tril, "cotangent": cotangent})
    on_device = name == "cuda"
    x, x_shape, x_dtype = _vectors("x", x, on_device)
    d = x_shape[-1]
    mean, mean_shape, mean_dtype = _vectors("mean", mean, on_device, d, "x")
    matrix_name = "cov" if cov is not None else "scale_tril"
    matrix, matrix_shape, matrix_dtype = _matrices(matrix_name, cov if cov is not None else scale_tril, on_device, d)
    batch = _broadcast_batch({"x": x_shape[:-1], "mean": mean_shape[:-1], matrix_name: matrix_shape[:-2]})
    dtype = _checks.result_dtype(x=x_dtype, mean=mean_dtype, **{matrix_name: matrix_dtype})
    return SimpleNamespace(
        backend=name, x=x, mean=mean, cov=matrix if cov is not None else None, scale_tril=matrix if cov is None else None,
        matrix_name=matrix_name, matrix=matrix, matrix_shape=matrix_shape, batch=batch, dtype=dtype,
    )


def _kl_call(mean1, cov1, mean2, cov2, backend, cotangent=None):
    """mvn_kl's validated arguments, backend, batch shape and result dtype."""
    name = resolve(backend, {"mean1": mean1, "cov1": cov1, "mean2": mean2, "cov2": cov2, "cotangent": cotangent})
    (mean1, cov1, mean2, cov2), (cov1_shape, cov2_shape), batch, dtype = _two_gaussians(mean1, cov1, mean2, cov2, name == "cuda")
    return SimpleNamespace(
        backend=name, mean1=mean1, cov1=cov1, mean2=mean2, cov2=cov2, batch=batch, dtype=dtype,
        matrix_batches={"cov1": cov1_shape[:-2], "cov2": cov2_shape[:-2]},
    )


def _sample_call(mean, cov, scale_tril, size, rng, noise, out, backend, cotangent=None):
    """mvn_sample's validated arguments: backend, arrays, batch and result shape, dtype, and the
    generator to draw from (None when noise is given)."""
    if (cov is None) == (scale_tril is None):
        raise ValueError("pass exactly one of cov and scale_tril")
    matrix_name = "cov" if cov is not None else "scale_tril"
    matrix = cov if cov is not None else scale_tril
    name = resolve(backend, {"mean": mean, matrix_name: matrix, "noise": noise, "out": out, "cotangent": cotangent})
    on_device = name == "cuda"
    mean, mean_shape, mean_dtype = _vectors("mean", mean, on_device)
    d = mean_shape[-1]
    matrix, matrix_shape, matrix_dtype = _matrices(matrix_name, matrix, on_device, d)
    batch = _broadcast_batch({"mean": mean_shape[:-1], matrix_name: matrix_shape[:-2]})
    tail = batch + (d,)
    if noise is None:
        generator = as_stream(rng)
        sample = () if size is None else _checks.sample_shape(size)
        dtype = _checks.result_dtype(mean=mean_dtype, **{matrix_name: matrix_dtype})
    else:
        if rng is not None:
            raise ValueError("pass either noise or rng, not both")
        noise = _checks.data_array("noise", noise, on_device)
        noise_shape, noise_dtype = _checks.shape_dtype(noise)
        noise_shape = tuple(noise_shape)
        if len(noise_shape) < len(tail) or noise_shape[len(noise_shape) - len(tail):] != tail:
            raise ValueError(f"noise must have shape sample + batch + (d,) = (...) + {tail}; got {noise_shape}")
        sample = noise_shape[: len(noise_shape) - len(tail)]
        if size is not None and _checks.sample_shape(size) != sample:
            raise ValueError(f"size {_checks.sample_shape(size)} disagrees with the sample shape {sample} of noise {noise_shape}")
        dtype = _checks.result_dtype(mean=mean_dtype, **{matrix_name: matrix_dtype}, noise=noise_dtype)
        generator = None
    return SimpleNamespace(
        backend=name, mean=mean, cov=matrix if cov is not None else None, scale_tril=matrix if cov is None else None,
        matrix_name=matrix_name, matrix=matrix, matrix_shape=matrix_shape, batch=batch, shape=sample + tail, dtype=dtype,
        noise=noise, generator=generator,
    )


def _sample(mean, cov, scale_tril, size, rng, noise, out, backend, tol, raise_failures=True):
    """Validate, allocate, reserve the stream and run mvn_sample's backend: (out, status, matrix)."""
    call = _sample_call(mean, cov, scale_tril, size, rng, noise, out, backend)
    mean, matrix, matrix_name, noise, shape, dtype = call.mean, call.matrix, call.matrix_name, call.noise, call.shape, call.dtype
    fresh = out is None
    if out is not None and _checks.may_overlap(out, matrix):
        raise ValueError(f"out overlaps {matrix_name}; pass a separate array (out may be exactly mean or noise)")
    out = _checks.output(out, shape, dtype, like=mean, inputs={"mean": mean, "noise": noise})
    stream = None
    if noise is None:
        stream = call.generator.reserve(blocks_needed(_checks.size(shape), dtype))
    status = implementation("mvn_sample", call.backend)(mean, call.cov, call.scale_tril, call.batch, noise, out, fresh=fresh, stream=stream, tol=tol)
    if raise_failures:
        _raise_failures(status, {"cov": call.matrix_shape[:-2]})
    return out, status, matrix


def _vectors(name, x, on_device, d=None, d_from=None):
    x = _checks.data_array(name, x, on_device)
    shape, dtype = _checks.shape_dtype(x)
    shape = tuple(shape)
    if len(shape) < 1 or (d is not None and shape[-1] != d):
        expected = "(..., d)" if d is None else f"(..., {d}) (d = {d} from {d_from})"
        raise ValueError(f"{name} must have shape {expected}; got {shape}")
    return x, shape, dtype


def _matrices(name, a, on_device, d=None, d_from="mean"):
    a = _checks.data_array(name, a, on_device)
    shape, dtype = _checks.shape_dtype(a)
    shape = tuple(shape)
    if len(shape) < 2 or shape[-1] != shape[-2] or (d is not None and shape[-1] != d):
        expected = "(..., d, d)" if d is None else f"(..., {d}, {d}) (d = {d} from {d_from})"
        raise ValueError(f"{name} must have shape {expected}; got {shape}")
    return a, shape, dtype


def _broadcast_batch(batches):
    try:
        return tuple(np.broadcast_shapes(*batches.values()))
    except ValueError:
        described = ", ".join(f"{name} {shape}" for name, shape in batches.items())
        raise ValueError(f"the batch shapes of {described} do not broadcast") from None


def _batch_index(flat_index, batch_shape):
    if not batch_shape:
        return ()
    return tuple(int(i) for i in np.unravel_index(flat_index, batch_shape))


def _raise_failures(status, batch_shapes):
    """Raise LinAlgError for the first failing matrix a backend reported ({name: Failure}), argument by argument."""
    for name in batch_shapes:
        failure = status.get(name, NO_FAILURE)
        if failure.failed >= 0:
            raise np.linalg.LinAlgError(
                f"{name} matrix at batch index {_batch_index(failure.failed, batch_shapes[name])} "
                f"is not positive definite (leading minor of order {failure.order})"
            )


# --- gradients ---------------------------------------------------------------------------
# The VJPs (vector-Jacobian products) of the four ops, reached through ``fastgauss.vjp``:
# ``_vjp_<op>(cotangent, *forward args, wrt=None, **forward kwargs)`` validates like the
# forward, allocates one gradient per differentiable array argument (or per name in
# ``wrt``), of that argument's shape and the forward's result dtype, and runs the backend's
# ``<op>_vjp``. Covariance gradients follow torch.linalg.cholesky's autograd: the symmetric
# matrix sym(L^-T Phi(L^T gL) L^-1) (Murray 2016), so perturbing a covariance by a symmetric
# E changes the result by <gradient, E>; a ``scale_tril`` gets the lower triangle of its
# factor's gradient (its upper triangle is never read). Broadcast arguments get the sum over
# the elements they were broadcast to.


def _vjp_cholesky(cotangent, a, *, upper=False, backend=None, wrt=None):
    r"""Gradient of ``cholesky(a, upper=upper)``: {"a": sym(L^-T Phi(L^T gL) L^-1)}, gL the cotangent
    (its transpose with ``upper``), Phi the lower triangle with a halved diagonal, sym(X) = (X + X^T) / 2.

    >>> import numpy as np, fastgauss
    >>> a = np.array([[4.0, 2.0], [2.0, 3.0]])
    >>> fastgauss.mvn._vjp_cholesky(np.eye(2), a)["a"]  # d(L_00 + L_11)/da
    array([[ 0.33838835, -0.1767767 ],
           [-0.1767767 ,  0.35355339]])
    """
    call = _cholesky_call(a, upper, backend, cotangent)
    wanted = _wanted(wrt, ["a"])
    cotangent = _cotangent(cotangent, call.shape, call.dtype, call.backend)
    grads = _allocate_gradients(wanted, {"a": (call.a, call.shape)}, call.dtype, _checks.size(call.shape) == 0)
    if grads["a"] is not None and _checks.size(call.shape):
        status = implementation("cholesky_vjp", call.backend)(cotangent, call.a, call.upper, grads["a"])
        _raise_failures(status, {"a": call.shape[:-2]})
    return _wanted_only(grads)


def _vjp_mvn_sample(cotangent, mean, cov=None, *, scale_tril=None, size=None, rng=None, noise=None, out=None, backend=None, wrt=None):
    r"""Gradients of ``x = mean + L eps`` (``mvn_sample``) for the cotangent g of x (shape of x):
    mean: g summed to mean's shape; L: tril(sum g eps^T), then cov through Cholesky's reverse pass
    (or scale_tril: that lower triangle); noise: L^T g.

    Called with the forward's arguments. When the forward drew its noise (``rng=``), pass the
    Generator restored to the state the forward started from (``Generator.state``) or the same int
    seed: the noise is regenerated from the stream inside the backward pass (the generator advances
    as in the forward); rng=None (fresh entropy) cannot be replayed and is a ValueError. ``out``
    is ignored.

    >>> import numpy as np, fastgauss
    >>> g = fastgauss.mvn._vjp_mvn_sample(np.ones((5, 2)), np.zeros(2), np.eye(2), noise=np.ones((5, 2)))
    >>> g["mean"], g["noise"][0]
    (array([5., 5.]), array([1., 1.]))
    """
    if noise is None and rng is None:
        raise ValueError(
            "rng=None drew fresh OS entropy in the forward, so its noise cannot be regenerated; pass the "
            "Generator restored to the forward's starting state (Generator.state) or the int seed it used"
        )
    call = _sample_call(mean, cov, scale_tril, size, rng, noise, None, backend, cotangent)
    wanted = _wanted(wrt, ["mean", call.matrix_name] + (["noise"] if noise is not None else []))
    cotangent = _cotangent(cotangent, call.shape, call.dtype, call.backend)
    arguments = {"mean": (call.mean, _checks.shape_dtype(call.mean)[0]), call.matrix_name: (call.matrix, call.matrix_shape)}
    if noise is not None:
        arguments["noise"] = (call.noise, call.shape)
    empty = _checks.size(call.shape) == 0
    grads = _allocate_gradients(wanted, arguments, call.dtype, empty)
    stream = None if noise is not None else call.generator.reserve(blocks_needed(_checks.size(call.shape), call.dtype))
    if not empty:
        status = implementation("mvn_sample_vjp", call.backend)(
            cotangent, call.mean, call.cov, call.scale_tril, call.batch, call.noise, stream=stream, grad_mean=grads.get("mean"),
            grad_cov=grads.get("cov"), grad_scale_tril=grads.get("scale_tril"), grad_noise=grads.get("noise"),
        )
        _raise_failures(status, {"cov": call.matrix_shape[:-2]})
    return _wanted_only(grads)


def _vjp_mvn_logpdf(cotangent, x, mean, cov=None, *, scale_tril=None, backend=None, wrt=None):
    r"""Gradients of ``mvn_logpdf`` for the cotangent g (batch shape): with u = Sigma^-1 (x - mean),
    x: -g u, mean: g u, cov: g (u u^T - Sigma^-1) / 2 (through Cholesky's reverse pass), scale_tril:
    g (tril(u z^T) - diag(1 / L_ii)) with z = L^-1 (x - mean); each summed to its argument's shape.

    >>> import numpy as np, fastgauss
    >>> g = fastgauss.mvn._vjp_mvn_logpdf(1.0, np.ones(2), np.zeros(2), np.eye(2))
    >>> g["x"], g["cov"]
    (array([-1., -1.]), array([[0. , 0.5],
           [0.5, 0. ]]))
    """
    call = _logpdf_call(x, mean, cov, scale_tril, backend, cotangent)
    wanted = _wanted(wrt, ["x", "mean", call.matrix_name])
    cotangent = _cotangent(cotangent, call.batch, call.dtype, call.backend)
    arguments = {
        "x": (call.x, _checks.shape_dtype(call.x)[0]), "mean": (call.mean, _checks.shape_dtype(call.mean)[0]),
        call.matrix_name: (call.matrix, call.matrix_shape),
    }
    empty = _checks.size(call.batch) == 0
    grads = _allocate_gradients(wanted, arguments, call.dtype, empty)
    if not empty:
        status = implementation("mvn_logpdf_vjp", call.backend)(
            cotangent, call.x, call.mean, call.cov, call.scale_tril, call.batch, grad_x=grads["x"], grad_mean=grads["mean"],
            grad_cov=grads.get("cov"), grad_scale_tril=grads.get("scale_tril"),
        )
        _raise_failures(status, {"cov": call.matrix_shape[:-2]})
    return _wanted_only(grads)


def _vjp_mvn_kl(cotangent, mean1, cov1, mean2, cov2, *, backend=None, wrt=None):
    r"""Gradients of ``mvn_kl`` for the cotangent g (batch shape): with v = Sigma2^-1 (mean2 - mean1),
    mean1: -g v, mean2: g v, cov1: g (Sigma2^-1 - Sigma1^-1) / 2,
    cov2: g (Sigma2^-1 - Sigma2^-1 Sigma1 Sigma2^-1 - v v^T) / 2; each summed to its argument's shape.

    >>> import numpy as np, fastgauss
    >>> g = fastgauss.mvn._vjp_mvn_kl(1.0, np.zeros(2), np.eye(2), np.ones(2), 2 * np.eye(2))
    >>> g["mean2"], g["cov1"][0]
    (array([0.5, 0.5]), array([-0.25,  0.  ]))
    """
    call = _kl_call(mean1, cov1, mean2, cov2, backend, cotangent)
    wanted = _wanted(wrt, ["mean1", "cov1", "mean2", "cov2"])
    cotangent = _cotangent(cotangent, call.batch, call.dtype, call.backend)
    arguments = {name: (getattr(call, name), _checks.shape_dtype(getattr(call, name))[0]) for name in ("mean1", "cov1", "mean2", "cov2")}
    empty = _checks.size(call.batch) == 0
    grads = _allocate_gradients(wanted, arguments, call.dtype, empty)
    if not empty:
        status = implementation("mvn_kl_vjp", call.backend)(
            cotangent, call.mean1, call.cov1, call.mean2, call.cov2, call.batch,
            grad_mean1=grads["mean1"], grad_cov1=grads["cov1"], grad_mean2=grads["mean2"], grad_cov2=grads["cov2"],
        )
        _raise_failures(status, call.matrix_batches)
    return _wanted_only(grads)


def _wanted(wrt, passed):
    """The argument names to differentiate: every differentiable array argument passed, or those in ``wrt``."""
    if wrt is None:
        return list(passed)
    names = [wrt] if isinstance(wrt, str) else list(wrt)
    for name in names:
        if name not in passed:
            raise ValueError(f"wrt names {name!r}, which is not a differentiable array argument of this call; choose from {passed}")
    return names


def _cotangent(cotangent, shape, dtype, backend):
    """The cotangent as the backends take it: the result's shape, in the result dtype (C order on the host)."""
    on_device = backend == "cuda"
    cotangent = _checks.data_array("cotangent", cotangent, on_device)
    got_shape, got_dtype = _checks.shape_dtype(cotangent)
    if tuple(got_shape) != tuple(shape):
        raise ValueError(f"cotangent must have the result's shape {tuple(shape)}; got {tuple(got_shape)}")
    _checks.result_dtype(cotangent=got_dtype)
    if on_device:
        if got_dtype != dtype:
            raise TypeError(f"cotangent has dtype {got_dtype}; a CUDA cotangent must have the result dtype {dtype}")
        return cotangent
    return np.asarray(cotangent, dtype=dtype, order="C")


def _allocate_gradients(wanted, arguments, dtype, zero):
    """{name: gradient array (the argument's shape, ``dtype``, like the argument) or None when not wanted};
    filled with zeros when ``zero`` (an empty result: nothing flows back)."""
    grads = {}
    for name, (array, shape) in arguments.items():
        if name not in wanted:
            grads[name] = None
        elif zero:
            host = np.zeros(shape, dtype)
            grads[name] = _checks.from_host_like(array, host) if _checks.is_device_array(array) else host
        else:
            grads[name] = _checks.output(None, shape, dtype, like=array, inputs={})
    return grads


def _wanted_only(grads):
    return {name: grad for name, grad in grads.items() if grad is not None}


# --- Gaussian algebra ---
# Affine maps, marginals, conditionals, products and the Kalman update of batches of
# Gaussians. Covariances are read from their lower triangles, as everywhere in this family,
# and the covariances returned are symmetric by construction (each entry on and below the
# diagonal is computed once and mirrored). Every factorization is of a matrix formed in the
# kernel (Sigma_22, cov1 + cov2, H cov H^T + R), never an explicit inverse.


@adapts
def mvn_affine(mean, cov, A, b=None, *, backend=None):
    r"""The distribution of :math:`y = A x + b` for :math:`x \sim N(\mu, \Sigma)`, batched:

    .. math::  y \sim N(A \mu + b,\; A \Sigma A^T)

    Parameters
    ----------
    mean : array (..., d)
    cov : array (..., d, d)
        Covariances (lower triangle read).
    A : array (..., k, d)
    b : array (..., k), optional
        The batch shapes of all arguments broadcast to the batch shape B.
    backend : {"numpy", "cpu", "cuda"}, optional

    Returns
    -------
    (mean, cov) : arrays B + (k,) and B + (k, k), dtype ``numpy.result_type`` of the
        arguments (float32 stays float32); computed in float64, the covariance symmetric
        exactly (positive semi-definite, singular when k > d).

    Examples
    --------
    >>> import numpy as np, fastgauss
    >>> A = np.array([[1.0, 1.0]])                         # the sum of two coordinates
    >>> m, c = fastgauss.mvn_affine(np.array([1.0, 2.0]), np.array([[1.0, 0.5], [0.5, 2.0]]), A)
    >>> m, c                                               # var = 1 + 2 + 2 * 0.5
    (array([3.]), array([[4.]]))
    """
    arrays = {"mean": mean, "cov": cov, "A": A, "b": b}
    name = resolve(backend, arrays)
    on_device = name == "cuda"
    mean, mean_shape, mean_dtype = _vectors("mean", mean, on_device)
    d = mean_shape[-1]
    cov, cov_shape, cov_dtype = _matrices("cov", cov, on_device, d)
    A = _checks.data_array("A", A, on_device)
    A_shape, A_dtype = _checks.shape_dtype(A)
    A_shape = tuple(A_shape)
    if len(A_shape) < 2 or A_shape[-1] != d:
        raise ValueError(f"A must have shape (..., k, {d}) (d = {d} from mean); got {A_shape}")
    k = A_shape[-2]
    batches = {"mean": mean_shape[:-1], "cov": cov_shape[:-2], "A": A_shape[:-2]}
    dtypes = {"mean": mean_dtype, "cov": cov_dtype, "A": A_dtype}
    if b is not None:
        b, b_shape, dtypes["b"] = _vectors("b", b, on_device, k, "A")
        batches["b"] = b_shape[:-1]
    batch = _broadcast_batch(batches)
    dtype = _checks.result_dtype(**dtypes)
    mean_out = _checks.output(None, batch + (k,), dtype, like=mean, inputs={})
    cov_out = _checks.output(None, batch + (k, k), dtype, like=mean, inputs={})
    implementation("mvn_affine", name)(mean, cov, A, b, batch, mean_out, cov_out)
    return mean_out, cov_out


@adapts
def mvn_marginal(mean, cov, index, *, backend=None):
    r"""The marginal of :math:`N(\mu, \Sigma)` over the coordinates ``index``, batched:
    :math:`N(\mu_I, \Sigma_{II})`, the block of the listed rows and columns.

    Parameters
    ----------
    mean : array (..., d)
    cov : array (..., d, d)
        Covariances (lower triangle read); the batch shapes broadcast to B.
    index : int or sequence of distinct ints in [-d, d)
        The coordinates kept, in the order given (a host sequence or integer array).
    backend : {"numpy", "cpu", "cuda"}, optional

    Returns
    -------
    (mean, cov) : arrays B + (m,) and B + (m, m), m = len(index), dtype
        ``numpy.result_type`` of mean and cov; the covariance symmetric exactly.

    Examples
    --------
    >>> import numpy as np, fastgauss
    >>> cov = np.array([[1.0, 0.1, 0.2], [0.1, 2.0, 0.3], [0.2, 0.3, 3.0]])
    >>> fastgauss.mvn_marginal(np.arange(3.0), cov, [2, 0])
    (array([2., 0.]), array([[3. , 0.2],
           [0.2, 1. ]]))
    """
    name = resolve(backend, {"mean": mean, "cov": cov})
    on_device = name == "cuda"
    mean, mean_shape, mean_dtype = _vectors("mean", mean, on_device)
    d = mean_shape[-1]
    cov, cov_shape, cov_dtype = _matrices("cov", cov, on_device, d)
    index, _ = _coordinates(index, d)
    batch = _broadcast_batch({"mean": mean_shape[:-1], "cov": cov_shape[:-2]})
    dtype = _checks.result_dtype(mean=mean_dtype, cov=cov_dtype)
    m = index.size
    mean_out = _checks.output(None, batch + (m,), dtype, like=mean, inputs={})
    cov_out = _checks.output(None, batch + (m, m), dtype, like=mean, inputs={})
    implementation("mvn_marginal", name)(mean, cov, index, batch, mean_out, cov_out)
    return mean_out, cov_out


@adapts
def mvn_condition(mean, cov, index, value, *, backend=None):
    r"""The conditional distribution of the other coordinates given ``x[index] = value``, batched.

    With :math:`x_2 = x_I` (I = ``index``) and :math:`x_1` the remaining coordinates in
    ascending order:

    .. math::

        \mu_{1|2} = \mu_1 + \Sigma_{12} \Sigma_{22}^{-1} (x_2 - \mu_2), \qquad
        \Sigma_{1|2} = \Sigma_{11} - \Sigma_{12} \Sigma_{22}^{-1} \Sigma_{21}

    computed through the Cholesky factor :math:`L L^T = \Sigma_{22}` (never an inverse):
    :math:`W = L^{-1} \Sigma_{21}`, :math:`z = L^{-1}(x_2 - \mu_2)`, then
    :math:`\mu_{1|2} = \mu_1 + W^T z` and :math:`\Sigma_{1|2} = \Sigma_{11} - W^T W`, whose
    entries on and below the diagonal are computed and mirrored (symmetric exactly).

    Parameters
    ----------
    mean : array (..., d)
    cov : array (..., d, d)
        Covariances (lower triangle read).
    index : int or sequence of m distinct ints in [-d, d)
        The observed coordinates (a host sequence or integer array); ``value[..., j]`` is
        the value of coordinate ``index[j]``.
    value : array (..., m)
        The batch shapes of mean, cov and value broadcast to B.
    backend : {"numpy", "cpu", "cuda"}, optional

    Returns
    -------
    (mean, cov) : arrays B + (d - m,) and B + (d - m, d - m), dtype ``numpy.result_type``
        of the arguments; computed in float64.

    Raises ``numpy.linalg.LinAlgError`` when some :math:`\Sigma_{22}` is not positive
    definite, naming cov's batch index and the failing leading minor of
    :math:`\Sigma_{22}`, like :func:`cholesky`.

    Examples
    --------
    >>> import numpy as np, fastgauss
    >>> cov = np.array([[1.0, 0.8], [0.8, 1.0]])
    >>> m, c = fastgauss.mvn_condition(np.zeros(2), cov, [1], np.array([1.0]))
    >>> m, c                                               # 0.8 * 1, 1 - 0.8^2
    (array([0.8]), array([[0.36]]))
    """
    name = resolve(backend, {"mean": mean, "cov": cov, "value": value})
    on_device = name == "cuda"
    mean, mean_shape, mean_dtype = _vectors("mean", mean, on_device)
    d = mean_shape[-1]
    cov, cov_shape, cov_dtype = _matrices("cov", cov, on_device, d)
    index, other = _coordinates(index, d)
    value, value_shape, value_dtype = _vectors("value", value, on_device, index.size, "index")
    batch = _broadcast_batch({"mean": mean_shape[:-1], "cov": cov_shape[:-2], "value": value_shape[:-1]})
    dtype = _checks.result_dtype(mean=mean_dtype, cov=cov_dtype, value=value_dtype)
    r = other.size
    mean_out = _checks.output(None, batch + (r,), dtype, like=mean, inputs={})
    cov_out = _checks.output(None, batch + (r, r), dtype, like=mean, inputs={})
    status = implementation("mvn_condition", name)(mean, cov, index, other, value, batch, mean_out, cov_out=cov_out)
    failure = status.get("cov", NO_FAILURE)
    if failure.failed >= 0:
        raise np.linalg.LinAlgError(
            f"cov matrix at batch index {_batch_index(failure.failed, cov_shape[:-2])}: its block Sigma_22 = cov[index, index] "
            f"is not positive definite (leading minor of order {failure.order})"
        )
    return mean_out, cov_out


@adapts
def gaussian_product(mean1, cov1, mean2, cov2, *, backend=None):
    r"""The product of two Gaussian densities, batched: the normalized Gaussian and the log
    of the constant,

    .. math::

        N(x; \mu_1, \Sigma_1)\, N(x; \mu_2, \Sigma_2) = e^{s}\, N(x; \mu, \Sigma),\quad
        s = \log N(\mu_1; \mu_2, \Sigma_1 + \Sigma_2),

    :math:`\Sigma = (\Sigma_1^{-1} + \Sigma_2^{-1})^{-1} = \Sigma_1 S^{-1} \Sigma_2` and
    :math:`\mu = \mu_1 + \Sigma_1 S^{-1} (\mu_2 - \mu_1)`, :math:`S = \Sigma_1 + \Sigma_2`
    (the Bayesian update of a Gaussian prior by a Gaussian likelihood).

    Computed stably: only :math:`S = L L^T` is factored, never :math:`\Sigma_1` or
    :math:`\Sigma_2`, which may be singular or much smaller than the other; with
    :math:`W_i = L^{-1} \Sigma_i` and :math:`z = L^{-1}(\mu_2 - \mu_1)`,
    :math:`\Sigma = \tfrac12 (W_1^T W_2 + W_2^T W_1)` (a product of the two covariances, no
    difference of nearly equal terms; symmetric exactly), :math:`\mu = \mu_1 + W_1^T z` and
    :math:`s = -\tfrac12 (d \log 2\pi + |z|^2) - \sum_i \log L_{ii}`.

    Parameters
    ----------
    mean1, mean2 : arrays (..., d)
    cov1, cov2 : arrays (..., d, d)
        Positive semi-definite covariances (lower triangles read) whose sum is positive
        definite. All four batch shapes broadcast to B.
    backend : {"numpy", "cpu", "cuda"}, optional

    Returns
    -------
    (mean, cov, log_scale) : arrays B + (d,), B + (d, d) and B, dtype
        ``numpy.result_type`` of the arguments; computed in float64. For the diagonal
        form on image tensors see :func:`fastgauss.normal_product`.

    Raises ``numpy.linalg.LinAlgError`` when some cov1 + cov2 is not positive definite,
    naming its batch index in B.

    Examples
    --------
    >>> import numpy as np, fastgauss
    >>> m, c, s = fastgauss.gaussian_product(np.zeros(1), np.eye(1), np.ones(1), np.eye(1))
    >>> m, c                                               # halfway, half the variance
    (array([0.5]), array([[0.5]]))
    >>> bool(np.isclose(s, -0.5 * np.log(2 * np.pi * 2) - 0.25))   # log N(0; 1, 2)
    True
    """
    arrays = {"mean1": mean1, "cov1": cov1, "mean2": mean2, "cov2": cov2}
    name = resolve(backend, arrays)
    on_device = name == "cuda"
    (mean1, cov1, mean2, cov2), (cov1_shape, _), batch, dtype = _two_gaussians(mean1, cov1, mean2, cov2, on_device)
    d = cov1_shape[-1]
    mean_out = _checks.output(None, batch + (d,), dtype, like=mean1, inputs={})
    cov_out = _checks.output(None, batch + (d, d), dtype, like=mean1, inputs={})
    log_scale = _checks.output(None, batch, dtype, like=mean1, inputs={})
    status = implementation("gaussian_product", name)(mean1, cov1, mean2, cov2, batch, mean_out, cov_out, log_scale_out=log_scale)
    _raise_failures({"cov1 + cov2": status.get("sum", NO_FAILURE)}, {"cov1 + cov2": batch})
    return mean_out, cov_out, log_scale


@adapts
def kalman_update(mean, cov, H, R, y, *, backend=None):
    r"""The Kalman measurement update of many tracks at once, in Joseph form.

    Prior :math:`x \sim N(\mu, \Sigma)`, observation :math:`y = H x + v`,
    :math:`v \sim N(0, R)`. With the innovation :math:`r = y - H\mu`, its covariance
    :math:`S = H \Sigma H^T + R = L L^T` and the gain :math:`K = \Sigma H^T S^{-1}`:

    .. math::

        \mu' = \mu + K r, \qquad
        \Sigma' = (I - K H)\, \Sigma\, (I - K H)^T + K R K^T, \qquad
        \ell = \log N(y; H\mu, S)

    The Joseph form is a sum of two positive semi-definite terms, each entry on and below
    the diagonal computed once (float64) and mirrored: the updated covariance is symmetric
    exactly and stays positive definite after rounding to float32, where the short form
    :math:`(I - K H)\Sigma` drifts. Only S is factored (no inverse):
    :math:`K^T = L^{-T} L^{-1} H \Sigma` and :math:`\ell = -\tfrac12 (k \log 2\pi + |L^{-1} r|^2) - \sum_i \log L_{ii}`.

    Parameters
    ----------
    mean : array (..., d)
    cov : array (..., d, d)
        Prior covariances (lower triangle read).
    H : array (..., k, d)
        Observation matrices.
    R : array (..., k, k)
        Observation noise covariances (lower triangle read).
    y : array (..., k)
        Observations. The batch shapes of all five broadcast to B (tracks).
    backend : {"numpy", "cpu", "cuda"}, optional

    Returns
    -------
    (mean, cov, log_likelihood) : arrays B + (d,), B + (d, d) and B, dtype
        ``numpy.result_type`` of the arguments; computed in float64.

    Raises ``numpy.linalg.LinAlgError`` when some S is not positive definite, naming its
    batch index in B.

    Examples
    --------
    >>> import numpy as np, fastgauss
    >>> mean, cov = np.zeros((1000, 2)), np.broadcast_to(np.eye(2), (1000, 2, 2))   # 1000 tracks
    >>> H, R = np.array([[1.0, 0.0]]), np.array([[1.0]])                         # observe x[0]
    >>> y = np.ones((1000, 1))
    >>> m, c, ll = fastgauss.kalman_update(mean, cov, H, R, y)
    >>> m[0], c[0]                                         # gain 1/2 on x[0]; x[1] untouched
    (array([0.5, 0. ]), array([[0.5, 0. ],
           [0. , 1. ]]))
    """
    arrays = {"mean": mean, "cov": cov, "H": H, "R": R, "y": y}
    name = resolve(backend, arrays)
    on_device = name == "cuda"
    mean, mean_shape, mean_dtype = _vectors("mean", mean, on_device)
    d = mean_shape[-1]
    cov, cov_shape, cov_dtype = _matrices("cov", cov, on_device, d)
    y, y_shape, y_dtype = _vectors("y", y, on_device)
    k = y_shape[-1]
    H = _checks.data_array("H", H, on_device)
    H_shape, H_dtype = _checks.shape_dtype(H)
    H_shape = tuple(H_shape)
    if len(H_shape) < 2 or H_shape[-2:] != (k, d):
        raise ValueError(f"H must have shape (..., {k}, {d}) (k = {k} from y, d = {d} from mean); got {H_shape}")
    R, R_shape, R_dtype = _matrices("R", R, on_device, k, "y")
    batch = _broadcast_batch({"mean": mean_shape[:-1], "cov": cov_shape[:-2], "H": H_shape[:-2], "R": R_shape[:-2], "y": y_shape[:-1]})
    dtype = _checks.result_dtype(mean=mean_dtype, cov=cov_dtype, H=H_dtype, R=R_dtype, y=y_dtype)
    mean_out = _checks.output(None, batch + (d,), dtype, like=mean, inputs={})
    cov_out = _checks.output(None, batch + (d, d), dtype, like=mean, inputs={})
    log_likelihood = _checks.output(None, batch, dtype, like=mean, inputs={})
    status = implementation("kalman_update", name)(
        mean, cov, H, R, y, batch, mean_out, cov_out=cov_out, log_likelihood_out=log_likelihood
    )
    label = "the innovation covariance H cov H^T + R"
    _raise_failures({label: status.get("innovation", NO_FAILURE)}, {label: batch})
    return mean_out, cov_out, log_likelihood


def _coordinates(index, d):
    """(index, other): the listed coordinates as non-negative int64 (order kept) and the others,
    ascending; a host int or sequence of distinct ints in [-d, d)."""
    if _checks.is_device_array(index):
        raise TypeError("index must be a host int or sequence of ints (it is small; pass a list or a NumPy array)")
    if isinstance(index, (bool, np.bool_)):
        raise TypeError(f"index must be an int or a sequence of ints; got bool {index!r}")
    listed = np.asarray([index] if isinstance(index, (numbers.Integral, np.integer)) else index)
    if listed.size == 0:
        listed = listed.astype(np.int64)
    if listed.dtype.kind not in "iu":
        raise TypeError(f"index must be an int or a sequence of ints; got {index!r}")
    if listed.ndim != 1:
        raise ValueError(f"index must be an int or a 1-D sequence of ints; got shape {listed.shape}")
    bad = np.flatnonzero((listed < -d) | (listed >= d))
    if bad.size:
        raise ValueError(f"index must be in [-{d}, {d}) (d = {d} from mean); index[{bad[0]}] = {listed[bad[0]]}")
    listed = np.where(listed < 0, listed + d, listed).astype(np.int64)
    if np.unique(listed).size != listed.size:
        raise ValueError(f"index must not repeat a coordinate; got {index!r}")
    return listed, np.setdiff1d(np.arange(d, dtype=np.int64), listed)


def _two_gaussians(mean1, cov1, mean2, cov2, on_device):
    """Validate two batches of Gaussians of one order d: ((mean1, cov1, mean2, cov2), (cov1 shape,
    cov2 shape), broadcast batch, result dtype)."""
    mean1, mean1_shape, mean1_dtype = _vectors("mean1", mean1, on_device)
    d = mean1_shape[-1]
    mean2, mean2_shape, mean2_dtype = _vectors("mean2", mean2, on_device, d, "mean1")
    cov1, cov1_shape, cov1_dtype = _matrices("cov1", cov1, on_device, d, "mean1")
    cov2, cov2_shape, cov2_dtype = _matrices("cov2", cov2, on_device, d, "mean1")
    batch = _broadcast_batch({"mean1": mean1_shape[:-1], "cov1": cov1_shape[:-2], "mean2": mean2_shape[:-1], "cov2": cov2_shape[:-2]})
    dtype = _checks.result_dtype(mean1=mean1_dtype, cov1=cov1_dtype, mean2=mean2_dtype, cov2=cov2_dtype)
    return (mean1, cov1, mean2, cov2), (cov1_shape, cov2_shape), batch, dtype
