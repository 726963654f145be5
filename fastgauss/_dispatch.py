"""Backend selection, host/device array detection, and the op registry.

Every public op resolves its backend here (``resolve``) and then calls
``implementation(op, backend)``: the function of the same name in the backend's
family module (``fastgauss.reference.<family>``, ``fastgauss.cpu.<family>`` or
``fastgauss.cuda.<family>``), with the arguments ``OPS[op]`` declares. Backend packages are imported on first use, so
``import fastgauss`` imports neither numba nor numba.cuda.
"""

import contextlib
import contextvars
import functools
import importlib
import itertools
import os
import sys
import threading
from typing import NamedTuple

from fastgauss._checks import is_device_array, is_scalar

BACKENDS = ("numpy", "cpu", "cuda")
_PACKAGES = {"numpy": "fastgauss.reference", "cpu": "fastgauss.cpu", "cuda": "fastgauss.cuda"}

class Op(NamedTuple):
    """An op's registry entry: its family (the module of that name in reference/, cpu/ and cuda/
    defines a function named like the op) and the backend contract, the arguments that function
    takes, in order, as a Python parameter list: names after ``*`` are keyword-only, and no
    argument has a default (the public function passes every one). ``str(op)`` is the family."""

    family: str
    args: str

    def __str__(self):
        return self.family

    def parameters(self):
        """The contract as a list of names, with "*" where keyword-only arguments start."""
        return [name.strip() for name in self.args.split(",")]


_LINEAR = "{}, {}, t, schedule, out"
_GENERATOR = "out, key, offset, window"
_LINEAR_VJP = "cotangent, t, schedule, grad_{}, grad_{}"

