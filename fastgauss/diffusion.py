"""Public diffusion ops: validate -> dispatch -> backend function."""

import numbers

import numpy as np

from fastgauss import _checks
from fastgauss._plans import diffusion as plan
from fastgauss._dispatch import adapts, implementation, resolve
from fastgauss._plans.stream import as_stream, blocks_needed


@adapts
def q_sample(x0, t, schedule, noise=None, *, rng=None, out=None, return_noise=False, backend=None):
    r"""Forward-noise clean data to timestep ``t`` in one fused pass.

    .. math::  x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon

    Parameters
    ----------
    x0 : array (B, ...) or any shape when ``t`` is a scalar
        Clean data. NumPy arrays (or array-likes) run on the host; CUDA arrays
        (CuPy, PyTorch, Numba device arrays) on the GPU.
    t : int or integer array of shape (B,)
        0-based timesteps, ``0 <= t < schedule.num_timesteps``; an array gives one
        timestep per sample (leading axis of ``x0``).
    schedule : NoiseSchedule
        Supplies ``sqrt_alphas_cumprod`` and ``sqrt_one_minus_alphas_cumprod``,
        cast to the output dtype.
    noise : array, shape of ``x0``, optional
        The Gaussian noise epsilon, on the same side (host or GPU) as ``x0``. When
        None, the noise is generated inside the same kernel pass from ``rng``: it
        equals ``rng.standard_normal(x0.shape, dtype=<output dtype>)`` from a generator
        in the same state, exactly, on every backend, and advances ``rng`` alike.
    rng : fastgauss.Generator, int seed or None
        The generator for ``noise=None`` (None: fresh OS entropy). Passing both
        ``noise`` and ``rng`` is a ValueError.
    out : array, optional
        Where to write x_t: the result's shape and dtype, writeable; may be exactly
        ``x0`` or ``noise`` for an in-place update.
    return_noise : bool
        Also return the noise, (x_t, noise): training regresses on it. Generated noise
        is written once, in the same pass, never read back.
    backend : {"numpy", "cpu", "cuda"}, optional
        Overrides ``use_backend``/``set_backend``/FASTGAUSS_BACKEND/auto.

    Returns
    -------
    x_t : array of x0's shape, dtype ``numpy.result_type(x0, noise)`` (float32 stays
        float32; integer data gives float64), of the same kind as the inputs; or
        ``(x_t, noise)`` with ``return_noise=True``.

    Raises ValueError for shape mismatches, t out of range, and a bad ``out``;
    TypeError for non-integer t or unsupported dtypes. NaN and inf propagate.

    Examples
    --------
    >>> import numpy as np, fastgauss
    >>> schedule = fastgauss.NoiseSchedule.linear(1000)
    >>> x0 = np.zeros((4, 3, 8, 8), np.float32)
    >>> noise = np.ones_like(x0)
    >>> xt = fastgauss.q_sample(x0, np.array([0, 10, 100, 999]), schedule, noise)
    >>> xt.dtype, xt.shape
    (dtype('float32'), (4, 3, 8, 8))
    >>> xt, eps = fastgauss.q_sample(x0, 500, schedule, rng=fastgauss.default_rng(0), return_noise=True)
    """
    name = resolve(backend, {"x0": x0, "t": t, "noise": noise, "out": out})
    on_device = name == "cuda"
    schedule = _checks.schedule(schedule)
    x0 = _checks.data_array("x0", x0, on_device)
    shape, x0_dtype = _checks.shape_dtype(x0)
    noise, generator, dtypes = _noise_source(noise, rng, shape, "x0", on_device, x0=x0_dtype)
    dtype = _checks.result_dtype(**dtypes)
    t = _checks.timesteps(t, schedule.num_timesteps, shape)
    out = _checks.output(out, shape, dtype, like=x0, inputs={"x0": x0, "noise": noise})
    noise_out = stream = None
    if generator is not None:
        noise_out = _checks.output(None, shape, dtype, like=x0, inputs={}) if return_noise else None
        stream = generator.reserve(blocks_needed(_checks.size(shape), dtype))
    implementation("q_sample", name)(x0, t, schedule, noise, out, noise_out, stream)
    if return_noise:
        return out, (noise if noise is not None else noise_out)
    return out


