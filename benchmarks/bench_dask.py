"""The Dask path against the in-memory call on the same data, and its scaling from 1 to 2 workers.

Data: (4092, 3, 128, 128) float32 (768 MiB), in 12 chunks of 341 samples (64 MiB) along the
batch axis. Groups (each row is the same computation, so the ratios are the Dask path's overhead):

- "dask overhead <op>": the in-memory call on a NumPy array ("in-memory") against the same
  call on a Dask array of that data on the threaded scheduler. The target is within 15% at
  64 MB chunks. Ops: q_sample with in-kernel noise, and normal_kl(reduce="mean") (whole
  samples in each block: one task a block). For q_sample two Dask rows: "dask-threads
  persist" (the blocks computed and kept as the Dask array's chunks: what the adapter
  adds) and "dask-threads compute" (then Dask concatenates the 768 MiB of blocks into one
  NumPy array: a copy as long as the op itself, Dask's cost for any full-size result).
- "dask scaling": the bounded-memory pipeline of examples/dask_bounded_memory.py (lazy data
  from the Generator, q_sample, normal_kl per sample) on dask.distributed LocalClusters of
  1 and 2 worker processes (one thread each; NUMBA_NUM_THREADS=1 in the workers, so a
  worker is a core).

Run: python -m pytest benchmarks/bench_dask.py --benchmark-only (needs fastgauss[dask]).
"""

import os

import numpy as np
import pytest

import fastgauss
from conftest import run

da = pytest.importorskip("dask.array", reason="dask[array] is not installed (pip install fastgauss[dask])")
distributed = pytest.importorskip("distributed", reason="distributed is not installed (pip install fastgauss[dask])")

SHAPE = (4092, 3, 128, 128)
CHUNK_ROWS = 64 * 2**20 // (4 * 3 * 128 * 128)  # 341 float32 samples: 64 MiB
SCHEDULE = fastgauss.NoiseSchedule.linear(1000)


@pytest.fixture(scope="module")
def inputs():
    x0 = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    t = np.random.default_rng(1).integers(0, 1000, size=SHAPE[0])
    return x0, t, da.from_array(x0, chunks=(CHUNK_ROWS,) + SHAPE[1:])


def _q_sample(x, t):
    return fastgauss.q_sample(x, t, SCHEDULE, rng=fastgauss.default_rng(2))


def _kl(x, t):
    return fastgauss.normal_kl(x, 0.0, 0.5, 0.0, reduce="mean")


@pytest.mark.parametrize(
    "op, path",
    [(_q_sample, "in-memory"), (_q_sample, "dask-threads persist"), (_q_sample, "dask-threads compute"),
     (_kl, "in-memory"), (_kl, "dask-threads compute")],
    ids=lambda v: v if isinstance(v, str) else {_q_sample: "q_sample", _kl: "normal_kl mean"}[v],
)
def test_dask_overhead(benchmark, inputs, op, path):
    x0, t, x0_dask = inputs
    benchmark.group = f"dask overhead {op.__name__.strip('_')}"
    benchmark.extra_info.update(path=path, chunk_mb=64)
    nbytes = 2 * x0.nbytes if op is _q_sample else x0.nbytes
    if path == "in-memory":
        run(benchmark, "cpu", lambda: op(x0, t), nbytes)
        return
    lazy = op(x0_dask, t)  # the graph is built once; computing it is what is timed
    if path.endswith("persist"):
        run(benchmark, "cpu", lambda: lazy.persist(scheduler="threads"), nbytes)
    else:
        run(benchmark, "cpu", lambda: lazy.compute(scheduler="threads"), nbytes)


def _pipeline(n, rows):
    rng = fastgauss.default_rng(0)
    x0 = rng.standard_normal((n,) + SHAPE[1:], dtype=np.float32, chunks=(rows,) + SHAPE[1:])
    t = np.random.default_rng(1).integers(0, 1000, size=n)
    return fastgauss.normal_kl(fastgauss.q_sample(x0, t, SCHEDULE, rng=rng), 0.0, x0, 0.0, reduce="mean")


@pytest.mark.parametrize("workers", [1, 2])
def test_dask_scaling(benchmark, workers):
    benchmark.group = "dask scaling"
    benchmark.extra_info.update(workers=workers, chunk_mb=64)
    n = 4 * SHAPE[0]  # 768 MiB of lazily generated data
    lazy = _pipeline(n, CHUNK_ROWS)
    env = {"NUMBA_NUM_THREADS": "1", "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", "")}
    with distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
        env={k: v for k, v in env.items() if v},
    ) as cluster, distributed.Client(cluster) as client:
        client.compute(_pipeline(4, 2), sync=True)  # load the kernels in every worker first
        client.run(lambda: None)
        run(benchmark, "cpu", lambda: client.compute(lazy, sync=True), n * 4 * int(np.prod(SHAPE[1:])))
