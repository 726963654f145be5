"""PyTorch adapter: torch tensors in and out of every fastgauss op, and autograd through
fastgauss's own backward kernels.

A call with tensors (``fastgauss._dispatch.adapts`` hands it here) runs the op on views of
them (CPU tensors as NumPy arrays, CUDA tensors through ``__cuda_array_interface__``: no copy)
with its results allocated by torch, on the device of the inputs; CUDA kernels launch on
torch's current stream of that device. ``out=`` may be a tensor. Mixing tensors with NumPy or
other arrays is a TypeError; float16 and bfloat16 tensors are refused.

When autograd is on and a tensor argument requires grad, the op runs inside one generic
``torch.autograd.Function``: forward calls the op, backward calls ``fastgauss.vjp`` with the
saved inputs (the inputs only, and the Generator state for ops drawing noise with ``rng=``,
so the backward regenerates the noise it needs instead of storing it). Double backward is
refused (``once_differentiable``). Without requires_grad no Function is made and nothing is
saved.

Under ``torch.compile`` a fastgauss call is a graph break: the compiler runs it eagerly,
as above, between the graphs it compiles (``torch.compiler.disable``), and gradients flow
through it; ``fullgraph=True`` refuses it, as it refuses any graph break.
"""

import contextlib
import ctypes
import functools
import inspect
import sys

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from fastgauss import _checks
from fastgauss._dispatch import get_backend
from fastgauss.random import as_generator, default_rng
from fastgauss.vjp import _lookup, differentiable

_REFUSED = (torch.float16, torch.bfloat16)


class _Slot:
    """Where the ``index``-th tensor of a call goes in its arguments."""

    def __init__(self, index):
        self.index = index


class _Call:
    """One op call, its tensors taken out of the arguments (``labels[i]`` names tensor i)."""

    def __init__(self, function, args, kwargs):
        self.function = function
        self.signature = inspect.signature(function)
        self.labels, self.tensors, self.foreign = [], [], []
        bound = self.signature.bind(*args, **kwargs)
        self.template = {name: self._take(name, value) for name, value in bound.arguments.items()}
        self.backend = self.template.get("backend") or get_backend()
        self.rng_state = None

    def _take(self, label, value):
        if isinstance(value, torch.Tensor):
            if value.dtype in _REFUSED:
                raise TypeError(f"{label} has dtype {value.dtype}; fastgauss computes in float32 or float64 (convert with .float())")
            if value.device.type not in ("cpu", "cuda"):
                raise TypeError(f"{label} is on device {value.device}; fastgauss takes CPU and CUDA tensors")
            if value.layout != torch.strided:
                raise TypeError(f"{label} has layout {value.layout}; fastgauss takes dense tensors (convert with .to_dense())")
            try:
                value.data_ptr()
            except RuntimeError:  # a functorch wrapper (vmap's BatchedTensor, func.grad's) or a fake tensor
                raise TypeError(
                    f"{label} is a tensor without storage (inside torch.func.vmap, grad or jacrev?); fastgauss "
                    "runs on tensors with data: call it on the whole batch, with torch.autograd for gradients"
                ) from None
            self.labels.append(label)
            self.tensors.append(value)
            return _Slot(len(self.tensors) - 1)
        if isinstance(value, (tuple, list)):
            return type(value)(self._take(f"{label}[{i}]", v) for i, v in enumerate(value))
        if isinstance(value, dict):  # **kwargs
            return {k: self._take(k, v) for k, v in value.items()}
        if isinstance(value, np.ndarray) or hasattr(value, "__cuda_array_interface__") or _checks.is_device_array(value):
            self.foreign.append(label)
        return value

    def check(self):
        if self.foreign:
            raise TypeError(
                f"cannot mix torch tensors ({', '.join(self.labels)}) and other arrays ({', '.join(self.foreign)}) in one "
                "call; convert them first (torch.from_numpy, torch.as_tensor or Tensor.numpy())"
            )

    def arguments(self, values, **replace):
        """(args, kwargs) for the function, with the tensor slots filled from ``values``."""

        def fill(value):
            if isinstance(value, _Slot):
                return values[value.index]
            if isinstance(value, (tuple, list)):
                return type(value)(fill(v) for v in value)
            if isinstance(value, dict):
                return {k: fill(v) for k, v in value.items()}
            return value

        filled = {name: fill(value) for name, value in self.template.items()}
        filled.update(replace)
        bound = inspect.BoundArguments(self.signature, filled)
        return bound.args, bound.kwargs