def _noise_source(noise, rng, shape, data_name, on_device, **dtypes):
    """(noise array or None, Generator or None, dtypes for the result): exactly one source;
    noise must have the shape of the data argument ``data_name``."""
    if noise is None:
        return None, as_stream(rng), dtypes
    if rng is not None:
        raise ValueError("pass either noise or rng, not both")
    noise = _checks.data_array("noise", noise, on_device)
    noise_shape, noise_dtype = _checks.shape_dtype(noise)
    _checks.same_shape("noise", noise_shape, data_name, shape)
    return noise, None, dict(dtypes, noise=noise_dtype)


def _pair_inputs(backend, names, u, w, t, schedule, other):
    """Validate a two-array op's inputs: same shapes, result dtype, timesteps. ``other`` names the
    further arrays of the call (out, or a cotangent) for backend resolution. Returns the backend
    name, the normalized (u, w, t, schedule), the shape and the result dtype."""
    u_name, w_name = names
    name = resolve(backend, {u_name: u, w_name: w, "t": t, **other})
    on_device = name == "cuda"
    schedule = _checks.schedule(schedule)
    u = _checks.data_array(u_name, u, on_device)
    w = _checks.data_array(w_name, w, on_device)
    shape, u_dtype = _checks.shape_dtype(u)
    w_shape, w_dtype = _checks.shape_dtype(w)
    _checks.same_shape(w_name, w_shape, u_name, shape)
    dtype = _checks.result_dtype(**{u_name: u_dtype, w_name: w_dtype})
    t = _checks.timesteps(t, schedule.num_timesteps, shape)
    return name, (u, w, t, schedule), shape, dtype


def _pair(backend, names, u, w, t, schedule, out):
    """Validate a two-array op: same shapes, result dtype, timesteps, out. Returns the
    backend name and the normalized (u, w, t, schedule, out)."""
    name, (u, w, t, schedule), shape, dtype = _pair_inputs(backend, names, u, w, t, schedule, {"out": out})
    out = _checks.output(out, shape, dtype, like=u, inputs=dict(zip(names, (u, w))))
    return name, (u, w, t, schedule, out)


def _linear_op(op, names, u, w, t, schedule, out, backend):
    name, args = _pair(backend, names, u, w, t, schedule, out)
    implementation(op, name)(*args)
    return args[-1]


_SHARED = """
    t : int or integer array (B,) — 0-based timesteps, one per sample of the leading axis.
    schedule : NoiseSchedule — its tables are cast to the output dtype.
    out : array, optional — the result's shape and dtype; may be exactly one of the inputs.
    backend : {"numpy", "cpu", "cuda"}, optional.

    Arrays of one shape, on one side (host or GPU); the result has that shape and dtype
    numpy.result_type of the arrays (integer data gives float64). One fused pass.
"""


@adapts
def q_posterior(x0, xt, t, schedule, *, out=None, backend=None):
    r"""The forward-process posterior q(x_{t-1} | x_t, x_0) = N(mean, variance).

    .. math::  \tilde\mu = c_1[t]\, x_0 + c_2[t]\, x_t, \quad
               c_1 = \frac{\beta_t \sqrt{\bar\alpha_{t-1}}}{1 - \bar\alpha_t},\;
               c_2 = \frac{(1 - \bar\alpha_{t-1}) \sqrt{\alpha_t}}{1 - \bar\alpha_t},\quad
               \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t} \beta_t

    Returns (mean, variance, log_variance): mean has x_t's shape; variance is
    schedule.posterior_variance[t] and log_variance schedule.posterior_log_variance_clipped[t],
    shaped (B, 1, ..., 1) to broadcast against x_t, or 0-d for a scalar t, in the output
    dtype and of the inputs' array kind. Matches improved-diffusion's
    GaussianDiffusion.q_posterior_mean_variance.
    """ + _SHARED + """
    >>> mean, var, logvar = fastgauss.q_posterior(x0, xt, np.array([10, 500]), schedule)
    """
    name, args = _pair(backend, ("x0", "xt"), x0, xt, t, schedule, out)
    implementation("q_posterior", name)(*args)
    u, _, t, schedule, mean = args
    shape, dtype = _checks.shape_dtype(mean)
    per_sample = (-1,) + (1,) * (len(shape) - 1) if np.ndim(t) else ()
    tables = (schedule.posterior_variance[t], schedule.posterior_log_variance_clipped[t])
    variance, log_variance = (np.asarray(table, dtype).reshape(per_sample) for table in tables)
    if name == "cuda":
        variance, log_variance = _checks.from_host_like(mean, variance), _checks.from_host_like(mean, log_variance)
    return mean, variance, log_variance


