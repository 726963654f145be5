"""Scalar math that both targets compile from the same source.

These are plain Python functions. ``fastgauss.cpu`` wraps them with ``numba.njit``
and ``fastgauss.cuda`` with ``numba.cuda.jit(device=True)``, so the CPU and the GPU
evaluate the same expression in the same order.
"""

import types


def compile_for(jit, module):
    """Compile every function defined in ``module`` with ``jit``, for one target.

    The compiled functions see each other (not the plain Python originals) when
    they call one another, so a module of plain functions becomes a set of device
    functions (``cuda.jit(device=True)``) or CPU functions (``numba.njit``).
    Returns a namespace with the module's constants and the compiled functions.
    """
    namespace = dict(vars(module))
    for name, value in vars(module).items():
        if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
            clone = types.FunctionType(value.__code__, namespace, name, value.__defaults__, value.__closure__)
            namespace[name] = jit(clone)
    return types.SimpleNamespace(**namespace)
