"""Gradients without a framework: ``fastgauss.vjp``, the vector-Jacobian product of an op.

The torch adapter (fastgauss.interop.torch) runs its backward through this function, and
any other framework can wrap it the same way. For op ``name`` of family ``fam`` it calls
``fastgauss.<fam>._vjp_<name>``, which validates the call like the forward and runs the op's
backward kernel ("<name>_vjp" in the registry: a NumPy reference, a Numba CPU kernel and a
CUDA kernel, chosen like every op's backend).
"""

from fastgauss import diffusion, kl, mvn, objective
from fastgauss._dispatch import OPS, adapts

_FAMILIES = {"diffusion": diffusion, "kl": kl, "mvn": mvn, "objective": objective}


def _lookup(op):
    name = op if isinstance(op, str) else getattr(op, "__name__", None)
    if not isinstance(name, str) or name not in OPS or name.endswith("_vjp") or OPS[name].family not in _FAMILIES:
        raise ValueError(f"op must be a fastgauss op (the function or its name); got {op!r}")
    function = getattr(_FAMILIES[OPS[name].family], f"_vjp_{name}", None)
    if function is None:
        raise NotImplementedError(f"fastgauss.{name} has no gradient (no fastgauss.{OPS[name].family}._vjp_{name})")
    return function


def differentiable(op):
    """True when ``op`` (a function or a name) has a gradient through :func:`vjp`."""
    try:
        _lookup(op)
    except (ValueError, NotImplementedError):
        return False
    return True


@adapts
def vjp(op, cotangent, *args, wrt=None, **kwargs):
    r"""The gradients of an op's array arguments, given the cotangent of its result.

    .. math::  \bar a = \Big(\frac{\partial\, \mathrm{op}(a, b, \ldots)}{\partial a}\Big)^{\!\top} \bar y

    Parameters
    ----------
    op : a differentiable fastgauss op (``fastgauss.normal_kl``...) or its name.
    cotangent : array of the op's result shape and dtype (dL/dresult); for an op that
        returns a tuple (``q_posterior``; ``return_noise``/``return_x0``), a tuple with one
        entry per output, None for an output without one.
    *args, **kwargs : exactly the forward call's arguments (``backend=`` picks the backward's
        backend the same way; ``out=`` and ``rng=`` are accepted and ignored, except that a
        ``noise`` argument makes the noise differentiable).
    wrt : None (every differentiable array argument), an argument name, or a sequence of them.

    Returns
    -------
    dict {argument name: gradient}, each of that argument's own shape (axes it was broadcast
    along summed, NumPy's rules) and of the forward's result dtype, of the inputs' kind
    (NumPy, CUDA or, through the adapter, torch). Python and NumPy scalars get none.

    Differentiable: q_sample (x0, noise), q_posterior's mean, predict_x0, predict_eps,
    predict_v, v_to_x0, v_to_eps, posterior_mean_from_eps (both arrays), ddpm_step and
    ddim_step (model_output, xt, noise; zero through an active clip, as torch.clamp),
    normal_kl, normal_logpdf, discretized_gaussian_log_likelihood (every array argument;
    zero where a probability was clamped), and the mvn ops where their family defines them.

    >>> import numpy as np, fastgauss
    >>> mean = np.zeros((2, 3)); logvar = np.zeros((2, 3))
    >>> g = fastgauss.vjp(fastgauss.normal_kl, np.ones(2), mean, logvar, 1.0, 0.0, reduce="sum")
    >>> g["mean1"]                      # d/dmean1 of sum 0.5 (mean1 - 1)^2 = mean1 - 1
    array([[-1., -1., -1.],
           [-1., -1., -1.]])
    """
    return _lookup(op)(cotangent, *args, wrt=wrt, **kwargs)