@adapts
def predict_x0(xt, t, eps, schedule, *, out=None, backend=None):
    r"""x0 from the noise: :math:`\hat x_0 = (x_t - \sqrt{1 - \bar\alpha_t}\,\epsilon) / \sqrt{\bar\alpha_t}`.
    """ + _SHARED + """
    >>> x0 = fastgauss.predict_x0(xt, t, eps, schedule)
    """
    return _linear_op("predict_x0", ("xt", "eps"), xt, eps, t, schedule, out, backend)


@adapts
def predict_eps(xt, t, x0, schedule, *, out=None, backend=None):
    r"""The noise from x0: :math:`\epsilon = (x_t - \sqrt{\bar\alpha_t}\, x_0) / \sqrt{1 - \bar\alpha_t}`.
    """ + _SHARED + """
    >>> eps = fastgauss.predict_eps(xt, t, x0, schedule)
    """
    return _linear_op("predict_eps", ("xt", "x0"), xt, x0, t, schedule, out, backend)


@adapts
def predict_v(x0, eps, t, schedule, *, out=None, backend=None):
    r"""The v target (Salimans and Ho 2022): :math:`v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1 - \bar\alpha_t}\, x_0`.
    """ + _SHARED + """
    >>> v = fastgauss.predict_v(x0, eps, t, schedule)
    """
    return _linear_op("predict_v", ("x0", "eps"), x0, eps, t, schedule, out, backend)


@adapts
def v_to_x0(xt, t, v, schedule, *, out=None, backend=None):
    r"""x0 from v: :math:`\hat x_0 = \sqrt{\bar\alpha_t}\, x_t - \sqrt{1 - \bar\alpha_t}\, v`.
    """ + _SHARED + """
    >>> x0 = fastgauss.v_to_x0(xt, t, v, schedule)
    """
    return _linear_op("v_to_x0", ("xt", "v"), xt, v, t, schedule, out, backend)


@adapts
def v_to_eps(xt, t, v, schedule, *, out=None, backend=None):
    r"""The noise from v: :math:`\epsilon = \sqrt{\bar\alpha_t}\, v + \sqrt{1 - \bar\alpha_t}\, x_t`.
    """ + _SHARED + """
    >>> eps = fastgauss.v_to_eps(xt, t, v, schedule)
    """
    return _linear_op("v_to_eps", ("xt", "v"), xt, v, t, schedule, out, backend)


@adapts
def posterior_mean_from_eps(xt, t, eps, schedule, *, out=None, backend=None):
    r"""The posterior mean from the noise (Ho et al. 2020, eq. 11):
    :math:`\tilde\mu = (x_t - \frac{\beta_t}{\sqrt{1 - \bar\alpha_t}}\,\epsilon) / \sqrt{\alpha_t}`.
    """ + _SHARED + """
    >>> mean = fastgauss.posterior_mean_from_eps(xt, t, eps, schedule)
    """
    return _linear_op("posterior_mean_from_eps", ("xt", "eps"), xt, eps, t, schedule, out, backend)


PREDICTIONS = ("epsilon", "sample", "v")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")


def _check_clip(clip):
    if clip is None:
        return None
    if isinstance(clip, bool) or not isinstance(clip, numbers.Real):
        raise TypeError(f"clip must be None or a positive number; got {type(clip).__name__}")
    if not clip > 0:  # also rejects NaN
        raise ValueError(f"clip must be None or a positive number; got {clip}")
    return float(clip)


