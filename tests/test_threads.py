"""Thread-count determinism and concurrent calls from several Python threads."""

import os
import threading

import numpy as np
import pytest

import fastgauss
from conftest import assert_same_digest_for_thread_counts, run_python

# Digest of q_sample outputs (both dtypes, both t forms) in a fresh process.
DIGEST_SCRIPT = """
import hashlib, numpy as np, numba, fastgauss
schedule = fastgauss.NoiseSchedule.cosine(1000)
rng = np.random.default_rng(7)
digest = hashlib.sha256()
for dtype in (np.float32, np.float64):
    x0 = rng.standard_normal((6, 3, 40, 40)).astype(dtype)
    noise = rng.standard_normal(x0.shape).astype(dtype)
    for t in (rng.integers(0, 1000, size=6), 321):
        digest.update(fastgauss.q_sample(x0, t, schedule, noise, backend="cpu").tobytes())
print(numba.get_num_threads(), digest.hexdigest())
"""


def test_results_are_bitwise_identical_for_any_thread_count():
    assert_same_digest_for_thread_counts(DIGEST_SCRIPT, ("1", "4"))


def concurrent_calls(n_threads=8, calls=5):
    """Each thread checks its own results against the reference; returns the failures."""
    schedule = fastgauss.NoiseSchedule.linear(1000)
    failures, start = [], threading.Barrier(n_threads)

    def worker(seed):
        rng = np.random.default_rng(seed)
        start.wait()
        for _ in range(calls):
            x0 = rng.standard_normal((4, 3, 64, 64)).astype(np.float32)
            noise = rng.standard_normal(x0.shape).astype(np.float32)
            t = rng.integers(0, 1000, size=4)
            got = fastgauss.q_sample(x0, t, schedule, noise, backend="cpu")
            if not np.array_equal(got, fastgauss.reference.q_sample(x0, t, schedule, noise)):
                failures.append(seed)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def test_concurrent_calls_from_8_threads():
    fastgauss.q_sample(np.ones(1), 0, fastgauss.NoiseSchedule.linear(1000), np.ones(1), backend="cpu")  # warm up
    assert concurrent_calls() == []


def test_concurrent_calls_under_the_workqueue_layer_do_not_abort():
    """workqueue is not thread-safe; fastgauss serializes its launches there, so this must finish cleanly."""
    code = (
        "import numba, sys\nsys.path.insert(0, {tests!r})\n"
        "from test_threads import concurrent_calls\n"
        "failures = concurrent_calls()\n"
        "print(numba.threading_layer(), len(failures))\n"
    ).format(tests=os.path.dirname(__file__))
    layer, failures = run_python(code, NUMBA_THREADING_LAYER="workqueue")
    assert (layer, failures) == ("workqueue", "0")


FORK_SCRIPT = """
import os, numpy as np, fastgauss, fastgauss.cpu as cpu
x = np.full(8, 2.0)
fastgauss.normal_kl(x, 0.0, 0.0, 0.0, backend="cpu")  # the parent's pool runs
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        message = "ran:%s" % fastgauss.normal_kl(x, 0.0, 0.0, 0.0, backend="cpu")[0]
    except RuntimeError as error:
        message = str(error)
    os.write(write, message.replace(" ", "_").encode())
    os._exit(0)
os.close(write)
_, status = os.waitpid(pid, 0)
print(cpu.THREADING_LAYER, cpu._gnu_openmp(), status, os.read(read, 4096).decode())
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
@pytest.mark.parametrize("layer", ["omp", "workqueue"])
def test_a_forked_child_runs_or_gets_a_clear_error(layer):
    """Under GNU OpenMP, Numba kills (SIGTERM, status 15) a forked child that enters parallel code
    (a fork-started DataLoader worker): fastgauss raises a RuntimeError that says why and what to
    do instead. Under workqueue, fork-safe, the child computes the op (KL(N(2, 1) || N(0, 1)) = 2)."""
    try:
        name, gnu, status, message = run_python(FORK_SCRIPT, NUMBA_THREADING_LAYER=layer)
    except AssertionError as failure:
        if layer == "omp" and "No threading layer could be loaded" in str(failure):
            pytest.skip("no OpenMP runtime for Numba's omp layer here")
        raise
    assert (name, status) == (layer, "0")
    if gnu == "True":
        assert message.startswith("fastgauss's_cpu_kernels_cannot_run_in_a_process_forked") and "spawn" in message
    else:
        assert message == "ran:2.0"
