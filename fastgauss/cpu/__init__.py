"""Numba CPU backend: @njit(parallel=True, cache=True) kernels, one module per family.

Threading layer. fastgauss uses the layer Numba selects (NUMBA_THREADING_LAYER, else
tbb, then omp, then workqueue). tbb and omp are thread-safe, so calls from several
Python threads run concurrently. The workqueue layer aborts the process when two
threads enter parallel code at once, so under it fastgauss serializes its own kernel
launches with a lock: concurrent calls stay correct, and each call still uses every
core. GNU OpenMP (the omp layer on Linux) is not fork-safe: Numba kills (SIGTERM) a
child forked after the thread pool started when it enters parallel code, e.g. a
PyTorch DataLoader worker (fork is the default start method on Linux) whose dataset
calls fastgauss once the parent has. There a cpu call raises a RuntimeError that says
so instead; use the "spawn" or "forkserver" start method
(``DataLoader(multiprocessing_context="spawn")``), or NUMBA_THREADING_LAYER=workqueue
or tbb, both fork-safe.

Code generation. Kernels compile the shared scalar math with forceinline=True (LLVM's
alwaysinline: inlined where it is called, typed once per signature; see
fastgauss.cpu.random), and every parallel loop whose body vectorizes starts with
``prefer_wide_vectors()`` (the target's full vector width; see its docstring).

Importing this module (on the first cpu call, not on ``import fastgauss``) starts
the thread pool, so the layer is known before any concurrent call can race.
"""

import contextlib
import os
import threading

import numba
import numpy as np
from numba import types
from numba.core.caching import CacheImpl
from numba.extending import intrinsic

from fastgauss import _cache

_cache.install(CacheImpl)  # before any kernel is defined: cached kernels follow _device/ edits

CHUNK = 1 << 14  # elements per parallel work item: large enough to amortize scheduling

# Options of the scalar functions compiled from fastgauss._device (compile_for): only kernels
# call them, so they get no Python or C entry point, whose wrapper code Numba would otherwise
# generate, optimize and compile to machine code for each of them and each signature. A cold
# `python -m fastgauss --quick --jobs 1` (2-core Xeon): 124.5 -> 111.8 s.
DEVICE = dict(error_model="numpy", no_cpython_wrapper=True, no_cfunc_wrapper=True)


# get_num_threads starts Numba's thread pool (and so fixes the layer) without a kernel: a
# parallel kernel run for the purpose cost 1.2 s of compiling in each cold process.
numba.get_num_threads()
THREADING_LAYER = numba.threading_layer()
_launch_guard = threading.Lock() if THREADING_LAYER == "workqueue" else contextlib.nullcontext()


def _gnu_openmp():
    if THREADING_LAYER != "omp":
        return False
    from numba.np.ufunc import omppool

    return getattr(omppool, "openmp_vendor", "GNU") == "GNU"


_in_forked_child = False  # set in a child forked after the pool started, where GNU OpenMP is unusable
if _gnu_openmp() and hasattr(os, "register_at_fork"):

    def _forked():
        global _in_forked_child
        _in_forked_child = True

    os.register_at_fork(after_in_child=_forked)


@intrinsic
def prefer_wide_vectors(typingctx):
    """Let LLVM vectorize the function that calls this at the target's full vector width.

    LLVM's tuning for Intel cores with AVX-512 (skylake-avx512 to sapphirerapids, and the
    rocketlake that these Xeon VMs report) prefers 256-bit vectors; AMD's znver4/5 tuning
    uses 512. Measured on a 2-core Xeon, one thread: float32 normals 2.07 -> 1.26 ns a value,
    float64 8.6 -> 6.2 ns (benchmarks/README.md has the tables). This sets the function
    attribute "prefer-vector-width"="512" that clang's -mprefer-vector-width=512 sets; on an
    AVX2-only target the widest vector is 256 bits, so it changes nothing there. The results
    keep their bits: the kernels do not reassociate, so the vector width cannot change a value.
    llvmlite lists only LLVM's keyword attributes, so the string attribute is added past that list
    (it prints attributes verbatim)."""

    def codegen(context, builder, signature, args):
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


def launch(kernel, *args):
    """Run a parallel kernel, serialized only where the threading layer requires it."""
    if _in_forked_child:
        raise RuntimeError(
            "fastgauss's cpu kernels cannot run in a process forked after they started in its parent: "
            "Numba's GNU OpenMP threading layer is not fork-safe (Numba would kill this process). Start "
            "workers with the 'spawn' or 'forkserver' method (e.g. DataLoader(multiprocessing_context="
            "'spawn')), or set NUMBA_THREADING_LAYER=workqueue (or tbb) before the first fastgauss call"
        )
    with _launch_guard:
        kernel(*args)


@numba.njit(parallel=True, cache=True)
def parallel_copy(src, dst):
    """dst[i] = src[i] over flat arrays: the copy-bandwidth yardstick (fastgauss._bench)."""
    for i in numba.prange(src.size):
        dst[i] = src[i]


def static(flag):
    """A bool as a type, for a kernel argument whose value should be known at compile time:
    () for False, (True,) for True. Numba compiles one specialization per value, and a branch
    on ``len(flag)`` in it is a constant that LLVM removes (a runtime bool in a loop keeps a
    branch that can stop the loop from vectorizing)."""
    return (True,) if flag else ()


def unbroadcast(a):
    """``a`` with every axis of stride 0 (the same values at each index: a broadcast, e.g. the
    cotangent torch passes for ``.sum()``) cut to length 1: a view that broadcasts back to
    ``a``'s shape, so a kernel reads the values once instead of a materialized copy."""
    if not isinstance(a, np.ndarray) or all(a.strides):
        return a
    return a[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in a.strides)]


def as_rows(a, rows):
    """A (rows, width) view of ``a`` (a copy only if its axes cannot be merged)."""
    return a.reshape(rows, -1)


@contextlib.contextmanager
def rows_to_write(out, rows):
    """A (rows, width) array to write; copied back into ``out`` if it could not be a view."""
    view = out.reshape(rows, -1)
    yield view
    if out.size and not np.may_share_memory(view, out):
        out[...] = view.reshape(out.shape)