def _step_arrays(backend, model_output, xt, t, noise, rng, schedule, other):
    """Validate the arrays DDPM and DDIM steps share (``other``: the call's further arrays, for
    backend resolution); returns (name, model_output, xt, t, noise, generator, dtype, shape)."""
    name = resolve(backend, {"model_output": model_output, "xt": xt, "t": t, "noise": noise, **other})
    on_device = name == "cuda"
    schedule = _checks.schedule(schedule)
    model_output = _checks.data_array("model_output", model_output, on_device)
    xt = _checks.data_array("xt", xt, on_device)
    shape, xt_dtype = _checks.shape_dtype(xt)
    model_shape, model_dtype = _checks.shape_dtype(model_output)
    _checks.same_shape("model_output", model_shape, "xt", shape)
    noise, generator, dtypes = _noise_source(noise, rng, shape, "xt", on_device, model_output=model_dtype, xt=xt_dtype)
    dtype = _checks.result_dtype(**dtypes)
    t = _checks.timesteps(t, schedule.num_timesteps, shape)
    return name, model_output, xt, t, noise, generator, dtype, shape


def _step_inputs(backend, model_output, xt, t, noise, rng, out, schedule):
    """Validate what DDPM and DDIM steps share; returns (name, model_output, xt, t, noise,
    generator, out, dtype, shape)."""
    name, model_output, xt, t, noise, generator, dtype, shape = _step_arrays(
        backend, model_output, xt, t, noise, rng, schedule, {"out": out}
    )
    out = _checks.output(out, shape, dtype, like=xt, inputs={"model_output": model_output, "xt": xt, "noise": noise})
    return name, model_output, xt, t, noise, generator, out, dtype, shape


@adapts
def ddpm_step(model_output, xt, t, schedule, *, prediction="epsilon", clip=None, variance="small",
              noise=None, rng=None, return_x0=False, out=None, backend=None):
    r"""One ancestral sampling step x_t -> x_{t-1} (Ho et al. 2020), fused into one pass.

    .. math::  \hat x_0 = \mathrm{clamp}(f(m, x_t), -c, c), \quad
               x_{t-1} = c_1[t]\,\hat x_0 + c_2[t]\, x_t + \sqrt{\sigma^2_t}\, z

    with f the x0 implied by the model output m ("epsilon": (x_t - sqrt(1 - abar_t) m) /
    sqrt(abar_t); "sample": m; "v": sqrt(abar_t) x_t - sqrt(1 - abar_t) m), c_1, c_2 the
    posterior mean coefficients, sigma_t^2 = the posterior variance (clamped at 1e-20)
    for variance="small" or beta_t for "large", and no noise added where t = 0.

    Given the same noise this is diffusers' DDPMScheduler.step over the full schedule
    (variance_type "fixed_small" / "fixed_large", clip_sample with clip_sample_range =
    clip, prediction_type "epsilon" / "sample" / "v_prediction").

    Parameters
    ----------
    model_output, xt : arrays of one shape (B, ...); t : int or integer array (B,).
    prediction : "epsilon", "sample" or "v".   clip : None or a positive number.
    variance : "small" or "large".
    noise : array of xt's shape, optional; otherwise drawn in the kernel from ``rng``
        (a Generator, int seed or None): it equals rng.standard_normal(xt.shape, dtype),
        drawn for every element (also where t = 0, where it is not used).
    return_x0 : also return the clamped x0 estimate: (x_prev, x0).
    out, backend : as for every op.

    >>> schedule = fastgauss.NoiseSchedule.linear(1000)
    >>> xt = fastgauss.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32)
    >>> eps_model = np.zeros_like(xt)                   # the model's noise prediction
    >>> x_prev = fastgauss.ddpm_step(eps_model, xt, 999, schedule, rng=1)
    >>> x_prev.shape, x_prev.dtype
    ((2, 3, 8, 8), dtype('float32'))
    """
    _check_choice("prediction", prediction, PREDICTIONS)
    _check_choice("variance", variance, ("small", "large"))
    clip = _check_clip(clip)
    name, model_output, xt, t, noise, generator, out, dtype, shape = _step_inputs(backend, model_output, xt, t, noise, rng, out, schedule)
    x0_out = _checks.output(None, shape, dtype, like=xt, inputs={}) if return_x0 else None
    stream = generator.reserve(blocks_needed(_checks.size(shape), dtype)) if generator is not None else None
    implementation("ddpm_step", name)(
        model_output, xt, t, schedule, out,
        x0_out=x0_out, noise=noise, stream=stream, prediction=prediction, clip=clip, variance=variance,
    )
    return (out, x0_out) if return_x0 else out


