"""The NumPy reference backend, as public functions.

``fastgauss.reference.<op>`` is ``fastgauss.<op>`` pinned to ``backend="numpy"``: the
same name and signature (without ``backend``) and the same validation. The plain
NumPy implementations that the compiled kernels are tested against live in this
package's family modules (``fastgauss.reference.diffusion`` ...).
"""

import functools
import inspect

from fastgauss._dispatch import OPS as _OPS
from fastgauss._dispatch import public_function as _public_function


def _pinned(op):
    public = _public_function(op)
    signature = inspect.signature(public)

    @functools.wraps(public)
    def call(*args, **kwargs):
        return public(*args, **kwargs, backend="numpy")

    call.__signature__ = signature.replace(parameters=[p for p in signature.parameters.values() if p.name != "backend"])
    call.__doc__ = f"The NumPy reference of fastgauss.{op} (backend='numpy').\n\n" + (public.__doc__ or "")
    return call


# Ops whose public face is a module function; the Generator methods take backend="numpy".
# Gradients ("<op>_vjp") are reached through the ops' own VJP functions, not pinned here.
__all__ = [op for op in _OPS if _public_function(op) is not None and not op.endswith("_vjp")]
for _op in __all__:
    globals()[_op] = _pinned(_op)