def _torch_dtype(dtype):
    return getattr(torch, np.dtype(dtype).name)


_HUGE_PAGE_MIN_BYTES = 4 << 20  # NumPy's threshold for the same advice
_MADV_HUGEPAGE = 14


@functools.cache
def _madvise():
    """libc's madvise on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return madvise


def _advise_huge_pages(tensor):
    """Ask Linux to back a large new host tensor with transparent huge pages, as NumPy does for
    its own arrays of 4 MiB and more: the first write of a 50 MB output then takes ~12 page
    faults a core instead of ~6,000 (torch asks only with THP_MEM_ALLOC_ENABLE=1). A hint:
    where it is refused nothing changes."""
    nbytes = tensor.numel() * tensor.element_size()
    madvise = _madvise() if nbytes >= _HUGE_PAGE_MIN_BYTES else None
    if madvise is not None:
        page = 4096
        start = -(-tensor.data_ptr() // page) * page
        stop = (tensor.data_ptr() + nbytes) // page * page
        madvise(start, stop - start, _MADV_HUGEPAGE)


class _Conversion:
    """Tensors -> arrays for one call, and the call's results back to tensors: host results
    are allocated by torch (``_checks.host_allocator``) and returned as those tensors; a result
    that is an input's view (``out=``, a returned input) returns that input tensor."""

    def __init__(self, tensors):
        self.tensors = tensors
        self.arrays = [_as_array(t) for t in tensors]
        # each view (a NumPy array, or a detached CUDA tensor) -> the tensor it views
        self.views = {id(a): t for a, t in zip(self.arrays, tensors)}
        self.device = next((t.device for t in tensors if t.is_cuda), None)
        self.allocated = {}

    def allocate(self, shape, dtype):
        tensor = torch.empty(shape, dtype=_torch_dtype(dtype))
        _advise_huge_pages(tensor)
        array = tensor.numpy()
        self.allocated[id(array)] = (array, tensor)
        return array

    def to_torch(self, value):
        if id(value) in self.views:  # out= or a returned input (the views are alive: their ids are theirs)
            return self.views[id(value)]
        if isinstance(value, np.ndarray):
            if id(value) in self.allocated and self.allocated[id(value)][0] is value:
                return self.allocated[id(value)][1]
            return torch.from_numpy(value if value.flags.writeable else value.copy())
        if isinstance(value, tuple):
            return tuple(self.to_torch(v) for v in value)
        if isinstance(value, dict):
            return {k: self.to_torch(v) for k, v in value.items()}
        if not isinstance(value, torch.Tensor) and _checks.is_device_array(value):  # a Numba device array
            return torch.as_tensor(value, device=self.device or "cuda")
        return value

    @contextlib.contextmanager
    def running(self):
        with _checks.host_allocator(self.allocate), _launch_stream(self.tensors):
            yield


def _as_array(tensor):
    tensor = tensor.detach()
    if tensor.is_cuda:
        return tensor  # viewed through __cuda_array_interface__ by the cuda backend
    return tensor.resolve_conj().resolve_neg().numpy()


@contextlib.contextmanager
def _launch_stream(tensors):
    """CUDA tensors: launch on torch's current stream of their device (and on that device)."""
    device = next((t.device for t in tensors if t.is_cuda), None)
    if device is None:
        yield
        return
    from numba import cuda

    from fastgauss.cuda import use_stream

    index = device.index if device.index is not None else torch.cuda.current_device()
    with cuda.gpus[index], use_stream(cuda.external_stream(torch.cuda.current_stream(index).cuda_stream)):
        yield


