r"""Public training-objective ops: the variational bound in bits per dimension, learned-range
variances, weighted noise-prediction losses and a dataset NLL evaluator.

Each term is one fused pass over the data that ends in the per-sample value (or the
elementwise values with ``reduce=None``), and each differentiable op has a backward
pass (``_vjp_<op>``, the framework-neutral VJP contract that ``fastgauss.vjp`` and the
PyTorch adapter call). validate -> dispatch -> backend function, as every op.

Shapes: the data arguments (x0, x_t, model_output, var_output, noise) share one shape
(B, ...); t is an integer or an integer array (B,). dtype: numpy.result_type of the data
arguments (float32 computed natively; reductions accumulate in float64 in a fixed order; the
backward passes evaluate their derivatives in float64, as the KL family's do, since the
bound's cancellations cost float32 up to 3e-5 of a sample's gradient scale).
"""

import math
import numbers
import sys
import time
import warnings
from typing import NamedTuple

import numpy as np

from fastgauss import _checks
from fastgauss._dispatch import adapts, implementation, resolve
from fastgauss.diffusion import PREDICTIONS, _check_choice, _check_clip, q_sample
from fastgauss.kl import _result_shape
from fastgauss.random import Generator, default_rng

VAR_KINDS = ("learned", "learned_range", "fixed_small", "fixed_large")
WEIGHTINGS = (None, "snr", "min_snr")


def _inputs(backend, arrays, t, schedule, out, reduce, extra=None):
    """Validate the data arguments (one shape), t, reduce and out. Returns (backend name,
    arrays normalized, t, out, data shape, dtype). ``extra``: arrays (the cotangent) that take
    part in backend resolution only."""
    name = resolve(backend, {**arrays, "t": t, "out": out, **(extra or {})})
    on_device = name == "cuda"
    schedule = _checks.schedule(schedule)
    normalized, dtypes, shape, first = {}, {}, None, None
    for key, value in arrays.items():
        if value is None:
            normalized[key] = None
            continue
        value = _checks.data_array(key, value, on_device)
        value_shape, dtypes[key] = _checks.shape_dtype(value)
        if shape is None:
            shape, first = value_shape, key
        else:
            _checks.same_shape(key, value_shape, first, shape)
        normalized[key] = value
    dtype = _checks.result_dtype(**dtypes)
    if t is not None:
        t = _checks.timesteps(t, schedule.num_timesteps, shape)
    result_shape = _result_shape(reduce, shape)
    like = normalized[first]
    out = _checks.output(out, result_shape, dtype, like=like, inputs=normalized)
    return name, normalized, t, out, tuple(shape), dtype


def _check_var(var_kind, var_output):
    _check_choice("var_kind", var_kind, VAR_KINDS)
    if var_output is None and var_kind in ("learned", "learned_range"):
        raise ValueError(f"var_kind={var_kind!r} needs var_output (the model's variance output); pass it, or use a fixed kind")


def _check_weighting(weighting, gamma):
    _check_choice("weighting", weighting, WEIGHTINGS)
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not gamma > 0:
        raise ValueError(f"gamma must be a positive number; got {gamma!r}")
    return float(gamma)