def _check_ddim(schedule, t, t_prev, eta):
    """A ValueError where the (t, t_prev, eta) of a DDIM step give no real direction
    sqrt(1 - abar_prev - sigma_t^2): eta too large, or eta > 0 on an inversion step (t_prev > t,
    where sigma_t^2 < 0)."""
    sigma, _, abar_prev = plan.ddim_sigma(schedule, t, t_prev, eta)
    bad = np.flatnonzero(~(1 - abar_prev - sigma**2 >= 0))
    if not bad.size:
        return
    first = bad[0]
    if np.broadcast_to(np.atleast_1d(t_prev) > np.atleast_1d(t), sigma.shape)[first]:
        raise ValueError(f"t_prev > t (a DDIM inversion step, first at sample {first}) needs eta = 0: sigma_t^2 < 0 there; got eta = {eta}")
    raise ValueError(f"eta = {eta} is too large: 1 - abar_prev - sigma_t^2 < 0 (first at sample {first})")


@adapts
def ddim_step(model_output, xt, t, t_prev, schedule, *, eta=0.0, prediction="epsilon", clip=None,
              noise=None, rng=None, return_x0=False, out=None, backend=None):
    r"""One DDIM step x_t -> x_{t_prev} (Song et al. 2021), fused into one pass.

    .. math::  x_{prev} = \sqrt{\bar\alpha_{prev}}\,\hat x_0
               + \sqrt{1 - \bar\alpha_{prev} - \sigma_t^2}\,\hat\epsilon + \sigma_t z,
               \quad \sigma_t = \eta \sqrt{\frac{1 - \bar\alpha_{prev}}{1 - \bar\alpha_t}
               \left(1 - \frac{\bar\alpha_t}{\bar\alpha_{prev}}\right)}

    x0_hat and eps_hat are implied by the model output (see ddpm_step); clip clamps
    x0_hat only, and eps_hat is the one implied by the unclipped output. t_prev = -1
    means abar_prev = 1 (the last step). eta = 0 is deterministic and draws no noise.

    Given the same noise this is diffusers' DDIMScheduler.step with set_alpha_to_one=True
    and use_clipped_model_output=False.

    Parameters: as ddpm_step, plus t_prev (int or integer array (B,), -1 <= t_prev < T)
    and eta >= 0 (a ValueError where 1 - abar_prev - sigma_t^2 < 0, i.e. eta too large).
    t_prev > t is a DDIM inversion step (toward more noise, as diffusers'
    DDIMInverseScheduler): it needs eta = 0, for which sigma_t is exactly 0.

    >>> schedule = fastgauss.NoiseSchedule.linear(1000)
    >>> xt = np.ones((2, 3, 8, 8), np.float32)
    >>> x_prev = fastgauss.ddim_step(np.zeros_like(xt), xt, 980, 960, schedule)  # eps = 0, eta = 0
    >>> abar = schedule.alphas_cumprod                  # then x_prev = sqrt(abar_960 / abar_980) x_t
    >>> bool(np.allclose(x_prev, np.sqrt(abar[960] / abar[980]) * xt))
    True
    """
    _check_choice("prediction", prediction, PREDICTIONS)
    clip = _check_clip(clip)
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not eta >= 0:
        raise ValueError(f"eta must be a number >= 0; got {eta!r}")
    name, model_output, xt, t, noise, generator, out, dtype, shape = _step_inputs(backend, model_output, xt, t, noise, rng, out, schedule)
    t_prev = _checks.timesteps(t_prev, schedule.num_timesteps, shape, name="t_prev", low=-1)
    _check_ddim(schedule, t, t_prev, eta)
    x0_out = _checks.output(None, shape, dtype, like=xt, inputs={}) if return_x0 else None
    stream = None
    if eta > 0:
        stream = generator.reserve(blocks_needed(_checks.size(shape), dtype)) if generator is not None else None
    else:
        noise = None  # eta = 0: deterministic, the noise is not used
    implementation("ddim_step", name)(
        model_output, xt, t, t_prev, schedule, out,
        x0_out=x0_out, noise=noise, stream=stream, eta=eta, prediction=prediction, clip=clip,
    )
    return (out, x0_out) if return_x0 else out