def _run(call, tensors, **replace):
    conversion = _Conversion(tensors)
    args, kwargs = call.arguments(conversion.arrays, **replace)
    with conversion.running():
        return conversion.to_torch(call.function(*args, **kwargs))


def __getattr__(name):
    """``call``, the adapter's entry point (``fastgauss._dispatch.adapts``): once torch._dynamo is
    loaded (torch.compile in use), the entry wrapped in ``torch.compiler.disable``, because Dynamo
    must not trace the call (it would trace the views' NumPy calls as torch ops and reach into
    Numba, where it fails: it chose the cuda backend for CPU tensors). Before that, the plain
    entry: importing torch._dynamo only for the wrapper would cost a second."""
    if name == "call":
        return _compile_safe_call() if "torch._dynamo" in sys.modules else _call
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _compile_safe_call():
    return torch.compiler.disable(_call)


def _call(function, args, kwargs):
    """Run ``function`` (a public op or Generator method, undecorated) on a call with tensors."""
    c = _Call(function, args, kwargs)
    c.check()
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in c.tensors)
    if not needs_grad:
        return _run(c, c.tensors)
    name = function.__name__
    if not differentiable(name) or "self" in c.signature.parameters:
        wanting = [label for label, t in zip(c.labels, c.tensors) if t.requires_grad]
        raise RuntimeError(f"fastgauss {name} has no gradient, but {', '.join(wanting)} requires grad; pass .detach()")
    if c.template.get("out") is not None:
        raise RuntimeError(f"fastgauss {name}: out= does not support automatic differentiation (as in torch)")
    if "rng" in c.signature.parameters and c.template.get("noise") is None:
        rng = as_generator(c.template.get("rng"))  # the stream the forward draws from, at its start
        c.template["rng"] = rng
        c.rng_state = rng.state
    result = _OpFunction.apply(c, *c.tensors)
    return result


class _OpFunction(torch.autograd.Function):
    """Any differentiable fastgauss op: forward runs the op, backward its VJP."""

    @staticmethod
    def forward(ctx, c, *tensors):
        ctx.call = c
        ctx.set_materialize_grads(False)
        result = _run(c, tensors)
        ctx.tuple = isinstance(result, tuple)
        ctx.save_for_backward(*tensors)
        return result

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        c = ctx.call
        tensors = ctx.saved_tensors
        nothing = (None,) * (1 + len(tensors))
        wrt = [label for label, need in zip(c.labels, ctx.needs_input_grad[1:]) if need]
        if not wrt or all(g is None for g in grads):
            return nothing
        cotangent = tuple(grads) if ctx.tuple else grads[0]
        replace = {"out": None} if "out" in c.template else {}
        if c.rng_state is not None:  # a Generator in the state the forward started from
            rng = default_rng(0)
            rng.state = c.rng_state
            replace["rng"] = rng
        if "backend" in c.signature.parameters:
            replace["backend"] = c.backend
        gradients = _gradients(c, tensors, cotangent, wrt, replace)
        missing = [label for label in wrt if label not in gradients]
        if missing:
            raise RuntimeError(f"fastgauss {c.function.__name__} has no gradient for {', '.join(missing)}")
        return (None,) + tuple(gradients.get(label) for label in c.labels)


def _gradients(c, tensors, cotangent, wrt, replace):
    cotangents = cotangent if isinstance(cotangent, tuple) else (cotangent,)
    cotangents = [g if g is None or not g.is_cuda else g.contiguous() for g in cotangents]
    conversion = _Conversion(list(tensors) + [g for g in cotangents if g is not None])
    arrays = iter(conversion.arrays[len(tensors) :])
    converted = tuple(None if g is None else next(arrays) for g in cotangents)
    args, kwargs = c.arguments(conversion.arrays[: len(tensors)], **replace)
    vjp = _lookup(c.function.__name__)
    with conversion.running():
        result = vjp(converted if isinstance(cotangent, tuple) else converted[0], *args, wrt=wrt, **kwargs)
    return conversion.to_torch(result)
