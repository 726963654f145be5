"""Forward-noise a dataset larger than memory and evaluate normal_kl per sample, with Dask.

The data x0 (N, 3, 64, 64) float32 is generated lazily from a fastgauss Generator in chunks
of about --chunk-mb MB along the batch axis; q_sample draws its noise inside the kernel of
each chunk, and normal_kl(x_t, 0, x0, 0, reduce="mean") reduces each chunk in the same
kind of fused pass. Only per-sample means (N float32) are kept, so the peak memory is a few
chunks per worker thread, whatever the total size: 40 GB in 128 MB chunks runs on a
2-core, 24 GB machine. The values do not depend on the chunk size or the scheduler.

    python examples/dask_bounded_memory.py --gb 40 --chunk-mb 128             # threads
    python examples/dask_bounded_memory.py --gb 40 --chunk-mb 128 --workers 2 # distributed

It prints a progress bar (dask.diagnostics.ProgressBar; the distributed dashboard's address
with --workers) and, at the end, the peak resident memory of the process (and workers).
"""

import argparse
import resource
import time

import numpy as np

import fastgauss

SAMPLE = (3, 64, 64)  # one sample: 48 KiB in float32


def build(gb, chunk_mb, seed=0):
    """The lazy pipeline: (per-sample KL means, samples, bytes of x0)."""
    import dask.array as da  # noqa: F401  (fastgauss's dask adapter needs it; importing fastgauss does not)

    per_sample = 4 * int(np.prod(SAMPLE))
    n = max(1, int(gb * 2**30) // per_sample)
    rows = max(1, int(chunk_mb * 2**20) // per_sample)
    rng = fastgauss.default_rng(seed)
    schedule = fastgauss.NoiseSchedule.cosine(1000)
    x0 = rng.standard_normal((n,) + SAMPLE, dtype=np.float32, chunks=(rows,) + SAMPLE)  # lazy data
    t = np.random.default_rng(seed).integers(0, 1000, n)  # one timestep per sample (n int64: small)
    xt = fastgauss.q_sample(x0, t, schedule, rng=rng)  # noise drawn in the kernel, per chunk
    kl = fastgauss.normal_kl(xt, 0.0, x0, 0.0, reduce="mean")  # (n,) per-sample means, tree-reduced
    return kl, n, n * per_sample


def peak_rss_mb():
    """Peak resident memory of this process, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=40.0, help="size of x0 in GB (default 40)")
    parser.add_argument("--chunk-mb", type=float, default=128.0, help="chunk size in MB (default 128)")
    parser.add_argument("--workers", type=int, default=0, help="dask.distributed worker processes (default: threaded scheduler)")
    args = parser.parse_args()

    kl, n, nbytes = build(args.gb, args.chunk_mb)
    print(f"x0: {n} samples of {SAMPLE} float32 = {nbytes / 1e9:.1f} GB in {kl.numblocks[0]} chunks of ~{args.chunk_mb:g} MB")
    start = time.perf_counter()
    if args.workers:
        from distributed import Client, LocalCluster, progress

        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True) as cluster, Client(cluster) as client:
            print(f"dashboard: {client.dashboard_link}")
            future = client.compute(kl)
            progress(future)
            result = future.result()
            worker_peaks = client.run(peak_rss_mb)
        print(f"\npeak memory: client {peak_rss_mb():.0f} MB, workers " + ", ".join(f"{v:.0f} MB" for v in worker_peaks.values()))
    else:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            result = kl.compute(scheduler="threads")
        print(f"peak memory: {peak_rss_mb():.0f} MB")
    elapsed = time.perf_counter() - start
    print(f"{nbytes / 1e9:.2f} GB in {elapsed:.1f} s ({nbytes / 1e9 / elapsed:.2f} GB/s); KL per sample: mean {result.mean():.6f}, "
          f"min {result.min():.6f}, max {result.max():.6f}")


if __name__ == "__main__":
    main()
