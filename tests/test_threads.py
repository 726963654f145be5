"""Thread-count determinism and concurrent calls from several Python threads."""

import os
import threading

import numpy as np

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
