"""Representative calls of every registered op, for the self-check and the benchmarks.

``EXAMPLES[op](shape, dtype, rng)`` returns a list of ``Call``s:
``call.function(*call.args, **call.kwargs, backend=name)`` runs the op with host data
(callers move ndarray arguments to the device for cuda, and pass ``out=`` when
benchmarking and the function takes it). Calls with ``benchmark=True`` get a row in
the benchmark table. Generator methods are called on a fresh generator with a fixed
seed, so every backend draws the same stream.

The benchmark's NumPy column times the reference op, except where a NumPy user would not
call it: for noise, ``numpy_way`` is what they would write instead (NumPy's own
Generator, PCG64, then the reference formula given that noise), called with the same
arguments; the reference's Philox emulation is a spec, not a baseline.
"""

from typing import Callable, NamedTuple

import numpy as np

from fastgauss import diffusion, mvn
from fastgauss._dispatch import OPS
from fastgauss.diffusion import q_sample
from fastgauss.kl import discretized_gaussian_log_likelihood, normal_kl, normal_logpdf, normal_product
from fastgauss.mvn import (
    cholesky,
    gaussian_product,
    kalman_update,
    mvn_affine,
    mvn_condition,
    mvn_kl,
    mvn_logpdf,
    mvn_marginal,
    mvn_sample,
)
from fastgauss import objective
from fastgauss.random import default_rng, philox4x32_10
from fastgauss.schedules import NoiseSchedule
from fastgauss.vjp import differentiable, vjp

SEED = 20261124


class Call(NamedTuple):
    label: str
    function: Callable
    args: tuple
    kwargs: dict
    benchmark: bool = False
    numpy_way: Callable = None  # the NumPy baseline of the benchmark, when not the reference op


