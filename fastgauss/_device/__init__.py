"""Scalar math that both targets compile from the same source.

These are plain Python functions. ``fastgauss.cpu`` wraps them with ``numba.njit``
and ``fastgauss.cuda`` with ``numba.cuda.jit(device=True)``, so the CPU and the GPU
evaluate the same expression in the same order.
"""
