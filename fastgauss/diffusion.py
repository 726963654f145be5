"""Public diffusion ops: validate -> dispatch -> backend function."""

from fastgauss import _checks
from fastgauss._dispatch import implementation, resolve
from fastgauss.random import as_generator, blocks_needed


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
    if noise is None:
        generator = as_generator(rng)
        dtype = _checks.result_dtype(x0=x0_dtype)
    else:
        if rng is not None:
            raise ValueError("pass either noise or rng, not both")
        noise = _checks.data_array("noise", noise, on_device)
        noise_shape, noise_dtype = _checks.shape_dtype(noise)
        _checks.same_shape("noise", noise_shape, "x0", shape)
        dtype = _checks.result_dtype(x0=x0_dtype, noise=noise_dtype)
    t = _checks.timesteps(t, schedule.num_timesteps, shape)
    out = _checks.output(out, shape, dtype, like=x0, inputs={"x0": x0, "noise": noise})
    stream = noise_out = None
    if noise is None:
        noise_out = _checks.output(None, shape, dtype, like=x0, inputs={}) if return_noise else None
        stream = generator.reserve(blocks_needed(_checks.size(shape), dtype))
    implementation("q_sample", name)(x0, t, schedule, noise, out, noise_out, stream)
    if return_noise:
        return out, (noise if noise is not None else noise_out)
    return out
