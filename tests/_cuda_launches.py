"""Which CUDA kernels the test suite launches, and with which argument types.

conftest.py installs ``record()`` for the session: every launch of a ``@cuda.jit`` kernel
(under the simulator, or on a GPU) adds (module, kernel, Numba argument types) to
``LAUNCHES``. Two consumers:

- the session check in conftest.py: after a full run, every kernel of ``fastgauss.cuda``
  (``kernels()``) must have been launched at least once;
- ci/cuda_compile.py: with ``FASTGAUSS_KERNEL_LAUNCHES=path`` the signatures are written
  to a JSON file (``encode``), which the harness reads back (``decode``) in a process
  without the simulator and compiles with the real numba-cuda target.

Under pytest-xdist each worker records its own launches and sends them (``entries``, JSON-able)
to the controller, which merges them (``merge``) before it checks and writes.

Nothing here changes what a kernel does: the wrapper records the types and calls the
original launch.
"""

import importlib
import json
import pkgutil

LAUNCHES = {}  # (module, kernel) -> set of argument-type tuples (numba types)
MERGED = []  # entries() sent by pytest-xdist workers (the controller launches nothing itself)


def kernels():
    """{(module, name): dispatcher} of every @cuda.jit kernel (not device function) in fastgauss.cuda."""
    import fastgauss.cuda

    found = {}
    for info in pkgutil.iter_modules(fastgauss.cuda.__path__):
        module = importlib.import_module(f"fastgauss.cuda.{info.name}")
        for name, value in vars(module).items():
            func = getattr(value, "py_func", None)
            if func is None or getattr(func, "__module__", None) != module.__name__:
                continue
            device = value._device if hasattr(value, "_device") else value.targetoptions.get("device", False)
            if not device:
                found[(module.__name__, name)] = value
    return found


def _add(func, argtypes):
    if not func.__module__.startswith("fastgauss.cuda."):
        return  # a kernel defined by a test
    LAUNCHES.setdefault((func.__module__, func.__name__), set()).add(tuple(argtypes))


def record():
    """Wrap the kernel launch of the active CUDA target (simulator or driver) to fill LAUNCHES."""
    from numba import config, typeof

    if config.ENABLE_CUDASIM:
        from numba.cuda.simulator.kernel import FakeCUDAKernel

        original = FakeCUDAKernel.__call__

        def launch(self, *args):
            from numba.cuda.simulator import kernel as sim

            if not self._device and not sim._kernel_context:
                _add(self.fn, [typeof(a) for a in args])
            return original(self, *args)

        FakeCUDAKernel.__call__ = launch
    else:
        from numba.cuda.dispatcher import CUDADispatcher

        original = CUDADispatcher.call

        def call(self, args, *launch, **options):
            _add(self.py_func, [self.typeof_pyval(a) for a in args])
            return original(self, args, *launch, **options)

        CUDADispatcher.call = call


# --- JSON form of the argument types ----------------------------------------------------------


def encode(ty):
    """A JSON-able description of a Numba argument type; ``decode`` inverts it."""
    from numba import types

    if isinstance(ty, types.Array):
        return {"array": str(ty.dtype), "ndim": ty.ndim, "layout": ty.layout, "readonly": not ty.mutable}
    if isinstance(ty, (types.Boolean, types.Integer, types.Float)):
        return {"scalar": str(ty)}
    if isinstance(ty, (types.NamedTuple, types.NamedUniTuple)):
        cls = ty.instance_class
        return {"namedtuple": f"{cls.__module__}:{cls.__qualname__}", "items": [encode(t) for t in ty.types]}
    if isinstance(ty, types.BaseTuple):
        return {"tuple": [encode(t) for t in ty.types]}
    return {"unsupported": str(ty)}  # decode raises: a kernel argument the real target may not take


def decode(spec):
    import numpy as np
    from numba import types
    from numba.np.numpy_support import from_dtype

    if "array" in spec:
        return types.Array(from_dtype(np.dtype(spec["array"])), spec["ndim"], spec["layout"], readonly=spec["readonly"])
    if "scalar" in spec:
        return from_dtype(np.dtype(spec["scalar"]))
    if "namedtuple" in spec:
        module, qualname = spec["namedtuple"].split(":")
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        return types.BaseTuple.from_types([decode(t) for t in spec["items"]], cls)
    if "tuple" in spec:
        return types.BaseTuple.from_types([decode(t) for t in spec["tuple"]])
    raise TypeError(f"kernel argument of type {spec['unsupported']}: not a type fastgauss passes to kernels")


def describe(argtypes):
    return "(" + ", ".join(str(t) for t in argtypes) + ")"


def entries():
    """This process's launches and those merged from workers: JSON-able dicts, one per (kernel,
    signature), sorted."""
    mine = [
        {"module": module, "kernel": name, "args": [encode(t) for t in sig], "signature": describe(sig)}
        for (module, name), sigs in LAUNCHES.items()
        for sig in sigs
    ]
    unique = {(e["module"], e["kernel"], e["signature"]): e for e in mine + MERGED}
    return [unique[key] for key in sorted(unique)]


def merge(worker_entries):
    """Add the ``entries()`` of a pytest-xdist worker to this (controller) process's record."""
    MERGED.extend(worker_entries)


def write(path):
    """Write every recorded launch, plus the list of all kernels, as JSON."""
    with open(path, "w") as f:
        json.dump({"kernels": sorted(f"{m}.{n}" for m, n in kernels()), "launches": entries()}, f, indent=1)


def unlaunched():
    """Kernels of fastgauss.cuda that no launch recorded this session: sorted 'module.name'."""
    launched = {(e["module"], e["kernel"]) for e in entries()}
    return sorted(f"{m}.{n}" for m, n in kernels() if (m, n) not in launched)
