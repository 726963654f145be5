"""Scalar math that both targets compile from the same source.

These are plain Python functions. ``fastgauss.cpu`` wraps them with ``numba.njit``
and ``fastgauss.cuda`` with ``numba.cuda.jit(device=True)``, so the CPU and the GPU
evaluate the same expression in the same order. Where the bits must match (random,
diffusion), a product that feeds a sum is written ``product(a, b)``: NVVM would fuse a
plain a * b + c into one FMA, and the CUDA target's ``product`` is never fused.
"""

import types


def compile_for(jit, module, overrides=None, linked=()):
    """Compile every function defined in ``module`` with ``jit``, for one target.

    The compiled functions see each other (not the plain Python originals) when
    they call one another, so a module of plain functions becomes a set of device
    functions (``cuda.jit(device=True)``) or CPU functions (``numba.njit``).
    ``overrides`` maps names of ``module``'s functions to a target's own version of
    them (the same values, computed another way, e.g. fastgauss.cpu.kl's bit casts),
    used as given: every compiled function that calls the name calls the override.
    ``linked``: namespaces returned by earlier ``compile_for`` calls of the same target for the
    ``_device`` modules that ``module`` imports functions from; each imported function is
    replaced by that target's compiled version of it (overrides included), so a module
    builds on another's math without compiling it twice.
    Returns a namespace with the module's constants and the compiled functions.
    """
    overrides = dict(overrides or {})
    unknown = sorted(name for name in overrides if not isinstance(vars(module).get(name), types.FunctionType))
    if unknown:
        raise ValueError(f"overrides name no function of {module.__name__}: {unknown}")
    namespace = dict(vars(module), **overrides)
    for compiled in linked:
        for name, value in vars(module).items():
            if isinstance(value, types.FunctionType) and value.__module__ != module.__name__ and hasattr(compiled, name):
                namespace[name] = getattr(compiled, name)
    for name, value in vars(module).items():
        if name in overrides:
            continue
        if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
            clone = types.FunctionType(value.__code__, namespace, name, value.__defaults__, value.__closure__)
            namespace[name] = jit(clone)
    return types.SimpleNamespace(**namespace)
