"""Backend selection, host/device array detection, and the op registry.

Every public op resolves its backend here (``resolve``) and then calls
``implementation(op, backend)``: the function of the same name in the backend's
family module (``fastgauss.reference.<family>``, ``fastgauss.cpu.<family>`` or
``fastgauss.cuda.<family>``). Backend packages are imported on first use, so
``import fastgauss`` imports neither numba nor numba.cuda.
"""

import contextlib
import contextvars
import functools
import importlib
import os
import threading

from fastgauss._checks import is_device_array, is_scalar

BACKENDS = ("numpy", "cpu", "cuda")
_PACKAGES = {"numpy": "fastgauss.reference", "cpu": "fastgauss.cpu", "cuda": "fastgauss.cuda"}

# The one place an op is registered: op name -> family module, which has the
# same name in reference/, cpu/ and cuda/ and defines a function named like the op.
# Generator methods are ops too: their backend functions fill an output from (key, offset).
OPS = {
    "q_sample": "diffusion",
    "q_posterior": "diffusion",
    "predict_x0": "diffusion",
    "predict_eps": "diffusion",
    "predict_v": "diffusion",
    "v_to_x0": "diffusion",
    "v_to_eps": "diffusion",
    "posterior_mean_from_eps": "diffusion",
    "ddpm_step": "diffusion",
    "ddim_step": "diffusion",
    "philox4x32_10": "random",
    "standard_normal": "random",
    "normal": "random",
    "random": "random",
    "normal_kl": "kl",
    "normal_logpdf": "kl",
    "discretized_gaussian_log_likelihood": "kl",
    "cholesky": "mvn",
    "mvn_sample": "mvn",
    "mvn_logpdf": "mvn",
    "mvn_kl": "mvn",
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
    """The public function of ``op``: ``fastgauss.<family>.<op>``, or None for a Generator method."""
    return getattr(importlib.import_module(f"fastgauss.{OPS[op]}"), op, None)


def implementation(op, backend):
    """The backend function for ``op``: ``fastgauss.<backend package>.<family>.<op>``."""
    module = importlib.import_module(f"{_PACKAGES[backend]}.{OPS[op]}")
    return getattr(module, op)
