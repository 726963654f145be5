"""The main job's self-check: every op on every compiled backend against the NumPy reference.

A module of its own (not ``__main__``) so that worker processes can import ``check_op``.
"""

import numpy as np

from fastgauss._dispatch import OPS
from fastgauss._examples import EXAMPLES

DTYPES = (np.float32, np.float64)
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}  # rtol = atol, against the reference
CHECK_SHAPE = (4, 3, 16, 16)


def to_device(value):
    from numba import cuda

    return cuda.to_device(value) if isinstance(value, np.ndarray) else value


def to_host(value):
    if isinstance(value, tuple):
        return tuple(to_host(v) for v in value)
    return value if isinstance(value, np.ndarray) else value.copy_to_host()


def on_device(call):
    """(args, kwargs) of ``call`` with every NumPy array, positional or keyword, copied to the device."""
    return tuple(to_device(a) for a in call.args), {k: to_device(v) for k, v in call.kwargs.items()}


def run(call, backend, **extra):
    args, kwargs = on_device(call) if backend == "cuda" else (call.args, call.kwargs)
    return call.function(*args, **kwargs, **extra, backend=backend)


def matches(got, expected, dtype):
    pairs = zip(to_host(got), expected) if isinstance(expected, tuple) else [(to_host(got), expected)]
    tol = TOLERANCE[dtype]
    return all(
        g.shape == e.shape
        and g.dtype == e.dtype
        and (np.array_equal(g, e) if e.dtype.kind in "iu" else np.allclose(g, e, rtol=tol, atol=tol, equal_nan=True))
        for g, e in pairs
    )


def calls(op, dtype, rng, quick=False):
    """The example calls of ``op`` the self-check runs: all of them, or with ``quick`` only those
    the benchmark table times (the first call where none is timed), so that a quick run compiles
    the kernels its table uses and no other argument-kind specializations."""
    examples = EXAMPLES[op](CHECK_SHAPE, dtype, rng)
    if not quick:
        return examples
    return [c for c in examples if c.benchmark] or examples[:1]


def check_op(op, backends, quick=False):
    """One op on every compiled backend against the NumPy reference: a result dict per backend
    (``quick``: the benchmarked calls only, see ``calls``)."""
    rng = np.random.default_rng([20261124, list(OPS).index(op)])  # inputs per op, whatever runs first
    results = []
    for backend in backends:
        failed = [] if op in EXAMPLES else ["no example in fastgauss/_examples.py"]
        for dtype in DTYPES if op in EXAMPLES else ():
            for call in calls(op, dtype, rng, quick):
                problem = ""
                try:
                    if not matches(run(call, backend), run(call, "numpy"), dtype):
                        problem = "differs from the reference"
                except Exception as exc:  # a crash is a FAIL, reported, not a traceback
                    problem = f"{type(exc).__name__}: {exc}"
                if problem:
                    failed.append(f"{np.dtype(dtype).name} {call.label}: {problem}")
        results.append({"op": op, "backend": backend, "status": "FAIL" if failed else "PASS", "failed": failed})
    return results


def check_ops(ops, backends, quick=False):
    """check_op of each op in ``ops``, in one process (a worker of the main job's pool: ops that
    share kernels compile them once)."""
    return [check_op(op, backends, quick) for op in ops]
