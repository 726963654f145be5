"""How the kernels see data: as rows that share their per-sample coefficients.

A per-sample op on data of shape (B, ...) is run on a (rows, width) view: rows = B
when t is an array of shape (B,), rows = 1 when t is a scalar. Coefficients are
gathered from the schedule once per row (B values, negligible next to the data).
"""

import numpy as np


def row_count(t):
    return 1 if np.ndim(t) == 0 else len(t)


def per_row(table, t, dtype):
    """table[t] as a contiguous (rows,) host array of ``dtype``."""
    return np.ascontiguousarray(np.reshape(table[t], -1), dtype=dtype)
