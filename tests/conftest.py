"""Test setup: CUDA tests run on the GPU when there is one, else under Numba's simulator.

This must run before numba is imported anywhere, hence at conftest import.
"""

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest


def _gpu_present():
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            driver = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        return driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    return False


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the cores: OpenMP threads (Numba's omp layer, torch) that spin while
    # they wait for work would take a core from the other worker's compilation.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not _gpu_present():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

import fastgauss  # noqa: E402  (after the simulator switch)

CUDA_USABLE = "cuda" in fastgauss.backends()
BACKENDS = ["numpy", "cpu", "cuda"]


def pytest_report_header(config):
    mode = "CUDA simulator" if SIMULATOR else "real GPU"
    return f"fastgauss backends: {fastgauss.backends()}; cuda tests run on the {mode}"


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "cuda" and not CUDA_USABLE:
        pytest.skip("cuda backend not usable: " + str(fastgauss._dispatch.cuda_unavailable_reason()))
    return request.param


def to_backend(a, backend):
    """Put a NumPy array where ``backend`` computes (device for cuda)."""
    if backend == "cuda" and isinstance(a, np.ndarray):
        from numba import cuda

        return cuda.to_device(a)
    return a


def to_numpy(a):
    return a if isinstance(a, np.ndarray) else a.copy_to_host()


def run_python(code, timeout=600, cwd=None, **env):
    """Run ``code`` in a fresh interpreter (in ``cwd``) with extra environment variables; its stdout, split."""
    result = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def assert_same_digest_for_thread_counts(script, thread_counts=("1", "3")):
    """``script`` prints "<numba threads> <digest>"; run under each NUMBA_NUM_THREADS, the digests must agree."""
    outputs = [run_python(script, NUMBA_NUM_THREADS=n) for n in thread_counts]
    assert [threads for threads, _ in outputs] == list(thread_counts)
    assert len({digest for _, digest in outputs}) == 1, outputs


# --- kernel launches: every @cuda.jit kernel must be launched by the suite (see _cuda_launches) ---

import _cuda_launches  # noqa: E402

_deselected = [0]  # how many tests were deselected (here, or in pytest-xdist workers)


def pytest_configure(config):
    if CUDA_USABLE:
        _cuda_launches.record()


def pytest_deselected(items):
    _deselected[0] += len(items)


def _full_run(session):
    """True when the whole suite ran: tests/ (or no arguments), no -k/-m/--lf selection, nothing deselected."""
    config = session.config
    here = os.path.dirname(os.path.abspath(__file__))
    return (
        [os.path.abspath(a) for a in config.args] == [here]
        and not config.option.keyword
        and not config.option.markexpr
        and not getattr(config.option, "lf", False)
        and not config.option.collectonly
        and not _deselected[0]
    )


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist controller: take in what a worker recorded (see pytest_sessionfinish)."""
    output = getattr(node, "workeroutput", {})
    _cuda_launches.merge(output.get("cuda_launches", []))
    _deselected[0] += output.get("deselected", 0)


def pytest_sessionfinish(session, exitstatus):
    if not CUDA_USABLE:
        return
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: the controller checks and writes
        workeroutput["cuda_launches"] = _cuda_launches.entries()
        workeroutput["deselected"] = _deselected[0]
        return
    path = os.environ.get("FASTGAUSS_KERNEL_LAUNCHES")
    if path:
        _cuda_launches.write(path)
    if exitstatus == 0 and (_full_run(session) or os.environ.get("FASTGAUSS_REQUIRE_ALL_KERNELS") == "1"):
        missing = _cuda_launches.unlaunched()
        if missing:
            session.config._unlaunched_kernels = missing
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    missing = getattr(config, "_unlaunched_kernels", None)
    if missing:
        terminalreporter.write_sep("=", "CUDA kernels no test launched", red=True)
        for name in missing:
            terminalreporter.write_line(f"FAILED: {name} exists in fastgauss.cuda but no test launched it")