def _q_sample(shape, dtype, rng):
    schedule = NoiseSchedule.linear(1000)
    x0 = rng.standard_normal(shape, dtype=dtype)
    noise = rng.standard_normal(shape, dtype=dtype)
    per_sample_t = rng.integers(0, 1000, size=shape[0])

    def generated(x0, t, out=None, backend=None):
        return q_sample(x0, t, schedule, rng=SEED, out=out, backend=backend)

    def numpy_way(x0, t, out=None):
        noise = np.random.default_rng(SEED).standard_normal(x0.shape, dtype=x0.dtype)
        return q_sample(x0, t, schedule, noise, out=out, backend="numpy")

    return [
        Call("t per sample", q_sample, (x0, per_sample_t, schedule, noise), {}, benchmark=True),
        Call("scalar t", q_sample, (x0, 500, schedule, noise), {}),
        Call("noise drawn in the kernel", generated, (x0, per_sample_t), {}, benchmark=True, numpy_way=numpy_way),
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

        def numpy_way(model, xt, *times, out=None):
            noise = np.random.default_rng(SEED).standard_normal(xt.shape, dtype=xt.dtype)
            return function(model, xt, *times, schedule, noise=noise, out=out, backend="numpy", **kwargs)

        return [
            Call("given noise", function, (model, xt, *times, schedule), dict(kwargs, noise=noise), benchmark=True),
            Call("noise drawn in the kernel", generated, (model, xt, *times), {}, benchmark=op == "ddpm_step", numpy_way=numpy_way),
            Call("sample, clip, return_x0", function, (model, xt, *times, schedule), dict(kwargs, noise=noise, prediction="sample", clip=1.0, return_x0=True)),
            Call("v, scalar t", function, (model, xt, *(int(v[0]) for v in times), schedule), dict(kwargs, noise=noise, prediction="v")),
        ]

    return examples


def _generator_method(method):
    def examples(shape, dtype, rng):
        def draw(size, out=None, backend=None):
            return getattr(default_rng(SEED), method)(size, dtype=dtype, out=out, backend=backend)

        def numpy_way(size, out=None):
            return getattr(np.random.default_rng(SEED), method)(size, dtype=dtype, out=out)

        return [
            Call(f"Generator.{method}", draw, (tuple(shape),), {}, benchmark=True, numpy_way=numpy_way),
            Call("odd size", draw, (int(np.prod(shape)) - 1,), {}),
        ]

    return examples


def _normal(shape, dtype, rng):
    def draw(size, backend=None):
        return default_rng(SEED).normal(0.5, 2.0, size, dtype=dtype, backend=backend)

    return [Call("Generator.normal, scalar loc and scale", draw, (tuple(shape),), {})]


def _philox(shape, dtype, rng):
    if dtype != np.float32:  # integer op: one dtype is enough
        return []
    blocks = max(1, int(np.prod(shape)) // 4)
    counters = rng.integers(0, 2**32, size=(blocks, 4), dtype=np.uint32)
    keys = rng.integers(0, 2**32, size=2, dtype=np.uint32)
    return [Call("raw blocks", philox4x32_10, (counters, keys), {}, benchmark=True)]


# Multivariate normals: the shape is read as a count of 4 x 4 covariances (prod(shape) / 16),
# so the check shape gives 192 matrices and the benchmark shape 786,432.
MVN_D = 4


def _mvn_inputs(shape, dtype, rng):
    count = max(1, int(np.prod(shape)) // (MVN_D * MVN_D))
    a = rng.standard_normal((count, MVN_D, MVN_D))
    cov = (a @ a.swapaxes(-1, -2) / MVN_D + 0.5 * np.eye(MVN_D)).astype(dtype)
    mean = rng.standard_normal((count, MVN_D)).astype(dtype)
    return count, mean, cov


def _cholesky(shape, dtype, rng):
    count, _, cov = _mvn_inputs(shape, dtype, rng)

    def upper(a, backend=None):
        return cholesky(a, upper=True, backend=backend)

    return [
        Call(f"{count} 4x4", cholesky, (cov,), {}, benchmark=True),
        Call("upper=True, 3x3", upper, (np.ascontiguousarray(cov[:5, :3, :3]),), {}),
    ]


def _mvn_sample(shape, dtype, rng):
    count, mean, cov = _mvn_inputs(shape, dtype, rng)
    noise = rng.standard_normal((2, count, MVN_D)).astype(dtype)
    scale_tril = np.linalg.cholesky(cov[:3].astype(np.float64)).astype(dtype)

    def generated(mean, cov, backend=None):
        return mvn_sample(mean, cov, rng=SEED, backend=backend)

    def numpy_way(mean, cov):
        noise = np.random.default_rng(SEED).standard_normal(mean.shape, dtype=mean.dtype)
        return mvn_sample(mean, cov, noise=noise, backend="numpy")

    def given(mean, cov, noise, backend=None):
        return mvn_sample(mean, cov, noise=noise, backend=backend)

    def shared(mean, scale_tril, backend=None):
        return mvn_sample(mean, scale_tril=scale_tril, size=(2, 5), rng=SEED, backend=backend)

    return [
        Call(f"{count} 4x4, noise drawn", generated, (mean, cov), {}, benchmark=True, numpy_way=numpy_way),
        Call("given noise, 2 samples", given, (mean, cov, noise), {}),
        Call("scale_tril, size (2, 5)", shared, (mean[0], scale_tril), {}),
    ]


def _mvn_logpdf(shape, dtype, rng):
    count, mean, cov = _mvn_inputs(shape, dtype, rng)
    x = rng.standard_normal((count, MVN_D)).astype(dtype)
    return [
        Call(f"{count} 4x4", mvn_logpdf, (x, mean, cov), {}, benchmark=True),
        Call("one cov, many x", mvn_logpdf, (x, mean[0], cov[0]), {}),
    ]


def _mvn_kl(shape, dtype, rng):
    count, mean, cov = _mvn_inputs(shape, dtype, rng)
    _, mean2, cov2 = _mvn_inputs(shape, dtype, rng)
    return [
        Call(f"{count} 4x4 pairs", mvn_kl, (mean, cov, mean2, cov2), {}, benchmark=True),
        Call("against one", mvn_kl, (mean, cov, mean2[0], cov2[0]), {}),
    ]


# Gradients: each call returns the VJP's gradients as a tuple, in the order named.


def _gradients(op, names, keywords=()):
    """The VJP of op as a Call's function: the last len(keywords) positional arguments are passed as
    those keywords (so that the self-check moves them to the device too)."""
    vjp = getattr(mvn, "_vjp_" + op)

    def gradients(*args, backend=None, **kwargs):
        split = len(args) - len(keywords)
        grads = vjp(*args[:split], backend=backend, **dict(zip(keywords, args[split:])), **kwargs)
        return tuple(grads[name] for name in names)

    gradients.__name__ = f"{op}_vjp"
    return gradients


def _cholesky_vjp(shape, dtype, rng):
    count, _, cov = _mvn_inputs(shape, dtype, rng)
    cotangent = rng.standard_normal(cov.shape).astype(dtype)
    gradients = _gradients("cholesky", ["a"])
    return [
        Call(f"{count} 4x4", gradients, (cotangent, cov), {}),
        Call("upper=True, 3x3", gradients, (cotangent[:5, :3, :3].copy(), np.ascontiguousarray(cov[:5, :3, :3])), {"upper": True}),
    ]


def _mvn_sample_vjp(shape, dtype, rng):
    count, mean, cov = _mvn_inputs(shape, dtype, rng)
    noise = rng.standard_normal((2, count, MVN_D)).astype(dtype)
    scale_tril = np.linalg.cholesky(cov[:3].astype(np.float64)).astype(dtype)
    return [
        Call(f"{count} 4x4, noise drawn", _gradients("mvn_sample", ["mean", "cov"]), (rng.standard_normal(mean.shape).astype(dtype), mean, cov), {"rng": SEED}),
        Call(
            "given noise, 2 samples", _gradients("mvn_sample", ["mean", "cov", "noise"], ["noise"]),
            (rng.standard_normal(noise.shape).astype(dtype), mean, cov, noise), {},
        ),
        Call(
            "scale_tril, size (2, 5)", _gradients("mvn_sample", ["mean", "scale_tril"], ["scale_tril"]),
            (rng.standard_normal((2, 5, len(scale_tril), MVN_D)).astype(dtype), mean[0], scale_tril), {"size": (2, 5), "rng": SEED},
        ),
    ]


def _mvn_logpdf_vjp(shape, dtype, rng):
    count, mean, cov = _mvn_inputs(shape, dtype, rng)
    x = rng.standard_normal((count, MVN_D)).astype(dtype)
    cotangent = rng.standard_normal(count).astype(dtype)
    gradients = _gradients("mvn_logpdf", ["x", "mean", "cov"])
    return [Call(f"{count} 4x4", gradients, (cotangent, x, mean, cov), {}), Call("one cov, many x", gradients, (cotangent, x, mean[0], cov[0]), {})]


def _mvn_kl_vjp(shape, dtype, rng):
    count, mean, cov = _mvn_inputs(shape, dtype, rng)
    _, mean2, cov2 = _mvn_inputs(shape, dtype, rng)
    cotangent = rng.standard_normal(count).astype(dtype)
    gradients = _gradients("mvn_kl", ["mean1", "cov1", "mean2", "cov2"])
    return [
        Call(f"{count} 4x4 pairs", gradients, (cotangent, mean, cov, mean2, cov2), {}),
        Call("against one", gradients, (cotangent, mean, cov, mean2[0], cov2[0]), {}),
    ]


# The KL family on image-shaped data; reduce="mean" (per-sample, fused) is benchmarked.


def _per_sample(shape, dtype, rng, scale=1.0):
    """One value per sample: shape (B, 1, ..., 1)."""
    return (scale * rng.standard_normal((shape[0],) + (1,) * (len(shape) - 1))).astype(dtype)


def _per_channel(shape, dtype, rng):
    """A broadcast that is not per sample: shape (1, C, 1, ...) (needs two axes)."""
    return rng.standard_normal((1, shape[1]) + (1,) * (len(shape) - 2)).astype(dtype) if len(shape) >= 2 else None


def _normal_kl(shape, dtype, rng):
    mean1, logvar1, mean2, logvar2 = (rng.standard_normal(shape, dtype=dtype) for _ in range(4))
    per_channel = _per_channel(shape, dtype, rng)
    calls = [
        Call("reduce=mean, full tensors", normal_kl, (mean1, logvar1, mean2, logvar2), {"reduce": "mean"}, benchmark=True),
        Call(
            "reduce=mean, per-sample logvars", normal_kl,
            (mean1, _per_sample(shape, dtype, rng), mean2, _per_sample(shape, dtype, rng)), {"reduce": "mean"}, benchmark=True,
        ),
        Call("elementwise", normal_kl, (mean1, logvar1, mean2, logvar2), {}),
        Call("reduce=sum, standard normal prior", normal_kl, (mean1, logvar1, 0.0, 0.0), {"reduce": "sum"}),
    ]
    if per_channel is not None:
        calls.append(Call("elementwise, per-channel logvar2", normal_kl, (mean1, logvar1, mean2, per_channel), {}))
    return calls


def _normal_logpdf(shape, dtype, rng):
    x, mean, logvar = (rng.standard_normal(shape, dtype=dtype) for _ in range(3))
    return [
        Call("reduce=sum, full tensors", normal_logpdf, (x, mean, logvar), {"reduce": "sum"}, benchmark=True),
        Call("elementwise, per-sample logvar", normal_logpdf, (x, mean, _per_sample(shape, dtype, rng)), {}),
        Call("reduce=mean, standard normal", normal_logpdf, (x, 0.0, 0.0), {"reduce": "mean"}),
    ]


def _discretized(shape, dtype, rng):
    """8-bit image data in [-1, 1], log-scales around log(0.05), decoder means within a few
    tenths of a standard deviation of x: bins of probability >~ 1e-3, where the literal
    float64 formula of the reference is itself accurate to ~1e-13 (in the far tails it
    loses eps / p; the compiled backends do not, see tests/test_kl.py)."""
    x = (np.round(rng.uniform(-1, 1, shape) * 127.5) / 127.5).astype(dtype)
    log_scales = (np.log(0.05) + 0.2 * rng.standard_normal(shape)).astype(dtype)
    means = (x + 0.5 * np.exp(log_scales) * rng.standard_normal(shape)).astype(dtype)
    per_sample = (np.log(0.05) + _per_sample(shape, dtype, rng, 0.2)).astype(dtype)
    return [
        Call("reduce=mean, full tensors", discretized_gaussian_log_likelihood, (x, means, log_scales), {"reduce": "mean"}, benchmark=True),
        Call("elementwise, per-sample log_scales", discretized_gaussian_log_likelihood, (x, means, per_sample), {}),
        Call("bins=15, reduce=sum", discretized_gaussian_log_likelihood, (x, means, log_scales), {"reduce": "sum", "bins": 15}),
    ]


# --- Gaussian algebra: 4 x 4 covariances as above; normal_product on image-shaped data ---


def _mvn_affine(shape, dtype, rng):
    count, mean, cov = _mvn_inputs(shape, dtype, rng)
    A = rng.standard_normal((count, 2, MVN_D)).astype(dtype)
    b = rng.standard_normal(2).astype(dtype)
    return [
        Call(f"{count} 4x4 -> 2", mvn_affine, (mean, cov, A, b), {}, benchmark=True),
        Call("one A, no b", mvn_affine, (mean, cov, A[0]), {}),
    ]


def _mvn_marginal(shape, dtype, rng):
    count, mean, cov = _mvn_inputs(shape, dtype, rng)
    return [Call(f"{count} 4x4, coordinates [3, 1]", mvn_marginal, (mean, cov, [3, 1]), {}, benchmark=True)]


def _mvn_condition(shape, dtype, rng):
    count, mean, cov = _mvn_inputs(shape, dtype, rng)
    value = rng.standard_normal((count, 2)).astype(dtype)
    return [
        Call(f"{count} 4x4 given 2 coordinates", mvn_condition, (mean, cov, [1, 3], value), {}, benchmark=True),
        Call("one cov, many values", mvn_condition, (mean[0], cov[0], [0], value[:, :1]), {}),
    ]


def _gaussian_product(shape, dtype, rng):
    count, mean, cov = _mvn_inputs(shape, dtype, rng)
    _, mean2, cov2 = _mvn_inputs(shape, dtype, rng)
    return [
        Call(f"{count} 4x4 pairs", gaussian_product, (mean, cov, mean2, cov2), {}, benchmark=True),
        Call("with one", gaussian_product, (mean, cov, mean2[0], cov2[0]), {}),
    ]


def _kalman_update(shape, dtype, rng):
    count, mean, cov = _mvn_inputs(shape, dtype, rng)
    H = rng.standard_normal((2, MVN_D)).astype(dtype)
    R = (0.5 * np.eye(2)).astype(dtype)
    y = rng.standard_normal((count, 2)).astype(dtype)
    return [Call(f"{count} 4x4 tracks, 2 observed", kalman_update, (mean, cov, H, R, y), {}, benchmark=True)]


def _normal_product(shape, dtype, rng):
    mean1, logvar1, mean2, logvar2 = (rng.standard_normal(shape, dtype=dtype) for _ in range(4))
    return [
        Call("full tensors", normal_product, (mean1, logvar1, mean2, logvar2), {}, benchmark=True),
        Call("with a standard normal", normal_product, (mean1, logvar1, 0.0, 0.0), {}),
        Call("per-sample logvar2", normal_product, (mean1, logvar1, mean2, _per_sample(shape, dtype, rng)), {}),
    ]


def _objective_inputs(shape, dtype, rng):
    """Image data in [-1, 1] (8-bit levels), its noise, x_t, a model output near the noise, a
    variance output in [-1, 1], timesteps over the schedule with t = 0 included."""
    schedule = NoiseSchedule.linear(1000)
    x0 = (np.round(rng.uniform(-1, 1, shape) * 127.5) / 127.5).astype(dtype)
    noise = rng.standard_normal(shape, dtype=dtype)
    t = rng.integers(0, 1000, size=shape[0])
    t[0] = 0
    xt = q_sample(x0, t, schedule, noise, backend="numpy")
    eps = (noise + 0.1 * rng.standard_normal(shape)).astype(dtype)
    v = rng.uniform(-1, 1, shape).astype(dtype)
    return schedule, x0, noise, t, xt, eps, v


def _vjp_gradients(vjp, **kwargs):
    """A VJP as a call returning its gradients as a tuple (what the self-check compares)."""

    def call(*args, backend=None, **arrays):  # arrays by keyword come as the Call's kwargs (the main job moves them)
        return tuple(vjp(*args, backend=backend, **kwargs, **arrays).values())

    return call


def _objective(op):
    def examples(shape, dtype, rng):
        schedule, x0, noise, t, xt, eps, v = _objective_inputs(shape, dtype, rng)
        ones = np.ones(shape[0], dtype)
        calls = {
            "model_log_variance": [Call("learned_range", objective.model_log_variance, (v, t, schedule), {"kind": "learned_range"})],
            "vlb_terms": [
                Call("epsilon, learned_range", objective.vlb_terms, (x0, xt, t, eps, schedule), {"var_output": v}, benchmark=True),
                Call("v, fixed_large, clip", objective.vlb_terms, (x0, xt, t, eps, schedule),
                     {"prediction": "v", "var_kind": "fixed_large", "clip": 1.0}),
            ],
            "prior_bpd": [Call("per sample", objective.prior_bpd, (x0, schedule), {})],
            "diffusion_loss": [
                Call("epsilon, min_snr", objective.diffusion_loss, (eps, x0, noise, t, schedule), {"weighting": "min_snr"},
                     benchmark=True),
                Call("v, elementwise", objective.diffusion_loss, (eps, x0, noise, t, schedule), {"prediction": "v", "reduce": None}),
            ],
            "hybrid_loss": [Call("epsilon, learned_range", objective.hybrid_loss, (eps, v, x0, noise, t, schedule), {}, benchmark=True)],
            "vlb_terms_vjp": [Call("all four gradients", _vjp_gradients(objective._vjp_vlb_terms),
                                   (ones, x0, xt, t, eps, schedule), {"var_output": v})],
            "diffusion_loss_vjp": [Call("model_output and x0, v", _vjp_gradients(objective._vjp_diffusion_loss, prediction="v"),
                                        (ones, eps, x0, noise, t, schedule), {})],
            "hybrid_loss_vjp": [Call("model_output and var_output", _vjp_gradients(objective._vjp_hybrid_loss),
                                     (ones, eps, v, x0, noise, t, schedule), {})],
        }
        return calls[op]

    return examples


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
    "normal": _normal,
    "normal_kl": _normal_kl,
    "normal_logpdf": _normal_logpdf,
    "discretized_gaussian_log_likelihood": _discretized,
    "cholesky": _cholesky,
    "mvn_sample": _mvn_sample,
    "mvn_logpdf": _mvn_logpdf,
    "mvn_kl": _mvn_kl,
    "cholesky_vjp": _cholesky_vjp,
    "mvn_sample_vjp": _mvn_sample_vjp,
    "mvn_logpdf_vjp": _mvn_logpdf_vjp,
    "mvn_kl_vjp": _mvn_kl_vjp,
    "mvn_affine": _mvn_affine,
    "mvn_marginal": _mvn_marginal,
    "mvn_condition": _mvn_condition,
    "gaussian_product": _gaussian_product,
    "kalman_update": _kalman_update,
    "normal_product": _normal_product,
    **{op: _objective(op) for op in ("model_log_variance", "vlb_terms", "prior_bpd", "diffusion_loss", "hybrid_loss",
                                     "vlb_terms_vjp", "diffusion_loss_vjp", "hybrid_loss_vjp")},
}


def _vjp_examples(op):
    """The calls of ``op + "_vjp"``: fastgauss.vjp of each of op's example calls that is an op call,
    with a random cotangent per output and every array argument positional (so the main job
    moves them to the device), returning the gradients as a tuple in argument-name order."""

    def examples(shape, dtype, rng):
        calls = []
        for call in EXAMPLES[op](shape, dtype, rng):
            if not differentiable(call.function):
                continue  # a wrapper drawing its own noise: the same kernels, other arguments
            result = call.function(*call.args, **call.kwargs, backend="numpy")
            outputs = result if isinstance(result, tuple) else (result,)
            cotangents = tuple(rng.standard_normal(np.shape(o)).astype(o.dtype) for o in outputs)
            keywords = tuple(k for k, v in call.kwargs.items() if isinstance(v, np.ndarray))  # arrays given by name
            options = {k: v for k, v in call.kwargs.items() if k not in keywords}

            def gradients(*arrays, backend=None, _call=call, _count=len(cotangents), _keywords=keywords, _options=options):
                cotangent = arrays[:_count] if _count > 1 else arrays[0]
                positional = arrays[_count : len(arrays) - len(_keywords)]
                named = dict(zip(_keywords, arrays[len(arrays) - len(_keywords) :]))
                grads = vjp(_call.function, cotangent, *positional, backend=backend, **named, **_options)
                return tuple(grads[name] for name in sorted(grads))

            arrays = cotangents + tuple(call.args) + tuple(call.kwargs[k] for k in keywords)
            calls.append(Call(call.label, gradients, arrays, {}))
        return calls

    return examples


# Every registered backward kernel ("<op>_vjp", also those other families add) without examples of
# its own (the mvn ones above: their forward examples draw noise in wrappers) is checked through
# fastgauss.vjp on op's own examples.
EXAMPLES.update({name: _vjp_examples(name[: -len("_vjp")]) for name in OPS if name.endswith("_vjp") and name not in EXAMPLES})
