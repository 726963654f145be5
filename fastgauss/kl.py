"""Public KL-family ops: Gaussian KL divergence, log density and the discretized image
likelihood, elementwise or reduced per sample in the same pass.

validate -> dispatch -> backend function, as every op. Arguments broadcast like NumPy.
"""

import numbers

import numpy as np

from fastgauss import _checks
from fastgauss._dispatch import adapts, implementation, resolve

REDUCTIONS = (None, "mean", "sum")


def _operands(args, on_device):
    """Normalize the data arguments: Python numbers stay (they do not promote the dtype),
    everything else becomes an array. Returns (args, broadcast shape, result dtype)."""
    normalized, shapes, dtypes = {}, {}, {}
    for name, value in args.items():
        if isinstance(value, numbers.Number) and not isinstance(value, np.generic):
            if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
                raise TypeError(f"unsupported dtype complex for {name} ({value!r}); fastgauss computes in float32 or float64")
            normalized[name], shapes[name] = value, ()
            continue
        if isinstance(value, np.generic):  # a NumPy scalar is a 0-d array: its dtype counts
            value = np.asarray(value) if not on_device else value
            shape, dtype = (), value.dtype
        else:
            value = _checks.data_array(name, value, on_device)
            shape, dtype = _checks.shape_dtype(value)
        normalized[name], shapes[name], dtypes[name] = value, shape, dtype
    dtype = _checks.result_dtype(**dtypes) if dtypes else np.dtype(np.float64)
    shape = _checks.broadcast_shape(**shapes)
    return normalized, shape, dtype


def _result_shape(reduce, shape):
    if isinstance(reduce, str) and reduce in REDUCTIONS or reduce is None:
        if reduce is not None and len(shape) == 0:
            raise ValueError(
                f"reduce={reduce!r} reduces over every axis but the first, so the arguments need at least one "
                "axis; they broadcast to shape ()"
            )
        return shape if reduce is None else shape[:1]
    raise ValueError(f"reduce must be None, 'mean' or 'sum'; got {reduce!r}")


def _bins(bins):
    if isinstance(bins, (bool, np.bool_)) or not isinstance(bins, (numbers.Integral, np.integer)):
        raise TypeError(f"bins must be a positive integer; got {type(bins).__name__} {bins!r}")
    if bins < 1:
        raise ValueError(f"bins must be a positive integer; got {bins}")
    return int(bins)


def _output(out, result_shape, dtype, args, backend):
    like = next((v for v in args.values() if not _checks.is_scalar(v)), None)
    if out is None and backend == "cuda" and like is None:  # only scalars: a Numba device array
        return _checks.empty_like_library(None, result_shape, dtype)
    return _checks.output(out, result_shape, dtype, like=like, inputs=args)


def _call(op, args, reduce, out, backend, **extra):
    name = resolve(backend, {**args, "out": out})
    args, shape, dtype = _operands(args, on_device=name == "cuda")
    result_shape = _result_shape(reduce, shape)
    out = _output(out, result_shape, dtype, args, name)
    implementation(op, name)(*args.values(), **extra, shape=shape, reduce=reduce, out=out)
    return out


