"""fastgauss: compiled Gaussian kernels for diffusion models and Gaussian sampling.

Every op is one function here with a ``backend=`` argument: "numpy" (the reference,
also as ``fastgauss.reference``), "cpu" (Numba, parallel) or "cuda" (Numba CUDA).
Importing fastgauss compiles nothing and imports neither numba nor numba.cuda:
backends load on their first call.
"""

from fastgauss._dispatch import backends, get_backend, set_backend, use_backend
from fastgauss import random
from fastgauss.diffusion import (
    ddim_step,
    ddpm_step,
    posterior_mean_from_eps,
    predict_eps,
    predict_v,
    predict_x0,
    q_posterior,
    q_sample,
    v_to_eps,
    v_to_x0,
)
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
from fastgauss.objective import diffusion_loss, hybrid_loss, model_log_variance, nll_bpd, prior_bpd, vlb_terms
from fastgauss.random import Generator, default_rng
from fastgauss.schedules import NoiseSchedule
from fastgauss.vjp import vjp

__version__ = "0.1.0"

__all__ = [
    "Generator",
    "NoiseSchedule",
    "default_rng",
    "random",
    "backends",
    "get_backend",
    "q_sample",
    "q_posterior",
    "predict_x0",
    "predict_eps",
    "predict_v",
    "v_to_x0",
    "v_to_eps",
    "posterior_mean_from_eps",
    "ddpm_step",
    "ddim_step",
    "cholesky",
    "mvn_sample",
    "mvn_logpdf",
    "mvn_kl",
    "normal_kl",
    "normal_logpdf",
    "discretized_gaussian_log_likelihood",
    "mvn_affine",
    "mvn_marginal",
    "mvn_condition",
    "gaussian_product",
    "kalman_update",
    "normal_product",
    "model_log_variance",
    "vlb_terms",
    "prior_bpd",
    "diffusion_loss",
    "hybrid_loss",
    "nll_bpd",
    "set_backend",
    "use_backend",
    "vjp",
]


def __getattr__(name):
    # `fastgauss.reference` loads on first access, like the other backends.
    if name == "reference":
        import importlib

        return importlib.import_module("fastgauss.reference")
    raise AttributeError(f"module 'fastgauss' has no attribute {name!r}")