def _check_real(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return float(value)


@adapts
def model_log_variance(var_output, t, schedule, *, kind, out=None, backend=None):
    r"""The model's per-element log variance of p(x_{t-1} | x_t), as improved-diffusion defines it.

    .. math::

        \text{learned: } v, \qquad
        \text{learned\_range: } \tfrac{v + 1}{2} \log\beta_t + \big(1 - \tfrac{v + 1}{2}\big) \log\tilde\beta_t,

    fixed_small: log beta~_t (``schedule.posterior_log_variance_clipped[t]``); fixed_large:
    log beta_t, except at t = 0 where it is log beta~_1 (improved-diffusion's
    ``np.append(posterior_variance[1], betas[1:])``, for a better decoder likelihood).

    Parameters
    ----------
    var_output : array (B, ...) (or any shape for a scalar t)
        The model's variance output v (learned_range expects v in [-1, 1]); for the fixed
        kinds only its shape and dtype count.
    t : int or integer array (B,).   schedule : NoiseSchedule.
    kind : {"learned", "learned_range", "fixed_small", "fixed_large"}
    out, backend : as for every op.

    Returns an array of var_output's shape and dtype (integer data gives float64).

    >>> schedule = fastgauss.NoiseSchedule.linear(1000)
    >>> v = np.zeros((2, 3, 8, 8), np.float32)      # the middle of [min, max] in log space
    >>> logvar = fastgauss.model_log_variance(v, np.array([0, 500]), schedule, kind="learned_range")
    >>> logvar.shape, logvar.dtype
    ((2, 3, 8, 8), dtype('float32'))
    """
    _check_choice("kind", kind, VAR_KINDS)
    name = resolve(backend, {"var_output": var_output, "t": t, "out": out})
    var_output = _checks.data_array("var_output", var_output, name == "cuda")
    shape, dtype = _checks.shape_dtype(var_output)
    dtype = _checks.result_dtype(var_output=dtype)
    t = _checks.timesteps(t, _checks.schedule(schedule).num_timesteps, shape)
    out = _checks.output(out, shape, dtype, like=var_output, inputs={"var_output": var_output})
    implementation("model_log_variance", name)(var_output, t, schedule, out, kind=kind)
    return out


def _vlb_args(x0, xt, t, model_output, schedule, prediction, var_output, var_kind, clip, reduce, out, backend, extra=None):
    _check_choice("prediction", prediction, PREDICTIONS)
    _check_var(var_kind, var_output)
    clip = _check_clip(clip)
    arrays = {"x0": x0, "xt": xt, "model_output": model_output, "var_output": var_output}
    name, arrays, t, out, shape, dtype = _inputs(backend, arrays, t, schedule, out, reduce, extra)
    options = dict(prediction=prediction, var_kind=var_kind, clip=clip, reduce=reduce)
    return name, arrays, t, out, shape, dtype, options


@adapts
def vlb_terms(x0, xt, t, model_output, schedule, *, prediction="epsilon", var_output=None, var_kind="learned_range",
              clip=None, reduce="mean", out=None, backend=None):
    r"""The variational-bound term of each sample at its timestep, in bits per dimension, in one pass.

    .. math::

        L_t = \mathrm{KL}\big(q(x_{t-1} \mid x_t, x_0) \,\|\, p(x_{t-1} \mid x_t)\big) / \ln 2
              \quad (t > 0), \qquad
        L_0 = -\log p(x_0 \mid x_1) / \ln 2

    with q the forward posterior N(c1 x0 + c2 x_t, beta~_t) (its log variance clipped at
    t = 0, as improved-diffusion), p = N(mu_hat, e^logvar) where
    mu_hat = c1 clip(x0_hat) + c2 x_t, x0_hat the x0 implied by the model output
    ("epsilon": (x_t - sqrt(1 - abar_t) m) / sqrt(abar_t); "sample": m; "v":
    sqrt(abar_t) x_t - sqrt(1 - abar_t) m), logvar from :func:`model_log_variance`, and
    L_0 the discretized Gaussian decoder over 255 bins (improved-diffusion's
    ``discretized_gaussian_log_likelihood`` with log_scales = logvar / 2). This is
    improved-diffusion's ``_vb_terms_bpd``; nothing full-size is materialized.

    Parameters
    ----------
    x0, xt, model_output : arrays (B, ...) of one shape
        Clean data (in [-1, 1] for the decoder), the noised sample, the model's mean output.
    t : int or integer array (B,).   schedule : NoiseSchedule.
    prediction : "epsilon", "sample" or "v".
    var_output : array (B, ...), optional — the model's variance output (required for the
        learned kinds).   var_kind : see :func:`model_log_variance`.
    clip : None or a positive number — clamp x0_hat to [-clip, clip] (clip_denoised).
    reduce : "mean" (bits/dim per sample, shape (B,)), "sum" (bits per sample) or None
        (elementwise, in bits). float64 accumulation in a fixed order.
    out, backend : as for every op.

    >>> schedule = fastgauss.NoiseSchedule.linear(1000)
    >>> rng = np.random.default_rng(0)
    >>> x0 = rng.uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    >>> noise = rng.standard_normal(x0.shape, dtype=np.float32)
    >>> t = np.array([0, 500])
    >>> xt = fastgauss.q_sample(x0, t, schedule, noise)
    >>> eps_hat, v = noise, np.zeros_like(x0)           # the model's outputs
    >>> bpd = fastgauss.vlb_terms(x0, xt, t, eps_hat, schedule, var_output=v, var_kind="learned_range")
    >>> bpd.shape, bpd.dtype
    ((2,), dtype('float32'))
    """
    name, arrays, t, out, _, _, options = _vlb_args(x0, xt, t, model_output, schedule, prediction, var_output, var_kind, clip,
                                                    reduce, out, backend)
    implementation("vlb_terms", name)(arrays["x0"], arrays["xt"], t, arrays["model_output"], schedule, arrays["var_output"],
                                      out, **options)
    return out


@adapts
def prior_bpd(x0, schedule, *, out=None, backend=None):
    r"""The prior term per sample in bits/dim: KL(q(x_{T-1} | x0) || N(0, I)) / ln 2, averaged over
    each sample's elements (improved-diffusion's ``_prior_bpd``), one pass.

    .. math::  \tfrac{1}{\ln 2}\,\mathrm{mean}\;\mathrm{KL}\big(\mathcal N(\sqrt{\bar\alpha_{T-1}} x_0,
               1 - \bar\alpha_{T-1}) \,\|\, \mathcal N(0, 1)\big)

    x0 : array (B, ...); returns (B,) of its dtype (integer data: float64).

    >>> schedule = fastgauss.NoiseSchedule.linear(1000)
    >>> fastgauss.prior_bpd(np.ones((2, 3, 8, 8)), schedule)   # ~abar_T / (2 ln 2) for data of scale 1
    array([2.91...e-05, 2.91...e-05])
    """
    name, arrays, _, out, _, _ = _inputs(backend, {"x0": x0}, None, schedule, out, "mean")
    implementation("prior_bpd", name)(arrays["x0"], schedule, out)
    return out


def _loss_args(model_output, x0, noise, t, schedule, prediction, weighting, gamma, reduce, out, backend, var_output=None,
               var_kind=None, extra=None):
    _check_choice("prediction", prediction, PREDICTIONS)
    gamma = _check_weighting(weighting, gamma)
    arrays = {"model_output": model_output}
    if var_kind is not None:
        _check_var(var_kind, var_output)
        arrays["var_output"] = var_output
    arrays.update(x0=x0, noise=noise)
    name, arrays, t, out, shape, dtype = _inputs(backend, arrays, t, schedule, out, reduce, extra)
    options = dict(prediction=prediction, weighting=weighting, gamma=gamma, reduce=reduce)
    return name, arrays, t, out, shape, dtype, options


@adapts
def diffusion_loss(model_output, x0, noise, t, schedule, *, prediction="epsilon", weighting=None, gamma=5.0, reduce="mean",
                   out=None, backend=None):
    r"""The weighted noise-prediction loss per sample, in one pass.

    .. math::  L = w_t\, \mathrm{mean}\big((m - y)^2\big), \qquad
               y = \epsilon \;(\text{epsilon}),\; x_0 \;(\text{sample}),\;
               \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1 - \bar\alpha_t}\, x_0 \;(\text{v})

    weighting None: w_t = 1. "snr" and "min_snr" weight the equivalent x0 error
    ||x0 - x0_hat||^2 by W_t = SNR_t and W_t = min(SNR_t, gamma) (Hang et al. 2023); since
    the prediction's error is the x0 error times SNR_t (epsilon), SNR_t + 1 (v) or 1
    (sample), w_t = W_t / SNR_t, W_t / (SNR_t + 1), W_t respectively: min-SNR gives
    min(SNR_t, gamma) / SNR_t for epsilon, min(SNR_t, gamma) / (SNR_t + 1) for v and
    min(SNR_t, gamma) for sample, and "snr" gives 1, SNR_t / (SNR_t + 1) and SNR_t
    (epsilon's weight is 1 where W_t = SNR_t, SNR_t = 0 included). SNR_t = schedule.snr[t].

    Parameters
    ----------
    model_output, x0, noise : arrays (B, ...) of one shape (noise: the eps that made x_t).
    t : int or integer array (B,).   schedule : NoiseSchedule.
    prediction : "epsilon", "sample" or "v".   weighting : None, "snr" or "min_snr".
    gamma : positive number (min_snr).   reduce : "mean" (B,), "sum" (B,) or None (elementwise).
    out, backend : as for every op.

    >>> schedule = fastgauss.NoiseSchedule.linear(1000)
    >>> x0 = np.zeros((2, 3, 8, 8), np.float32)
    >>> noise = np.ones_like(x0)
    >>> fastgauss.diffusion_loss(noise + 0.5, x0, noise, np.array([10, 500]), schedule)  # mean of 0.5^2
    array([0.25, 0.25], dtype=float32)
    >>> loss = fastgauss.diffusion_loss(noise + 0.5, x0, noise, np.array([10, 500]), schedule, weighting="min_snr")
    """
    name, arrays, t, out, _, _, options = _loss_args(model_output, x0, noise, t, schedule, prediction, weighting, gamma,
                                                     reduce, out, backend)
    implementation("diffusion_loss", name)(arrays["model_output"], arrays["x0"], arrays["noise"], t, schedule, out, **options)
    return out


@adapts
def hybrid_loss(model_output, var_output, x0, noise, t, schedule, *, prediction="epsilon", var_kind="learned_range",
                weighting=None, gamma=5.0, vb_scale=1.0, reduce="mean", out=None, backend=None):
    r"""Improved DDPM's hybrid objective (Nichol and Dhariwal 2021): the loss of
    :func:`diffusion_loss` plus ``vb_scale`` times the vlb term of :func:`vlb_terms` (bits/dim)
    computed with the model mean held constant, in one pass.

    .. math::  L = w_t\,\mathrm{mean}\big((m - y)^2\big) + s\, L_t\big(x_0, x_t, \mathrm{sg}(m), v\big),
               \quad x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon

    as improved-diffusion's training_losses for learned variances (its RESCALED_MSE uses
    vb_scale = num_timesteps / 1000): the gradient reaches model_output only through the
    squared error and var_output only through the bound (sg = stop-gradient). x_t is
    recomputed from x0 and noise in the pass (no clip). Arguments as :func:`diffusion_loss`
    and :func:`vlb_terms`; var_output is required.

    >>> schedule = fastgauss.NoiseSchedule.linear(1000)
    >>> x0 = np.zeros((2, 3, 8, 8), np.float32)
    >>> noise = np.ones_like(x0)
    >>> loss = fastgauss.hybrid_loss(noise + 0.5, np.zeros_like(x0), x0, noise, np.array([10, 500]), schedule)
    >>> loss.shape, bool(np.all(loss > 0.25))        # the squared error's 0.25 plus the bound
    ((2,), True)
    """
    if var_output is None:
        raise ValueError("hybrid_loss needs var_output (the model's variance output)")
    vb_scale = _check_real("vb_scale", vb_scale)
    name, arrays, t, out, _, _, options = _loss_args(model_output, x0, noise, t, schedule, prediction, weighting, gamma,
                                                     reduce, out, backend, var_output=var_output, var_kind=var_kind)
    implementation("hybrid_loss", name)(arrays["model_output"], arrays["var_output"], arrays["x0"], arrays["noise"], t, schedule,
                                        out, var_kind=var_kind, vb_scale=vb_scale, **options)
    return out


# --- gradients (the VJP contract) -----------------------------------------------------------


def _gradients(cotangent, result, arrays, differentiable, wrt, on_device):
    """Validate the cotangent against the forward's result and allocate the gradients of the
    wanted arguments: {name: array or None} over ``differentiable``."""
    cotangent = _checks.data_array("cotangent", cotangent, on_device)
    shape, dtype = _checks.shape_dtype(cotangent)
    _checks.result_dtype(cotangent=dtype)
    result_shape, result_dtype = _checks.shape_dtype(result)
    if tuple(shape) != tuple(result_shape):
        raise ValueError(f"cotangent must have the forward result's shape {tuple(result_shape)}; got {tuple(shape)}")
    passed = [n for n in differentiable if arrays.get(n) is not None]
    if wrt is None:
        wanted = passed
    else:
        wanted = [wrt] if isinstance(wrt, str) else list(wrt)
        unknown = [n for n in wanted if n not in passed]
        if unknown:
            raise ValueError(f"wrt names {unknown}, which are not differentiable array arguments of this call; choose from {passed}")
    grads = {}
    for n in differentiable:
        if n in wanted:
            like = arrays[n]
            grads[n] = _checks.output(None, _checks.shape_dtype(like)[0], result_dtype, like=like, inputs={})
        else:
            grads[n] = None
    return cotangent, grads


def _result(shape, reduce, dtype):
    """A stand-in for the forward result (shape, dtype) without running it."""
    return np.lib.stride_tricks.as_strided(np.empty(1, dtype), _result_shape(reduce, shape), [0] * len(_result_shape(reduce, shape)))


def _vjp_vlb_terms(cotangent, x0, xt, t, model_output, schedule, *, prediction="epsilon", var_output=None,
                   var_kind="learned_range", clip=None, reduce="mean", wrt=None, backend=None):
    """VJP of :func:`vlb_terms`: {name: cotangent . d vlb / d name} for x0, xt, model_output and
    var_output (those passed, or those in ``wrt``); each of its argument's shape and the
    forward's dtype. One pass; where the clip clamps x0_hat the model gets no gradient."""
    name, arrays, t, _, shape, dtype, options = _vlb_args(x0, xt, t, model_output, schedule, prediction, var_output, var_kind,
                                                          clip, reduce, None, backend, extra={"cotangent": cotangent})
    cotangent, grads = _gradients(cotangent, _result(shape, reduce, dtype), arrays, ("x0", "xt", "model_output", "var_output"),
                                  wrt, name == "cuda")
    implementation("vlb_terms_vjp", name)(
        cotangent, arrays["x0"], arrays["xt"], t, arrays["model_output"], schedule, arrays["var_output"], **options,
        x0_grad=grads["x0"], xt_grad=grads["xt"], model_output_grad=grads["model_output"], var_output_grad=grads["var_output"],
    )
    return {n: g for n, g in grads.items() if g is not None}


def _vjp_diffusion_loss(cotangent, model_output, x0, noise, t, schedule, *, prediction="epsilon", weighting=None, gamma=5.0,
                        reduce="mean", wrt=None, backend=None):
    """VJP of :func:`diffusion_loss` in model_output and x0 (the noise is data, not differentiated)."""
    name, arrays, t, _, shape, dtype, options = _loss_args(model_output, x0, noise, t, schedule, prediction, weighting, gamma,
                                                           reduce, None, backend, extra={"cotangent": cotangent})
    cotangent, grads = _gradients(cotangent, _result(shape, reduce, dtype), arrays, ("model_output", "x0"), wrt, name == "cuda")
    implementation("diffusion_loss_vjp", name)(
        cotangent, arrays["model_output"], arrays["x0"], arrays["noise"], t, schedule, **options,
        model_output_grad=grads["model_output"], x0_grad=grads["x0"],
    )
    return {n: g for n, g in grads.items() if g is not None}


def _vjp_hybrid_loss(cotangent, model_output, var_output, x0, noise, t, schedule, *, prediction="epsilon",
                     var_kind="learned_range", weighting=None, gamma=5.0, vb_scale=1.0, reduce="mean", wrt=None, backend=None):
    """VJP of :func:`hybrid_loss` in model_output (through the squared error only) and var_output
    (through the bound only); x0 and noise are data, not differentiated."""
    if var_output is None:
        raise ValueError("hybrid_loss needs var_output (the model's variance output)")
    vb_scale = _check_real("vb_scale", vb_scale)
    name, arrays, t, _, shape, dtype, options = _loss_args(model_output, x0, noise, t, schedule, prediction, weighting, gamma,
                                                           reduce, None, backend, var_output=var_output, var_kind=var_kind,
                                                           extra={"cotangent": cotangent})
    cotangent, grads = _gradients(cotangent, _result(shape, reduce, dtype), arrays, ("model_output", "var_output"), wrt,
                                  name == "cuda")
    implementation("hybrid_loss_vjp", name)(
        cotangent, arrays["model_output"], arrays["var_output"], arrays["x0"], arrays["noise"], t, schedule,
        var_kind=var_kind, vb_scale=vb_scale, **options,
        model_output_grad=grads["model_output"], var_output_grad=grads["var_output"],
    )
    return {n: g for n, g in grads.items() if g is not None}


# --- the dataset NLL ------------------------------------------------------------------------


class NLL(NamedTuple):
    """The result of :func:`nll_bpd`. ``bpd``: prior + the vlb terms summed so far, (B,) bits/dim;
    ``prior``: the prior term (B,); ``terms``: (B, T) float64, the vlb term of each timestep
    (NaN where not computed); ``timesteps``: the timesteps covered, in evaluation order;
    ``complete``: every timestep covered (False after an interrupt)."""

    bpd: np.ndarray
    prior: np.ndarray
    terms: np.ndarray
    timesteps: np.ndarray
    complete: bool


class _Progress:
    """tqdm when it is installed, else one line of text rewritten in place (stderr)."""

    def __init__(self, total, enabled):
        self.total, self.done, self.bar, self.enabled = total, 0, None, enabled
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc="nll_bpd", unit="t")
        self.start = time.monotonic()

    def update(self, n, bpd):
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(bpd=f"{bpd:.4f}")
        else:
            elapsed = time.monotonic() - self.start
            sys.stderr.write(f"\rnll_bpd: {self.done}/{self.total} timesteps, {elapsed:.0f} s, {bpd:.4f} bits/dim so far")
            sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")


