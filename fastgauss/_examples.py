"""Representative inputs for every registered op, for the self-check and the benchmarks.

``EXAMPLES[op](shape, dtype, rng)`` returns a list of ``(label, args, kwargs)``
calls of ``fastgauss.<op>`` with host data; callers move arrays to the device for
the cuda backend. The first call is the one benchmarked.
"""

import numpy as np

from fastgauss.schedules import NoiseSchedule


def _q_sample(shape, dtype, rng):
    schedule = NoiseSchedule.linear(1000)
    x0 = rng.standard_normal(shape, dtype=dtype)
    noise = rng.standard_normal(shape, dtype=dtype)
    per_sample_t = rng.integers(0, 1000, size=shape[0])
    return [
        ("t per sample", (x0, per_sample_t, schedule, noise), {}),
        ("scalar t", (x0, 500, schedule, noise), {}),
    ]


EXAMPLES = {
    "q_sample": _q_sample,
}
