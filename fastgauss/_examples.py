"""Representative calls of every registered op, for the self-check and the benchmarks.

``EXAMPLES[op](shape, dtype, rng)`` returns a list of ``Call``s:
``call.function(*call.args, **call.kwargs, backend=name)`` runs the op with host data
(callers move ndarray arguments to the device for cuda, and pass ``out=`` when
benchmarking and the function takes it). Calls with ``benchmark=True`` get a row in
the benchmark table. Generator methods are called on a fresh generator with a fixed
seed, so every backend draws the same stream.
"""

from typing import Callable, NamedTuple

import numpy as np

from fastgauss.diffusion import q_sample
from fastgauss.random import default_rng, philox4x32_10
from fastgauss.schedules import NoiseSchedule

SEED = 20261124


class Call(NamedTuple):
    label: str
    function: Callable
    args: tuple
    kwargs: dict
    benchmark: bool = False


def _q_sample(shape, dtype, rng):
    schedule = NoiseSchedule.linear(1000)
    x0 = rng.standard_normal(shape, dtype=dtype)
    noise = rng.standard_normal(shape, dtype=dtype)
    per_sample_t = rng.integers(0, 1000, size=shape[0])

    def generated(x0, t, out=None, backend=None):
        return q_sample(x0, t, schedule, rng=SEED, out=out, backend=backend)

    return [
        Call("t per sample", q_sample, (x0, per_sample_t, schedule, noise), {}, benchmark=True),
        Call("scalar t", q_sample, (x0, 500, schedule, noise), {}),
        Call("noise drawn in the kernel", generated, (x0, per_sample_t), {}, benchmark=True),
    ]


def _generator_method(method):
    def examples(shape, dtype, rng):
        def draw(size, out=None, backend=None):
            return getattr(default_rng(SEED), method)(size, dtype=dtype, out=out, backend=backend)

        return [Call(f"Generator.{method}", draw, (tuple(shape),), {}, benchmark=True), Call("odd size", draw, (int(np.prod(shape)) - 1,), {})]

    return examples


def _philox(shape, dtype, rng):
    if dtype != np.float32:  # integer op: one dtype is enough
        return []
    blocks = max(1, int(np.prod(shape)) // 4)
    counters = rng.integers(0, 2**32, size=(blocks, 4), dtype=np.uint32)
    keys = rng.integers(0, 2**32, size=2, dtype=np.uint32)
    return [Call("raw blocks", philox4x32_10, (counters, keys), {}, benchmark=True)]


EXAMPLES = {
    "q_sample": _q_sample,
    "philox4x32_10": _philox,
    "standard_normal": _generator_method("standard_normal"),
    "random": _generator_method("random"),
}