@adapts
def normal_kl(mean1, logvar1, mean2, logvar2, *, reduce=None, out=None, backend=None):
    r"""KL divergence between diagonal Gaussians, elementwise or summed per sample, in one pass.

    .. math::

        \mathrm{KL}\big(\mathcal N(\mu_1, e^{v_1}) \,\|\, \mathcal N(\mu_2, e^{v_2})\big)
        = \tfrac12 \big(-1 + v_2 - v_1 + e^{v_1 - v_2} + (\mu_1 - \mu_2)^2 e^{-v_2}\big)

    (``v`` = log-variance), the KL term of the diffusion variational bound (Ho et al. 2020,
    Nichol and Dhariwal 2021) in nats.

    Parameters
    ----------
    mean1, logvar1, mean2, logvar2 : arrays or Python scalars
        Broadcast together like NumPy. Full tensors (B, ...), per-sample values
        (B, 1, ..., 1), values shared by all samples (shape (1, ...) or without the
        batch axis) and scalars run at full speed without materializing the
        broadcast; any other broadcast (e.g. per channel) is correct but copies.
        NumPy arrays run on the host, CUDA arrays on the GPU (C-contiguous).
    reduce : {None, "mean", "sum"}
        None: the elementwise KL, of the broadcast shape. "mean" / "sum": reduce over
        every axis but the first in the same pass, shape (B,) (B = the first axis of the
        broadcast shape, which then needs at least one axis). Sums accumulate in float64
        in an order that depends on the shape alone: bitwise identical for any number of
        threads, and run to run on the GPU.
    out : array, optional
        The result's shape and dtype, writeable; may be exactly one of the inputs.
    backend : {"numpy", "cpu", "cuda"}, optional

    Returns
    -------
    array of the broadcast shape (or (B,)), dtype ``numpy.result_type`` of the array
    arguments (Python scalars do not promote; integer data gives float64). float32 data
    is computed in float32, within 1e-5 relative of the float64 evaluation: the
    compiled backends evaluate the formula as 0.5 (g(v1 - v2) + (mu1 - mu2)^2 e^-v2) with
    g(x) = e^x - 1 - x from a series near 0, two non-negative terms, so the accuracy holds
    as p -> q too. The NumPy reference evaluates the formula as written, in float64.

    Raises ValueError for shapes that do not broadcast, a bad ``reduce`` or ``out``;
    TypeError for unsupported dtypes. NaN and inf propagate (KL(p || p) with infinite
    log-variances is NaN, as in NumPy).

    Examples
    --------
    >>> import numpy as np, fastgauss
    >>> mean = np.zeros((8, 3, 32, 32), np.float32)
    >>> fastgauss.normal_kl(mean, 0.0, mean + 1, 0.0, reduce="mean")      # 0.5 (1 - 0)^2 per element
    array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], dtype=float32)
    >>> logvar = np.log(np.full((8, 1, 1, 1), 2.0, np.float32))           # one variance per sample
    >>> fastgauss.normal_kl(mean, logvar, mean, 0.0).shape
    (8, 3, 32, 32)
    """
    args = {"mean1": mean1, "logvar1": logvar1, "mean2": mean2, "logvar2": logvar2}
    return _call("normal_kl", args, reduce, out, backend)


@adapts
def normal_logpdf(x, mean, logvar, *, reduce=None, out=None, backend=None):
    r"""Log density of a diagonal Gaussian, elementwise or summed per sample, in one pass.

    .. math::  \log \mathcal N(x; \mu, e^{v}) = -\tfrac12 \big(\log 2\pi + v + (x - \mu)^2 e^{-v}\big)

    Parameters
    ----------
    x, mean, logvar : arrays or Python scalars
        Broadcast together like NumPy (see :func:`normal_kl` for the fast forms).
    reduce : {None, "mean", "sum"}
        None: elementwise, the broadcast shape. "sum": the log density of each sample
        (all axes but the first), shape (B,); "mean": that divided by the number of
        elements per sample. float64 accumulation, thread-count independent.
    out : array, optional
        The result's shape and dtype, writeable; may be exactly one of the inputs.
    backend : {"numpy", "cpu", "cuda"}, optional

    Returns
    -------
    array of the broadcast shape (or (B,)), dtype ``numpy.result_type`` of the array
    arguments. NaN and inf propagate.

    Examples
    --------
    >>> import numpy as np, fastgauss
    >>> x = np.zeros((2, 3), np.float32)
    >>> fastgauss.normal_logpdf(x, 0.0, 0.0)[0, 0]                      # -log(2 pi) / 2
    np.float32(-0.9189385)
    >>> fastgauss.normal_logpdf(x, 0.0, 0.0, reduce="sum").shape
    (2,)
    """
    return _call("normal_logpdf", {"x": x, "mean": mean, "logvar": logvar}, reduce, out, backend)


