"""ddpm_step and ddim_step against the diffusers library itself, given the same noise.

Runs where diffusers and torch are installed (pip install diffusers torch); skipped
otherwise, since CI does not install PyTorch. test_steps.py holds the same semantics
to the formulas on every machine. diffusers keeps its tables in float32, so the
tolerances here are those of float32 tables (rtol = atol = 1e-4 for t <= 900).
"""

import numpy as np
import pytest

import fastgauss

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

PREDICTIONS = {"epsilon": "epsilon", "sample": "sample", "v": "v_prediction"}
TIMESTEPS = [0, 1, 37, 500, 900]


def schedule_of(scheduler):
    return fastgauss.NoiseSchedule(scheduler.betas.numpy().astype(np.float64))


def tensors(seed, shape=(2, 3, 8, 8)):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape).astype(np.float32) for _ in range(3))


@pytest.mark.parametrize("prediction", list(PREDICTIONS))
@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ddpm_step_matches_diffusers(prediction, variance, clip):
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", prediction_type=PREDICTIONS[prediction],
        variance_type="fixed_small" if variance == "small" else "fixed_large",
        clip_sample=clip is not None, clip_sample_range=clip or 1.0,
    )
    schedule = schedule_of(scheduler)
    model, xt, _ = tensors(1)
    for t in TIMESTEPS:
        generator = torch.Generator().manual_seed(t)
        expected = scheduler.step(torch.from_numpy(model), t, torch.from_numpy(xt), generator=generator).prev_sample.numpy()
        noise = diffusers.utils.torch_utils.randn_tensor(model.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float32).numpy()
        got = fastgauss.ddpm_step(model, xt, t, schedule, prediction=prediction, clip=clip, variance=variance, noise=noise)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=f"t={t}")


@pytest.mark.parametrize("prediction", list(PREDICTIONS))
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ddim_step_matches_diffusers(prediction, eta, clip):
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type=PREDICTIONS[prediction],
        clip_sample=clip is not None, clip_sample_range=clip or 1.0, set_alpha_to_one=True,
    )
    scheduler.set_timesteps(50)
    schedule = schedule_of(scheduler)
    model, xt, noise = tensors(2)
    for t in [int(v) for v in scheduler.timesteps[::7]] + [int(scheduler.timesteps[-1])]:
        expected = scheduler.step(
            torch.from_numpy(model), t, torch.from_numpy(xt), eta=eta, use_clipped_model_output=False,
            variance_noise=torch.from_numpy(noise),
        ).prev_sample.numpy()
        t_prev = max(t - 1000 // 50, -1)
        got = fastgauss.ddim_step(model, xt, t, t_prev, schedule, eta=eta, prediction=prediction, clip=clip, noise=noise)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=f"t={t}")


def test_q_posterior_matches_improved_diffusion_formulas():
    """improved-diffusion's q_posterior_mean_variance, transcribed (float64 tables)."""
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    betas = scheduler.betas.numpy().astype(np.float64)
    alphas_cumprod = np.cumprod(1.0 - betas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    log_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod)
    x0, xt, _ = (a.astype(np.float64) for a in tensors(3))
    t = np.array([0, 999])
    mean, variance, log_variance = fastgauss.q_posterior(x0, xt, t, fastgauss.NoiseSchedule(betas))
    np.testing.assert_allclose(mean, coef1[t, None, None, None] * x0 + coef2[t, None, None, None] * xt, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(variance.ravel(), posterior_variance[t], rtol=1e-12)
    np.testing.assert_allclose(log_variance.ravel(), log_clipped[t], rtol=1e-12)