def _host(a):
    return a if isinstance(a, np.ndarray) else _checks.to_host(a)


def nll_bpd(model, x0, schedule, *, rng, batch_timesteps=1, prediction="epsilon", var_kind="fixed_small", clip=None,
            progress=True, backend=None):
    r"""The full variational bound of each sample, in bits per dimension: what a paper reports as
    the test-set NLL (improved-diffusion's calc_bpd_loop).

    .. math::  \mathrm{NLL}(x_0) \le L_{prior} + \sum_{t=0}^{T-1} L_t \quad \text{(bits/dim)}

    For t = T-1 down to 0 it draws x_t = q_sample(x0, t, noise from ``rng``), calls
    ``model(x_t, t)`` (t an int64 array (B,), or (k B,) when stacking) and adds the fused
    :func:`vlb_terms`; the prior is :func:`prior_bpd`.

    Parameters
    ----------
    model : callable (x_t, t) -> model_output, or (model_output, var_output) for learned variances.
    x0 : array (B, ...) in [-1, 1].   schedule : NoiseSchedule.
    rng : fastgauss.Generator or int seed — the noise of every x_t.
    batch_timesteps : int >= 1 — timesteps stacked into one model call (a batch of k B
        samples; host arrays only for k > 1).
    prediction, var_kind, clip : as :func:`vlb_terms`.
    progress : show a progress bar (tqdm when installed, else one text line on stderr).

    Returns an :class:`NLL` (bpd, prior, terms, timesteps, complete). On KeyboardInterrupt
    the sums so far are returned (complete False, with a warning): nothing is lost.

    >>> schedule = fastgauss.NoiseSchedule.linear(100)
    >>> x0 = np.zeros((2, 3, 8, 8))
    >>> net = lambda xt, t: np.zeros_like(xt)            # a model that predicts eps = 0
    >>> result = fastgauss.nll_bpd(net, x0, schedule, rng=0, progress=False)
    >>> result.bpd.shape, result.terms.shape, result.complete
    ((2,), (2, 100), True)
    """
    if _checks.is_dask_array(x0):
        raise TypeError(
            "nll_bpd does not take Dask arrays (it calls model on whole arrays, one timestep at a time); pass "
            "x0.compute(), or call it on each block of samples (for block in x0.blocks: nll_bpd(model, block.compute(), ...))"
        )
    if isinstance(batch_timesteps, bool) or not isinstance(batch_timesteps, numbers.Integral) or batch_timesteps < 1:
        raise ValueError(f"batch_timesteps must be a positive integer; got {batch_timesteps!r}")
    if not callable(model):
        raise TypeError(f"model must be callable as model(x_t, t); got {type(model).__name__}")
    _check_choice("prediction", prediction, PREDICTIONS)
    _check_choice("var_kind", var_kind, VAR_KINDS)
    schedule = _checks.schedule(schedule)
    rng = rng if isinstance(rng, Generator) else default_rng(rng)  # one stream for every timestep
    prior = _host(prior_bpd(x0, schedule, backend=backend)).astype(np.float64)
    batch = prior.shape[0]
    T = schedule.num_timesteps
    terms = np.full((batch, T), np.nan)
    covered = []
    bar = _Progress(T, progress)
    complete = False
    try:
        order = list(range(T - 1, -1, -1))
        for start in range(0, T, batch_timesteps):
            group = order[start : start + batch_timesteps]
            if len(group) > 1 and not isinstance(x0, np.ndarray):
                raise ValueError("batch_timesteps > 1 needs host (NumPy) x0")
            stacked = x0 if len(group) == 1 else np.concatenate([np.asarray(x0)] * len(group))
            t = np.repeat(np.asarray(group, np.int64), batch)
            if _checks.is_device_array(x0):  # timesteps live with the data
                t = _checks.from_host_like(x0, t)
            xt = q_sample(stacked, t, schedule, rng=rng, backend=backend)
            output = model(xt, t)
            mean, var_output = output if isinstance(output, tuple) else (output, None)
            values = _host(vlb_terms(stacked, xt, t, mean, schedule, prediction=prediction, var_output=var_output,
                                     var_kind=var_kind, clip=clip, backend=backend))
            for i, step in enumerate(group):
                terms[:, step] = values[i * batch : (i + 1) * batch]
                covered.append(step)
            bar.update(len(group), float(np.mean(prior + np.nansum(terms, axis=1))))
        complete = True
    except KeyboardInterrupt:
        warnings.warn(f"nll_bpd interrupted after {len(covered)} of {T} timesteps; returning the partial sums", RuntimeWarning)
    finally:
        bar.close()
    bpd = prior + np.where(np.isnan(terms), 0.0, terms).sum(axis=1)
    return NLL(bpd, prior, terms, np.asarray(covered, np.int64), complete)