# --- VJPs (fastgauss.vjp): the gradients of each op's array arguments ---------------------------
# ``_vjp_<op>(cotangent, *args, wrt=None, **kwargs)`` takes the forward call's own arguments and
# the cotangent of its result (a tuple, one entry per output or None, where the op returns a
# tuple), validates them like the forward, and returns {argument name: gradient} for every
# array argument (or those named in ``wrt``), each of that argument's shape and of the result
# dtype. out= and rng= are accepted and do not matter: no gradient depends on the noise drawn.


def _gradients(op, name, wrt, arrays, shape, dtype, like):
    """Fresh gradient arrays for the wanted ones of ``arrays`` (names), None for the others."""
    wanted = _checks.wanted(wrt, arrays, op)
    return {n: _checks.output(None, shape, dtype, like=like, inputs={}) if n in wanted else None for n in arrays}


def _outputs(cotangent, count, op):
    """The cotangent of each of ``count`` outputs (None: none)."""
    if count == 1:
        return (cotangent,)
    if not isinstance(cotangent, (tuple, list)) or len(cotangent) != count:
        raise ValueError(f"{op} returns {count} outputs here; pass the cotangent as a tuple of {count} (None for none)")
    return tuple(cotangent)


def _linear_vjp(op, names, cotangent, u, w, t, schedule, wrt, backend):
    name, (u, w, t, schedule), shape, dtype = _pair_inputs(backend, names, u, w, t, schedule, {"cotangent": cotangent})
    g = _checks.cotangent(cotangent, shape, dtype, name == "cuda")
    if g is None:  # q_posterior's mean has no cotangent (only its variance outputs had)
        g = _checks.zeros_like_output(shape, dtype, like=u)
    grads = _gradients(op, name, wrt, names, shape, dtype, like=u)
    implementation(f"{op}_vjp", name)(g, t, schedule, *grads.values())
    return {n: v for n, v in grads.items() if v is not None}


def _vjp_q_sample(cotangent, x0, t, schedule, noise=None, *, rng=None, out=None, return_noise=False, backend=None, wrt=None):
    g, noise_g = _outputs(cotangent, 2 if return_noise else 1, "q_sample") + ((None,) if not return_noise else ())
    name = resolve(backend, {"x0": x0, "t": t, "noise": noise, "cotangent": g, "noise cotangent": noise_g})
    on_device = name == "cuda"
    schedule = _checks.schedule(schedule)
    x0 = _checks.data_array("x0", x0, on_device)
    shape, x0_dtype = _checks.shape_dtype(x0)
    if noise is not None and rng is not None:
        raise ValueError("pass either noise or rng, not both")
    dtypes = {"x0": x0_dtype}
    if noise is not None:
        noise = _checks.data_array("noise", noise, on_device)
        noise_shape, dtypes["noise"] = _checks.shape_dtype(noise)
        _checks.same_shape("noise", noise_shape, "x0", shape)
    dtype = _checks.result_dtype(**dtypes)
    t = _checks.timesteps(t, schedule.num_timesteps, shape)
    g = _checks.cotangent(g, shape, dtype, on_device)
    noise_g = _checks.cotangent(noise_g, shape, dtype, on_device, "the noise cotangent") if noise is not None else None
    if g is None:
        g = _checks.zeros_like_output(shape, dtype, like=x0)
    grads = _gradients("q_sample", name, wrt, ("x0", "noise") if noise is not None else ("x0",), shape, dtype, like=x0)
    implementation("q_sample_vjp", name)(g, noise_g, t, schedule, grads["x0"], grads.get("noise"))
    return {n: v for n, v in grads.items() if v is not None}


def _vjp_q_posterior(cotangent, x0, xt, t, schedule, *, out=None, backend=None, wrt=None):
    if isinstance(cotangent, (tuple, list)):  # (mean, variance, log_variance): only the mean depends on x0, x_t
        cotangent = _outputs(cotangent, 3, "q_posterior")[0]
    return _linear_vjp("q_posterior", ("x0", "xt"), cotangent, x0, xt, t, schedule, wrt, backend)


def _vjp_predict_x0(cotangent, xt, t, eps, schedule, *, out=None, backend=None, wrt=None):
    return _linear_vjp("predict_x0", ("xt", "eps"), cotangent, xt, eps, t, schedule, wrt, backend)


def _vjp_predict_eps(cotangent, xt, t, x0, schedule, *, out=None, backend=None, wrt=None):
    return _linear_vjp("predict_eps", ("xt", "x0"), cotangent, xt, x0, t, schedule, wrt, backend)


