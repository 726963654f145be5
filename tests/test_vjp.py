"""fastgauss.vjp without torch (issue 11): the API, and the CUDA backward kernels against the NumPy
reference VJPs (under the simulator: tiny shapes). The gradients themselves are held to torch
autograd and to finite differences in tests/test_torch.py, and the cpu kernels to the reference
by the main job's self-check (fastgauss/_examples.py) and test_torch.py."""

import numpy as np
import pytest

import fastgauss
from conftest import CUDA_USABLE, to_backend, to_numpy

pytestmark = [
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

SCHEDULE = fastgauss.NoiseSchedule.linear(40)
SHAPE = (3, 2, 5)


def data(seed, shape=SHAPE, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


def test_vjp_api():
    x, g = data(0), data(1)
    t = np.array([1, 20, 39])
    grads = fastgauss.vjp(fastgauss.predict_x0, g, x, t, x, SCHEDULE, backend="numpy")
    assert set(grads) == {"xt", "eps"} and grads["xt"].shape == SHAPE
    np.testing.assert_allclose(grads["xt"], g / SCHEDULE.sqrt_alphas_cumprod[t][:, None, None], rtol=1e-15)
    assert set(fastgauss.vjp("predict_x0", g, x, t, x, SCHEDULE, wrt="eps", backend="numpy")) == {"eps"}
    # Python and NumPy scalars get no gradient; a 0-d array gets one of shape ()
    grads = fastgauss.vjp("normal_kl", g, x, 0.5, np.float64(0.1), np.array(0.2), backend="numpy")
    assert set(grads) == {"mean1", "logvar2"} and grads["logvar2"].shape == ()
    # float32 data: float32 gradients; the gradient of the per-sample form is summed back
    grads = fastgauss.vjp("normal_logpdf", g[:, 0, 0], x.astype(np.float32), 0.0, np.zeros((3, 1, 1), np.float32), reduce="sum", backend="numpy")
    assert grads["x"].dtype == np.float32 and grads["logvar"].shape == (3, 1, 1)
    np.testing.assert_allclose(grads["logvar"][:, 0, 0], 0.5 * ((x**2).sum((1, 2)) - 10) * g[:, 0, 0], rtol=1e-5)
    with pytest.raises(ValueError, match="wrt names \\['x0'\\]"):
        fastgauss.vjp("predict_x0", g, x, t, x, SCHEDULE, wrt="x0")
    with pytest.raises(ValueError, match="cotangent must have the result's shape \\(3,\\)"):
        fastgauss.vjp("normal_kl", g, x, 0.0, 0.0, 0.0, reduce="mean")
    with pytest.raises(ValueError, match="op must be a fastgauss op"):
        fastgauss.vjp("normal_kl_vjp", g, x, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="returns 2 outputs here"):
        fastgauss.vjp("ddpm_step", g, x, x, t, SCHEDULE, noise=x, return_x0=True)
    with pytest.raises(TypeError, match="t must be an integer"):
        fastgauss.vjp("q_sample", g, x, 0.5, SCHEDULE, x)


def test_noise_cotangents_and_the_clamp():
    """q_sample with return_noise and the noise given: the returned noise is the noise itself, so its
    cotangent adds to the noise gradient; the clip passes no gradient where x0 was clamped."""
    x, noise, g, h = data(0), data(1), data(2), data(3)
    t = np.array([1, 20, 39])
    grads = fastgauss.vjp("q_sample", (g, h), x, t, SCHEDULE, noise, return_noise=True, backend="numpy")
    np.testing.assert_allclose(grads["noise"], SCHEDULE.sqrt_one_minus_alphas_cumprod[t][:, None, None] * g + h, rtol=1e-15)
    grads = fastgauss.vjp("ddpm_step", (None, h), x, noise, t, SCHEDULE, prediction="sample", clip=0.5, noise=x, return_x0=True, backend="numpy")
    np.testing.assert_array_equal(grads["model_output"], np.where(np.abs(x) <= 0.5, h, 0.0))  # x0 = clamp(model_output)
    np.testing.assert_array_equal(grads["xt"], 0.0)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_an_infinite_cotangent_stays_out_of_terms_the_formula_lacks(backend):
    """A term the step does not have (the noise at t = 0, x_t's path through x0 when the model
    predicts x0 itself, eps in DDPM) contributes an exact 0, not 0 * inf = NaN; inf elsewhere
    stays inf and NaN stays NaN. The reference and the kernels agree (they did not: the
    reference multiplied by the zero coefficients)."""
    x, noise, g = data(0), data(1), data(2)
    t = np.array([0, 20, 39])
    g[:, 0, 0], g[:, 1, 1] = np.inf, np.nan
    for prediction in ("epsilon", "sample"):
        grads = fastgauss.vjp("ddpm_step", g, x, noise, t, SCHEDULE, prediction=prediction, noise=x, backend=backend)
        assert np.all(grads["noise"][0] == 0.0)  # t = 0: no noise term
        assert np.isinf(grads["noise"][1:, 0, 0]).all() and np.isnan(grads["noise"][:, 1, 1][1:]).all()
        finite = np.ones(SHAPE, bool)
        finite[:, 0, 0] = finite[:, 1, 1] = False
        for name in ("model_output", "xt"):
            # x_t's only term when the model predicts x0 is posterior_mean_coef2 x_t, 0 at t = 0
            lacking = 1 if (prediction, name) == ("sample", "xt") else 0
            assert np.all(grads[name][:lacking] == 0.0), (prediction, name)
            assert np.isinf(grads[name][lacking:, 0, 0]).all(), (prediction, name)
            assert np.isnan(grads[name][lacking:, 1, 1]).all(), (prediction, name)
            assert np.isfinite(grads[name][finite]).all()


@pytest.mark.skipif(not CUDA_USABLE, reason="cuda backend not usable")
@pytest.mark.parametrize("form", ["scalar", "per sample"])
def test_broadcast_cotangents(form):
    """A cotangent that is a broadcast view (stride 0: what torch passes for .sum() or .mean()) is read
    without a full-size copy by the cpu kernels and gives the gradients of its materialized copy."""
    t = np.array([1, 20, 39])
    value = 0.7 if form == "scalar" else data(4, (3, 1, 1))
    g = np.broadcast_to(value, SHAPE)
    x, noise = data(0), data(1)
    calls = [
        ("q_sample", (x, t, SCHEDULE, noise), {}),
        ("predict_x0", (x, t, noise, SCHEDULE), {}),
        ("ddpm_step", (x, noise, t, SCHEDULE), {"prediction": "sample", "clip": 0.5, "noise": x}),
        ("normal_kl", (x, noise, 0.5, data(2)), {}),
    ]
    for op, args, kwargs in calls:
        got = fastgauss.vjp(op, g, *args, backend="cpu", **kwargs)
        want = fastgauss.vjp(op, np.ascontiguousarray(g), *args, backend="numpy", **kwargs)
        assert set(got) == set(want), op
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-14, err_msg=f"{op} {name}")


def test_cuda_backward_kernels_match_the_reference():
    """Every CUDA backward kernel (the step/linear kernel, the KL kernel in every gradient plan and the
    broadcast sums) against the reference VJPs: float64 within 1e-12 relative to each gradient's
    largest magnitude (the kernels' exp and log are within a few ulp), float32 within 1e-6."""

    def check(op, args, kwargs, rtol=1e-12):
        want = fastgauss.vjp(op, *args, **kwargs, backend="numpy")
        moved = [tuple(to_backend(a, "cuda") for a in x) if isinstance(x, tuple) else to_backend(x, "cuda") for x in args]
        got = fastgauss.vjp(op, *moved, **{k: to_backend(v, "cuda") for k, v in kwargs.items()}, backend="cuda")
        assert set(got) == set(want)
        for name in want:
            value = to_numpy(got[name])
            assert value.shape == want[name].shape and value.dtype == want[name].dtype
            assert np.abs(value - want[name]).max() <= rtol * np.abs(want[name]).max(), (op, name)

    t = np.array([4, 20, 39])
    x, model, noise, g, h = (data(k) for k in range(5))
    check("ddim_step", ((g, h), model, x, t, t - 3, SCHEDULE), dict(eta=0.5, prediction="v", clip=1.0, noise=noise, return_x0=True))
    check("q_sample", ((g, h), x, t, SCHEDULE, noise), dict(return_noise=True))
    check("predict_eps", (g, x, t, model, SCHEDULE), {})
    args = (data(5), data(6, (3, 1, 1)), data(7, (2, 5)), data(8, (1, 2, 1), 0.5))
    check("normal_kl", (g, *args), {})
    check("normal_kl", (g[:, 0, 0].copy(), *args), dict(reduce="mean"))
    levels = np.round(np.clip(data(9), -1, 1) * 7.5) / 7.5
    levels[0, 0, :2] = (-1.0, 1.0)
    check("discretized_gaussian_log_likelihood", (g[:, 0, 0].copy(), levels, 0.1 * data(10), np.array(-0.5)), dict(reduce="sum", bins=15))
    check("normal_logpdf", (g, x, data(11, (2, 5)), data(12, (3, 1, 1))), {})
    # float32: the step kernel computes in float32 (its coefficients rounded to float32), the KL
    # kernel in float64 rounded once
    f32 = lambda *arrays: tuple(a.astype(np.float32) for a in arrays)  # noqa: E731
    check("ddpm_step", (g.astype(np.float32), *f32(model, x), t, SCHEDULE), dict(noise=noise.astype(np.float32), clip=1.0), rtol=1e-6)
    check("normal_kl", (g[:, 0, 0].astype(np.float32), *f32(*args)), dict(reduce="sum"), rtol=1e-6)