# The one place an op is registered: op name -> Op(family, backend arguments).
# Generator methods are ops too: their backend functions fill an output from (key, offset), or
# one block of a larger output (window: fastgauss._plans.stream.Window; None for the whole).
# tests/test_architecture.py holds every backend function to its declared arguments.
OPS = {
    "q_sample": Op("diffusion", "x0, t, schedule, noise, out, noise_out, stream"),
    "q_posterior": Op("diffusion", _LINEAR.format("x0", "xt")),
    "predict_x0": Op("diffusion", _LINEAR.format("xt", "eps")),
    "predict_eps": Op("diffusion", _LINEAR.format("xt", "x0")),
    "predict_v": Op("diffusion", _LINEAR.format("x0", "eps")),
    "v_to_x0": Op("diffusion", _LINEAR.format("xt", "v")),
    "v_to_eps": Op("diffusion", _LINEAR.format("xt", "v")),
    "posterior_mean_from_eps": Op("diffusion", _LINEAR.format("xt", "eps")),
    "ddpm_step": Op("diffusion", "model_output, xt, t, schedule, out, *, x0_out, noise, stream, prediction, clip, variance"),
    "ddim_step": Op("diffusion", "model_output, xt, t, t_prev, schedule, out, *, x0_out, noise, stream, eta, prediction, clip"),
    "philox4x32_10": Op("random", "counters, keys, out"),
    "standard_normal": Op("random", _GENERATOR),
    "normal": Op("random", _GENERATOR + ", loc, scale"),
    "random": Op("random", _GENERATOR),
    "normal_kl": Op("kl", "mean1, logvar1, mean2, logvar2, *, shape, reduce, out"),
    "normal_logpdf": Op("kl", "x, mean, logvar, *, shape, reduce, out"),
    "discretized_gaussian_log_likelihood": Op("kl", "x, means, log_scales, *, bins, shape, reduce, out"),
    "model_log_variance": Op("objective", "var_output, t, schedule, out, *, kind"),
    "vlb_terms": Op("objective", "x0, xt, t, model_output, schedule, var_output, out, *, prediction, var_kind, clip, reduce"),
    "prior_bpd": Op("objective", "x0, schedule, out"),
    "diffusion_loss": Op("objective", "model_output, x0, noise, t, schedule, out, *, prediction, weighting, gamma, reduce"),
    "hybrid_loss": Op(
        "objective",
        "model_output, var_output, x0, noise, t, schedule, out, *, prediction, var_kind, weighting, gamma, vb_scale, reduce",
    ),
    # Backward passes (the VJP contract): "<op>_vjp" takes the cotangent, the forward's arguments
    # and one gradient array per differentiable argument (None: not wanted, not computed).
    "vlb_terms_vjp": Op(
        "objective",
        "cotangent, x0, xt, t, model_output, schedule, var_output, *, prediction, var_kind, clip, reduce, "
        "x0_grad, xt_grad, model_output_grad, var_output_grad",
    ),
    "diffusion_loss_vjp": Op(
        "objective",
        "cotangent, model_output, x0, noise, t, schedule, *, prediction, weighting, gamma, reduce, model_output_grad, x0_grad",
    ),
    "hybrid_loss_vjp": Op(
        "objective",
        "cotangent, model_output, var_output, x0, noise, t, schedule, *, prediction, var_kind, weighting, gamma, vb_scale, "
        "reduce, model_output_grad, var_output_grad",
    ),
    "cholesky": Op("mvn", "a, upper, out"),
    "mvn_sample": Op("mvn", "mean, cov, scale_tril, batch, noise, out, *, fresh, stream, tol"),
    "mvn_logpdf": Op("mvn", "x, mean, cov, scale_tril, batch, out"),
    "mvn_kl": Op("mvn", "mean1, cov1, mean2, cov2, batch, out"),
    # Gradients (VJPs): "<op>_vjp" takes the cotangent, the forward's inputs and one preallocated
    # gradient per differentiable argument (None: not wanted, not computed).
    "cholesky_vjp": Op("mvn", "cotangent, a, upper, grad_a"),
    "mvn_sample_vjp": Op("mvn", "cotangent, mean, cov, scale_tril, batch, noise, *, stream, grad_mean, grad_cov, grad_scale_tril, grad_noise"),
    "mvn_logpdf_vjp": Op("mvn", "cotangent, x, mean, cov, scale_tril, batch, *, grad_x, grad_mean, grad_cov, grad_scale_tril"),
    "mvn_kl_vjp": Op("mvn", "cotangent, mean1, cov1, mean2, cov2, batch, *, grad_mean1, grad_cov1, grad_mean2, grad_cov2"),
    "mvn_affine": Op("mvn", "mean, cov, A, b, batch, mean_out, cov_out"),
    "mvn_marginal": Op("mvn", "mean, cov, index, batch, mean_out, cov_out"),
    "mvn_condition": Op("mvn", "mean, cov, index, other, value, batch, mean_out, *, cov_out"),
    "gaussian_product": Op("mvn", "mean1, cov1, mean2, cov2, batch, mean_out, cov_out, *, log_scale_out"),
    "kalman_update": Op("mvn", "mean, cov, H, R, y, batch, mean_out, *, cov_out, log_likelihood_out"),
    "normal_product": Op("kl", "mean1, logvar1, mean2, logvar2, *, shape, mean_out, logvar_out, log_scale_out"),
    # Backward kernels (VJPs): "<op>_vjp" writes the gradient of each argument whose grad_<name> is
    # an array from the cotangent of op's result; the public face is fastgauss.vjp (fastgauss/vjp.py).
    "q_sample_vjp": Op("diffusion", "cotangent, noise_cotangent, t, schedule, grad_x0, grad_noise"),
    "q_posterior_vjp": Op("diffusion", _LINEAR_VJP.format("x0", "xt")),
    "predict_x0_vjp": Op("diffusion", _LINEAR_VJP.format("xt", "eps")),
    "predict_eps_vjp": Op("diffusion", _LINEAR_VJP.format("xt", "x0")),
    "predict_v_vjp": Op("diffusion", _LINEAR_VJP.format("x0", "eps")),
    "v_to_x0_vjp": Op("diffusion", _LINEAR_VJP.format("xt", "v")),
    "v_to_eps_vjp": Op("diffusion", _LINEAR_VJP.format("xt", "v")),
    "posterior_mean_from_eps_vjp": Op("diffusion", _LINEAR_VJP.format("xt", "eps")),
    "ddpm_step_vjp": Op(
        "diffusion",
        "cotangent, model_output, xt, t, schedule, grad_model_output, grad_xt, *, x0_cotangent, grad_noise, prediction, clip, variance",
    ),
    "ddim_step_vjp": Op(
        "diffusion",
        "cotangent, model_output, xt, t, t_prev, schedule, grad_model_output, *, grad_xt, x0_cotangent, grad_noise, eta, prediction, clip",
    ),
    "normal_kl_vjp": Op(
        "kl", "cotangent, mean1, logvar1, mean2, logvar2, *, shape, reduce, grad_mean1, grad_logvar1, grad_mean2, grad_logvar2"
    ),
    "normal_logpdf_vjp": Op("kl", "cotangent, x, mean, logvar, *, shape, reduce, grad_x, grad_mean, grad_logvar"),
    "discretized_gaussian_log_likelihood_vjp": Op(
        "kl", "cotangent, x, means, log_scales, *, bins, shape, reduce, grad_x, grad_means, grad_log_scales"
    ),
}

