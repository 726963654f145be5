"""Reductions give the same bits on every x86-64 ISA level and thread count (fixed summation order).

Each case runs in a fresh process built for the host's ISA (AVX-512 here), for
NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=+fma (AVX2 and FMA: NUMBA_CPU_NAME alone keeps
the host's features, AVX-512 here) and for NUMBA_CPU_NAME=generic (SSE2), with 1 and 2
threads. A reassociated sum would change with the vector width (it did, before
cpu/kl.py's _chunk_sum was written as a fixed tree).
"""

from conftest import run_python

# Prints "<isa> <threads> <digest>" of every reduce="sum"/"mean" result, float32 and
# float64, of every KL-family op, over rows that span several chunks, with mixed
# magnitudes and an odd width.
REDUCTIONS_SCRIPT = """
import hashlib, numba, numpy as np, fastgauss
rng = np.random.default_rng(11)
digest = hashlib.sha256()
shape = (3, 50001)
for dtype in (np.float32, np.float64):
    a = (rng.standard_normal(shape) * np.exp(4 * rng.standard_normal(shape))).astype(dtype)
    b = rng.standard_normal(shape).astype(dtype)
    lv = rng.standard_normal(shape).astype(dtype)
    x = np.clip(rng.standard_normal(shape) / 2, -1, 1).astype(dtype)
    for reduce in ("sum", "mean"):
        for result in (
            fastgauss.normal_kl(a, lv, b, 0.5 * lv, reduce=reduce, backend="cpu"),
            fastgauss.normal_logpdf(a, b, lv, reduce=reduce, backend="cpu"),
            fastgauss.discretized_gaussian_log_likelihood(x, b, lv, reduce=reduce, backend="cpu"),
        ):
            assert result.dtype == dtype and np.isfinite(result).all()
            digest.update(result.tobytes())
print(numba.config.CPU_NAME or "host", numba.get_num_threads(), digest.hexdigest())
"""


def test_reductions_are_bitwise_identical_across_isa_levels_and_thread_counts():
    runs = [
        run_python(REDUCTIONS_SCRIPT, NUMBA_NUM_THREADS="1"),
        run_python(REDUCTIONS_SCRIPT, NUMBA_NUM_THREADS="2"),
        run_python(REDUCTIONS_SCRIPT, NUMBA_NUM_THREADS="1", NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="+fma"),
        run_python(REDUCTIONS_SCRIPT, NUMBA_NUM_THREADS="2", NUMBA_CPU_NAME="generic"),
    ]
    assert [(isa, threads) for isa, threads, _ in runs] == [("host", "1"), ("host", "2"), ("haswell", "1"), ("generic", "2")]
    assert len({digest for _, _, digest in runs}) == 1, runs