@adapts
def discretized_gaussian_log_likelihood(x, means, log_scales, *, reduce=None, bins=255, out=None, backend=None):
    r"""Log-likelihood of image data under a discretized Gaussian decoder, in one pass.

    The decoder term L_0 of Ho et al. (2020) and Nichol and Dhariwal (2021), as
    improved-diffusion's ``discretized_gaussian_log_likelihood``: data ``x`` in [-1, 1]
    is taken as quantized to ``bins + 1`` levels, and the result is the log-probability
    of x's bin, of width 2 / bins centered on x, under N(means, e^(2 log_scales)):

    .. math::

        \log P(x) = \log\big(\Phi(z_+) - \Phi(z_-)\big),\quad
        z_\pm = e^{-s}\,(x - \mu \pm 1/\mathrm{bins})

    where the lowest bin (x < -0.999) integrates from -inf (log Phi(z_+)) and the highest
    (x > 0.999) to +inf (log(1 - Phi(z_-))); Phi is approximated by
    0.5 (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))), and probabilities are clamped at 1e-12
    before the log (NaN stays NaN). Values of x are not checked.

    Parameters
    ----------
    x, means, log_scales : arrays or Python scalars
        Broadcast together like NumPy (see :func:`normal_kl` for the fast forms).
        ``log_scales`` is the log standard deviation.
    reduce : {None, "mean", "sum"}
        None: elementwise, the broadcast shape. "mean" / "sum" over all axes but the first
        (improved-diffusion's mean_flat for the bound in nats), shape (B,); float64
        accumulation, thread-count independent.
    bins : int
        Number of bins across [-1, 1] (255 for 8-bit images).
    out : array, optional
        The result's shape and dtype, writeable; may be exactly one of the inputs.
    backend : {"numpy", "cpu", "cuda"}, optional

    Returns
    -------
    array of the broadcast shape (or (B,)), dtype ``numpy.result_type`` of the array
    arguments. The compiled backends evaluate the CDF as the logistic sigmoid of
    2 sqrt(2/pi) (z + 0.044715 z^3) (the same function) and, for bins above the mean,
    subtract the upper tails (1 - Phi) instead of two values near 1, so float32 results
    keep float32 accuracy in the tails; the NumPy reference evaluates the formula as
    written, in float64.

    Raises ValueError for shapes that do not broadcast, a bad ``reduce``, ``bins`` or
    ``out``; TypeError for unsupported dtypes or a non-integer ``bins``.

    Examples
    --------
    >>> import numpy as np, fastgauss
    >>> x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)     # every level of 8-bit data
    >>> p = np.exp(fastgauss.discretized_gaussian_log_likelihood(x, 0.0, np.log(0.5)))
    >>> round(float(p.sum()), 4)                                           # the bins cover the line
    1.0
    """
    bins = _bins(bins)
    return _call("discretized_gaussian_log_likelihood", {"x": x, "means": means, "log_scales": log_scales}, reduce, out, backend, bins=bins)


# --- Gaussian algebra ---


