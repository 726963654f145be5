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

from fastgauss import diffusion
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


def _linear(op, first, second):
    """A two-array op called as fastgauss.<op>(<its arguments in order>)."""

    def examples(shape, dtype, rng):
        schedule = NoiseSchedule.cosine(1000)
        u = rng.standard_normal(shape, dtype=dtype)
        w = rng.standard_normal(shape, dtype=dtype)
        t = rng.integers(0, 1000, size=shape[0])
        function = getattr(diffusion, op)
        args = {"u_t": (u, t, w, schedule), "u_w_t": (u, w, t, schedule)}[first]
        return [Call("t per sample", function, args, {}, benchmark=second)]

    return examples


def _step(op):
    def examples(shape, dtype, rng):
        schedule = NoiseSchedule.linear(1000)
        model = rng.standard_normal(shape, dtype=dtype)
        xt = rng.standard_normal(shape, dtype=dtype)
        noise = rng.standard_normal(shape, dtype=dtype)
        t = rng.integers(1, 1000, size=shape[0])
        function = getattr(diffusion, op)
        times = (t,) if op == "ddpm_step" else (t, t - 1)
        kwargs = {} if op == "ddpm_step" else {"eta": 1.0}

        def generated(model, xt, *times, out=None, backend=None):
            return function(model, xt, *times, schedule, rng=SEED, out=out, backend=backend, **kwargs)

        return [
            Call("given noise", function, (model, xt, *times, schedule), dict(kwargs, noise=noise), benchmark=True),
            Call("noise drawn in the kernel", generated, (model, xt, *times), {}, benchmark=op == "ddpm_step"),
            Call("sample, clip, return_x0", function, (model, xt, *times, schedule), dict(kwargs, noise=noise, prediction="sample", clip=1.0, return_x0=True)),
            Call("v, scalar t", function, (model, xt, *(int(v[0]) for v in times), schedule), dict(kwargs, noise=noise, prediction="v")),
        ]

    return examples


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
    "q_posterior": _linear("q_posterior", "u_w_t", False),
    "predict_x0": _linear("predict_x0", "u_t", True),
    "predict_eps": _linear("predict_eps", "u_t", False),
    "predict_v": _linear("predict_v", "u_w_t", False),
    "v_to_x0": _linear("v_to_x0", "u_t", False),
    "v_to_eps": _linear("v_to_eps", "u_t", False),
    "posterior_mean_from_eps": _linear("posterior_mean_from_eps", "u_t", False),
    "ddpm_step": _step("ddpm_step"),
    "ddim_step": _step("ddim_step"),
    "philox4x32_10": _philox,
    "standard_normal": _generator_method("standard_normal"),
    "random": _generator_method("random"),
}
