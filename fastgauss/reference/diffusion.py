"""NumPy reference for the diffusion ops: the executable spec, written from the formulas.

Called by the public functions after validation: arrays are host ndarrays, ``t`` is
an int or an int64 array of shape (B,), ``out`` has the result's shape and dtype.
"""

import numpy as np

from fastgauss.reference.random import standard_normal


def _per_sample(table, t, dtype, ndim):
    """table[t] in ``dtype``, shaped to broadcast against data of ``ndim`` axes: (B, 1, ..., 1) or 0-d."""
    values = np.asarray(table[t], dtype=dtype)
    return values.reshape((-1,) + (1,) * (ndim - 1)) if values.ndim else values


def q_sample(x0, t, schedule, noise, out, noise_out=None, stream=None):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, with the tables cast to out.dtype.

    noise None: draw it from ``stream`` = (key, offset) as standard_normal would, and
    write it to ``noise_out`` when given.
    """
    if noise is None:
        noise = noise_out if noise_out is not None else np.empty(out.shape, out.dtype)
        standard_normal(noise, *stream)
    signal_scale = _per_sample(schedule.sqrt_alphas_cumprod, t, out.dtype, x0.ndim)
    noise_scale = _per_sample(schedule.sqrt_one_minus_alphas_cumprod, t, out.dtype, x0.ndim)
    np.add(signal_scale * x0, noise_scale * noise, out=out)