ENV_VAR = "FASTGAUSS_BACKEND"

_global_backend = None
_context_backend = contextvars.ContextVar("fastgauss_backend", default=None)


def _check_name(name, source):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} from {source}; expected one of {BACKENDS}")
    return name


def set_backend(name):
    """Set the process-wide default backend ("numpy", "cpu", "cuda"), or None for auto.

    It applies where neither ``backend=`` nor ``use_backend`` says otherwise.

    >>> fastgauss.set_backend("numpy")   # every op now runs the NumPy reference
    >>> fastgauss.set_backend(None)      # back to auto
    """
    global _global_backend
    _global_backend = None if name is None else _check_name(name, "set_backend")


def get_backend():
    """The backend configured by ``use_backend``, ``set_backend`` or FASTGAUSS_BACKEND, or None (auto)."""
    return _configured()[0]


@contextlib.contextmanager
def use_backend(name):
    """Context manager: ops inside run on backend ``name`` unless they pass ``backend=``.

    The setting is local to the current thread (and asyncio task).

    >>> with fastgauss.use_backend("numpy"):
    ...     xt = fastgauss.q_sample(x0, t, schedule, noise)   # the reference
    """
    token = _context_backend.set(_check_name(name, "use_backend"))
    try:
        yield
    finally:
        _context_backend.reset(token)


def _configured():
    """(name, source) of the configured backend, lowest-priority source last."""
    name = _context_backend.get()
    if name is not None:
        return name, "use_backend"
    if _global_backend is not None:
        return _global_backend, "set_backend"
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return _check_name(env, f"the {ENV_VAR} environment variable"), ENV_VAR
    return None, "auto"


_cuda_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def cuda_unavailable_reason():
    """None when the cuda backend is usable, else a sentence saying why not."""
    with _cuda_lock:
        try:
            from numba import cuda
        except ImportError as exc:  # numba-cuda missing or broken
            return f"numba.cuda cannot be imported ({exc}); install fastgauss[cuda]"
        try:
            if cuda.is_available():
                return None
        except Exception as exc:  # a broken driver must not break the CPU paths
            return f"numba.cuda.is_available() failed: {exc}"
        return "no CUDA GPU or driver was found (numba.cuda.is_available() is False)"


def backends():
    """The tuple of backends usable on this machine, e.g. ("numpy", "cpu") or ("numpy", "cpu", "cuda")."""
    usable = ("numpy", "cpu")
    return usable + ("cuda",) if cuda_unavailable_reason() is None else usable


