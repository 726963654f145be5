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
"""

import numbers
import warnings

import numpy as np

from fastgauss import _checks
from fastgauss._dispatch import adaptable, implementation, resolve
from fastgauss._plans.mvn import NO_CHECK, NO_FAILURE
from fastgauss._plans.stream import as_stream, blocks_needed

__all__ = ["cholesky", "mvn_sample", "mvn_logpdf", "mvn_kl"]

@adaptable
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
    name = resolve(backend, {"a": a})
    on_device = name == "cuda"
    a, shape, a_dtype = _matrices("a", a, on_device)
    dtype = _checks.result_dtype(a=a_dtype)
    if not isinstance(upper, (bool, np.bool_)):
        raise TypeError(f"upper must be a bool; got {type(upper).__name__}")
    out = _checks.output(None, shape, dtype, like=a, inputs={})
    result, status = implementation("cholesky", name)(a, bool(upper), out)
    _raise_failures(status, {"a": shape[:-2]})
    return result


@adaptable
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
    if (cov is None) == (scale_tril is None):
        raise ValueError("pass exactly one of cov and scale_tril")
    out, status, _ = _sample(mean, cov, scale_tril, size, rng, noise, out, backend, tol=NO_CHECK)
    return out


@adaptable
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
    if (cov is None) == (scale_tril is None):
        raise ValueError("pass exactly one of cov and scale_tril")
    name = resolve(backend, {"x": x, "mean": mean, "cov": cov, "scale_tril": scale_tril})
    on_device = name == "cuda"
    x, x_shape, x_dtype = _vectors("x", x, on_device)
    d = x_shape[-1]
    mean, mean_shape, mean_dtype = _vectors("mean", mean, on_device, d, "x")
    matrix_name = "cov" if cov is not None else "scale_tril"
    matrix, matrix_shape, matrix_dtype = _matrices(matrix_name, cov if cov is not None else scale_tril, on_device, d)
    batch = _broadcast_batch({"x": x_shape[:-1], "mean": mean_shape[:-1], matrix_name: matrix_shape[:-2]})
    dtype = _checks.result_dtype(x=x_dtype, mean=mean_dtype, **{matrix_name: matrix_dtype})
    out = _checks.output(None, batch, dtype, like=x, inputs={})
    covariance = matrix if cov is not None else None
    factor = matrix if cov is None else None
    status = implementation("mvn_logpdf", name)(x, mean, covariance, factor, batch, out)
    _raise_failures(status, {"cov": matrix_shape[:-2]})
    return out


@adaptable
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
    arrays = {"mean1": mean1, "cov1": cov1, "mean2": mean2, "cov2": cov2}
    name = resolve(backend, arrays)
    on_device = name == "cuda"
    mean1, mean1_shape, mean1_dtype = _vectors("mean1", mean1, on_device)
    d = mean1_shape[-1]
    mean2, mean2_shape, mean2_dtype = _vectors("mean2", mean2, on_device, d, "mean1")
    cov1, cov1_shape, cov1_dtype = _matrices("cov1", cov1, on_device, d, "mean1")
    cov2, cov2_shape, cov2_dtype = _matrices("cov2", cov2, on_device, d, "mean1")
    batch = _broadcast_batch({"mean1": mean1_shape[:-1], "cov1": cov1_shape[:-2], "mean2": mean2_shape[:-1], "cov2": cov2_shape[:-2]})
    dtype = _checks.result_dtype(mean1=mean1_dtype, cov1=cov1_dtype, mean2=mean2_dtype, cov2=cov2_dtype)
    out = _checks.output(None, batch, dtype, like=mean1, inputs={})
    status = implementation("mvn_kl", name)(mean1, cov1, mean2, cov2, batch, out)
    _raise_failures(status, {"cov1": cov1_shape[:-2], "cov2": cov2_shape[:-2]})
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


def _sample(mean, cov, scale_tril, size, rng, noise, out, backend, tol, raise_failures=True):
    """Validate, allocate, reserve the stream and run mvn_sample's backend: (out, status, matrix)."""
    matrix_name = "cov" if cov is not None else "scale_tril"
    matrix = cov if cov is not None else scale_tril
    name = resolve(backend, {"mean": mean, matrix_name: matrix, "noise": noise, "out": out})
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
    shape = sample + tail
    fresh = out is None
    if out is not None and _checks.may_overlap(out, matrix):
        raise ValueError(f"out overlaps {matrix_name}; pass a separate array (out may be exactly mean or noise)")
    out = _checks.output(out, shape, dtype, like=mean, inputs={"mean": mean, "noise": noise})
    stream = None
    if noise is None:
        stream = generator.reserve(blocks_needed(_checks.size(shape), dtype))
    covariance = matrix if cov is not None else None
    factor = matrix if cov is None else None
    status = implementation("mvn_sample", name)(mean, covariance, factor, batch, noise, out, fresh=fresh, stream=stream, tol=tol)
    if raise_failures:
        _raise_failures(status, {"cov": matrix_shape[:-2]})
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
