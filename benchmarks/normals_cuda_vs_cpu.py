"""How far the GPU's numbers are from the CPU's and from the NumPy reference, for one seed.

The raw Philox words are bitwise identical everywhere (tested). The normals go through log,
sqrt and sincos, which the CUDA compiler may contract into fused multiply-adds differently from
LLVM on the CPU; this measures the difference instead of assuming it: the share of values that
are bitwise equal, the largest difference in units in the last place, and the largest absolute
and relative difference.

    python benchmarks/normals_cuda_vs_cpu.py [output folder] [--small]
"""

import sys

import numpy as np
from numba import cuda

import fastgauss


def ulps(a, b):
    """|a - b| in units in the last place of the dtype (both finite, same sign region)."""
    kind = {4: np.int32, 8: np.int64}[a.dtype.itemsize]
    ia, ib = a.view(kind).astype(np.int64), b.view(kind).astype(np.int64)
    flip = np.int64(np.iinfo(kind).min)
    ia = np.where(ia < 0, flip - ia, ia)  # ordered integers: adjacent floats differ by 1
    ib = np.where(ib < 0, flip - ib, ib)
    return np.abs(ia - ib)


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def compare(label, a, b):
    a, b = np.asarray(a), np.asarray(b)
    u = ulps(a.ravel(), b.ravel())
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    rel = diff / np.maximum(np.abs(b.astype(np.float64)), np.finfo(b.dtype).tiny)
    return (
        f"| {label} | {a.dtype.name} | {a.size:,} | {np.mean(u == 0):.6%} | {u.max()} | "
        f"{np.percentile(u, 99.99):.0f} | {diff.max():.3g} | {rel.max():.3g} |"
    )


def main(folder=None, small=False):
    n = 2**14 if small else 2**26
    n_reference = 2**12 if small else 2**22
    lines = ["| values | dtype | count | bitwise equal | max ulp | 99.99% ulp | max abs | max rel |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    schedule = fastgauss.NoiseSchedule.linear(1000)
    for dtype in (np.float32, np.float64):
        draw = {b: fastgauss.default_rng(20261126).standard_normal(n, dtype, backend=b) for b in ("cuda", "cpu")}
        gpu = host(draw["cuda"])
        lines.append(compare("standard_normal, cuda vs cpu", gpu, draw["cpu"]))
        reference = fastgauss.default_rng(20261126).standard_normal(n_reference, dtype, backend="numpy")
        lines.append(compare("standard_normal, cuda vs numpy reference", gpu[:n_reference], reference))
        lines.append(compare("standard_normal, cpu vs numpy reference", draw["cpu"][:n_reference], reference))
        x0 = np.random.default_rng(0).standard_normal((n // 4096, 4096)).astype(dtype)
        t = np.random.default_rng(1).integers(0, 1000, n // 4096)
        qs = {
            "cuda": fastgauss.q_sample(cuda.to_device(x0), cuda.to_device(t), schedule, rng=7, backend="cuda"),
            "cpu": fastgauss.q_sample(x0, t, schedule, rng=7, backend="cpu"),
        }
        qs_gpu = host(qs["cuda"])
        lines.append(compare("q_sample drawn noise, cuda vs cpu", qs_gpu, qs["cpu"]))
        print("\n".join(lines[-4:]), flush=True)
    report = "\n".join(lines)
    print(report)
    if folder:
        with open(f"{folder}/normals.md", "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(arguments[0] if arguments else None, small="--small" in sys.argv)