def resolve(backend, arrays):
    """Pick the backend for one call and check that the arrays live where it runs.

    ``arrays`` maps argument names to values (None and Python/NumPy scalars are
    neutral). Raises ValueError for an unknown name, RuntimeError when cuda is asked
    for but unusable, TypeError when host and device arrays are mixed or live on the
    wrong side of the chosen backend.
    """
    if backend is not None:
        name, source = _check_name(backend, "backend="), "backend="
    else:
        name, source = _configured()
    on_device = {k: is_device_array(v) for k, v in arrays.items() if v is not None and not is_scalar(v)}
    if name is None:
        name = "cuda" if any(on_device.values()) else "cpu"
    if name == "cuda":
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"backend 'cuda' (from {source}) is not usable: {reason}")
    host = [k for k, dev in on_device.items() if not dev]
    device = [k for k, dev in on_device.items() if dev]
    if host and device:
        raise TypeError(
            f"cannot mix host and CUDA arrays in one call: {', '.join(device)} on the GPU, "
            f"{', '.join(host)} on the host; fastgauss never copies between them implicitly"
        )
    if name == "cuda" and host:
        raise TypeError(
            f"backend 'cuda' needs CUDA arrays, but {', '.join(host)} is a host array "
            "(move it to the GPU first, e.g. numba.cuda.to_device)"
        )
    if name != "cuda" and device:
        raise TypeError(
            f"backend {name!r} (from {source}) needs host arrays, but {', '.join(device)} is a CUDA array "
            "(use backend='cuda', or copy it to the host first)"
        )
    return name


def public_function(op):
    """The public function of ``op``: ``fastgauss.<family>.<op>``, or None for a Generator method;
    for a gradient ``<name>_vjp``, the family's ``_vjp_<name>`` (what ``fastgauss.vjp`` calls)."""
    module = importlib.import_module(f"fastgauss.{OPS[op].family}")
    if op.endswith("_vjp") and op[: -len("_vjp")] in OPS:
        return getattr(module, "_vjp_" + op[: -len("_vjp")], None)
    return getattr(module, op, None)


def implementation(op, backend):
    """The backend function for ``op``: ``fastgauss.<backend package>.<family>.<op>``."""
    module = importlib.import_module(f"{_PACKAGES[backend]}.{OPS[op].family}")
    return getattr(module, op)


# --- interop: array kinds the adapters in fastgauss/interop/ take over ----------------------------
# The top-level module of an array's type -> its adapter. A public op called with such an array (an
# argument, or an item of a tuple or list argument) hands the whole call to the adapter's
# ``call(op, args, kwargs)``, which converts, calls the op on plain arrays (and, for autograd, its
# VJP) and converts back. The adapter is imported only then, so ``import fastgauss`` never imports
# torch or dask; and an array of a library that is not imported cannot exist, so sys.modules is
# checked first.
ADAPTERS = {"torch": "fastgauss.interop.torch", "dask": "fastgauss.interop.dask"}


def interop_kind(values):
    """The adapted kind ("torch", "dask") of the first such array among ``values``, or None."""
    for value in values:
        if isinstance(value, (tuple, list)):
            kind = interop_kind(value)
        else:
            library = type(value).__module__.partition(".")[0]
            kind = library if library in ADAPTERS and library in sys.modules else None
        if kind is not None:
            return kind
    return None


def adapter(kind):
    """The adapter module for an array kind, imported on first use (it imports its library)."""
    return importlib.import_module(ADAPTERS[kind])


def adapts(function):
    """Decorator of the public ops and Generator methods: a call with an array of an adapted kind
    (a torch tensor, a Dask array) goes to that kind's adapter, ``adapter(kind).call(function,
    args, kwargs)`` with the undecorated function (which the adapter runs on its views: those of
    CUDA tensors are tensors, and must not come back here); any other call runs ``function``."""

    @functools.wraps(function)
    def op(*args, **kwargs):
        kind = interop_kind(itertools.chain(args, kwargs.values()))
        if kind is None:
            return function(*args, **kwargs)
        return adapter(kind).call(function, args, kwargs)

    return op