@adapts
def normal_product(mean1, logvar1, mean2, logvar2, *, out=None, backend=None):
    r"""The product of two diagonal Gaussian densities, elementwise, in one pass:

    .. math::

        \mathcal N(x; \mu_1, e^{v_1})\, \mathcal N(x; \mu_2, e^{v_2}) = e^{s}\, \mathcal N(x; \mu, e^{v}),
        \quad e^{-v} = e^{-v_1} + e^{-v_2},\quad \mu = e^{v} (\mu_1 e^{-v_1} + \mu_2 e^{-v_2}),
        \quad s = \log \mathcal N(\mu_1; \mu_2, e^{v_1} + e^{v_2})

    (``v`` = log-variance): precisions add, the mean is the precision-weighted average,
    and ``s`` is the log of the normalizing constant; the diagonal form of
    :func:`fastgauss.gaussian_product` (per-pixel Bayesian fusion, the Gaussian
    posterior of a Gaussian prior and likelihood).

    Parameters
    ----------
    mean1, logvar1, mean2, logvar2 : arrays or Python scalars
        Broadcast together like NumPy (see :func:`normal_kl` for the forms that run at
        full speed). NumPy arrays run on the host, CUDA arrays on the GPU (C-contiguous).
    out : tuple of three arrays (mean, logvar, log_scale), optional
        Each of the result's shape and dtype, writeable; each may be exactly one of the
        inputs (in place), and they must not overlap one another.
    backend : {"numpy", "cpu", "cuda"}, optional

    Returns
    -------
    (mean, logvar, log_scale) : three arrays of the broadcast shape (``out`` when given), dtype
        ``numpy.result_type`` of the array arguments (Python scalars do not promote).
        The compiled backends compute in the data dtype from the narrower factor:
        with lo <= hi the log-variances and e = e^(lo - hi) <= 1,
        mean = (mu_lo + e mu_hi) / (1 + e), v = lo - log(1 + e) and
        s = -0.5 (log 2 pi + hi + log(1 + e) + (mu1 - mu2)^2 e^-hi / (1 + e)), so no
        e^-v overflows for tiny variances; the NumPy reference evaluates the formulas
        above in float64. NaN and inf propagate.

    Raises ValueError for shapes that do not broadcast or a bad ``out``; TypeError for
    unsupported dtypes or an ``out`` that is not a tuple of three arrays.

    Examples
    --------
    >>> import numpy as np, fastgauss
    >>> mean, logvar, log_scale = fastgauss.normal_product(np.zeros(3), 0.0, np.ones(3), 0.0)
    >>> mean, np.exp(logvar)                               # halfway, half the variance
    (array([0.5, 0.5, 0.5]), array([0.5, 0.5, 0.5]))
    """
    args = {"mean1": mean1, "logvar1": logvar1, "mean2": mean2, "logvar2": logvar2}
    if out is None:
        out = (None, None, None)
    elif not isinstance(out, tuple) or len(out) != 3:
        raise TypeError(f"out must be a tuple of three arrays (mean, logvar, log_scale); got {type(out).__name__}")
    labels = [f"out[{i}]" for i in range(3)]
    name = resolve(backend, {**args, **dict(zip(labels, out))})
    args, shape, dtype = _operands(args, on_device=name == "cuda")
    outs = [
        _output(None, shape, dtype, args, name) if o is None else _checks.output(o, shape, dtype, like=None, inputs=args, name=label)
        for o, label in zip(out, labels)
    ]
    for i in range(3):
        for j in range(i + 1, 3):
            if _checks.may_overlap(outs[i], outs[j]):
                raise ValueError(f"{labels[i]} and {labels[j]} overlap; the three outputs must be separate arrays")
    implementation("normal_product", name)(*args.values(), shape=shape, mean_out=outs[0], logvar_out=outs[1], log_scale_out=outs[2])
    return tuple(outs)


# --- VJPs (fastgauss.vjp) ------------------------------------------------------------------


def _vjp_call(op, cotangent, args, reduce, wrt, backend, **extra):
    """{name: gradient} of the array arguments of ``op`` (or those in ``wrt``), each of its own
    shape (broadcast axes summed) and the result dtype, from the cotangent of the result.
    Python and NumPy scalars are constants: they get no gradient."""
    name = resolve(backend, {**args, "cotangent": cotangent})
    on_device = name == "cuda"
    differentiable = [n for n, v in args.items() if not _checks.is_scalar(v)]
    args, shape, dtype = _operands(args, on_device)
    g = _checks.cotangent(cotangent, _result_shape(reduce, shape), dtype, on_device)
    if g is None:
        raise ValueError(f"{op}: the cotangent is None")
    wanted = _checks.wanted(wrt, differentiable, op)
    grads = {
        n: _checks.output(None, _checks.shape_dtype(v)[0], dtype, like=v, inputs={}) if n in wanted else None
        for n, v in args.items()
    }
    implementation(f"{op}_vjp", name)(
        g, *args.values(), **extra, shape=shape, reduce=reduce, **{f"grad_{n}": v for n, v in grads.items()}
    )
    return {n: v for n, v in grads.items() if v is not None}


def _vjp_normal_kl(cotangent, mean1, logvar1, mean2, logvar2, *, reduce=None, out=None, backend=None, wrt=None):
    args = {"mean1": mean1, "logvar1": logvar1, "mean2": mean2, "logvar2": logvar2}
    return _vjp_call("normal_kl", cotangent, args, reduce, wrt, backend)


def _vjp_normal_logpdf(cotangent, x, mean, logvar, *, reduce=None, out=None, backend=None, wrt=None):
    return _vjp_call("normal_logpdf", cotangent, {"x": x, "mean": mean, "logvar": logvar}, reduce, wrt, backend)


def _vjp_discretized_gaussian_log_likelihood(cotangent, x, means, log_scales, *, reduce=None, bins=255, out=None, backend=None,
                                             wrt=None):
    args = {"x": x, "means": means, "log_scales": log_scales}
    return _vjp_call("discretized_gaussian_log_likelihood", cotangent, args, reduce, wrt, backend, bins=_bins(bins))
