"""The NumPy reference backend, as public functions.

``fastgauss.reference.<op>`` is ``fastgauss.<op>`` pinned to ``backend="numpy"``: the
same name and signature (without ``backend``) and the same validation. The plain
NumPy implementations that the compiled kernels are tested against live in this
package's family modules (``fastgauss.reference.diffusion`` ...).
"""

import functools
import importlib
import inspect

from fastgauss._dispatch import OPS as _OPS


def _pinned(op):
    public = getattr(importlib.import_module(f"fastgauss.{_OPS[op]}"), op)
    signature = inspect.signature(public)

    @functools.wraps(public)
    def call(*args, **kwargs):
        return public(*args, **kwargs, backend="numpy")

    call.__signature__ = signature.replace(parameters=[p for p in signature.parameters.values() if p.name != "backend"])
    call.__doc__ = f"The NumPy reference of fastgauss.{op} (backend='numpy').\n\n" + (public.__doc__ or "")
    return call


for _op in _OPS:
    globals()[_op] = _pinned(_op)

__all__ = list(_OPS)