def _vjp_predict_v(cotangent, x0, eps, t, schedule, *, out=None, backend=None, wrt=None):
    return _linear_vjp("predict_v", ("x0", "eps"), cotangent, x0, eps, t, schedule, wrt, backend)


def _vjp_v_to_x0(cotangent, xt, t, v, schedule, *, out=None, backend=None, wrt=None):
    return _linear_vjp("v_to_x0", ("xt", "v"), cotangent, xt, v, t, schedule, wrt, backend)


def _vjp_v_to_eps(cotangent, xt, t, v, schedule, *, out=None, backend=None, wrt=None):
    return _linear_vjp("v_to_eps", ("xt", "v"), cotangent, xt, v, t, schedule, wrt, backend)


def _vjp_posterior_mean_from_eps(cotangent, xt, t, eps, schedule, *, out=None, backend=None, wrt=None):
    return _linear_vjp("posterior_mean_from_eps", ("xt", "eps"), cotangent, xt, eps, t, schedule, wrt, backend)


def _step_vjp_inputs(op, cotangent, return_x0, backend, model_output, xt, t, noise, rng, schedule, wrt):
    """What the steps' VJPs share: (name, model_output, xt, t, noise, g, g0, grads)."""
    g, g0 = _outputs(cotangent, 2 if return_x0 else 1, op) + ((None,) if not return_x0 else ())
    name, model_output, xt, t, noise, _, dtype, shape = _step_arrays(
        backend, model_output, xt, t, noise, rng, schedule, {"cotangent": g, "x0 cotangent": g0}
    )
    on_device = name == "cuda"
    g = _checks.cotangent(g, shape, dtype, on_device)
    g0 = _checks.cotangent(g0, shape, dtype, on_device, "the x0 cotangent")
    if g is None:
        g = _checks.zeros_like_output(shape, dtype, like=xt)
    names = ("model_output", "xt") + (("noise",) if noise is not None else ())
    grads = _gradients(op, name, wrt, names, shape, dtype, like=xt)
    return name, model_output, xt, t, noise, g, g0, grads


def _vjp_ddpm_step(cotangent, model_output, xt, t, schedule, *, prediction="epsilon", clip=None, variance="small",
                   noise=None, rng=None, return_x0=False, out=None, backend=None, wrt=None):
    _check_choice("prediction", prediction, PREDICTIONS)
    _check_choice("variance", variance, ("small", "large"))
    clip = _check_clip(clip)
    name, model_output, xt, t, noise, g, g0, grads = _step_vjp_inputs(
        "ddpm_step", cotangent, return_x0, backend, model_output, xt, t, noise, rng, schedule, wrt
    )
    implementation("ddpm_step_vjp", name)(
        g, model_output, xt, t, schedule, grads["model_output"], grads["xt"],
        x0_cotangent=g0, grad_noise=grads.get("noise"), prediction=prediction, clip=clip, variance=variance,
    )
    return {n: v for n, v in grads.items() if v is not None}


def _vjp_ddim_step(cotangent, model_output, xt, t, t_prev, schedule, *, eta=0.0, prediction="epsilon", clip=None,
                   noise=None, rng=None, return_x0=False, out=None, backend=None, wrt=None):
    _check_choice("prediction", prediction, PREDICTIONS)
    clip = _check_clip(clip)
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not eta >= 0:
        raise ValueError(f"eta must be a number >= 0; got {eta!r}")
    name, model_output, xt, t, noise, g, g0, grads = _step_vjp_inputs(
        "ddim_step", cotangent, return_x0, backend, model_output, xt, t, noise, rng, schedule, wrt
    )
    t_prev = _checks.timesteps(t_prev, schedule.num_timesteps, _checks.shape_dtype(xt)[0], name="t_prev", low=-1)
    _check_ddim(schedule, t, t_prev, eta)
    implementation("ddim_step_vjp", name)(
        g, model_output, xt, t, t_prev, schedule, grads["model_output"],
        grad_xt=grads["xt"], x0_cotangent=g0, grad_noise=grads.get("noise"), eta=eta, prediction=prediction, clip=clip,
    )
    return {n: v for n, v in grads.items() if v is not None}
