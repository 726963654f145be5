"""The cuda rows against the device's copy bandwidth, PyTorch CUDA eager and CuPy, in one run.

Two times per row, both the best of a few repeats after a warm-up call:

- "wall ms": one call, then a device synchronize (what a caller that waits on each call sees:
  host time + GPU time);
- "GPU ms": the GPU time of one call, with the host out of the way. A spin kernel holds the
  stream while the host queues ``CALLS`` calls between two events, so the events time the
  kernels back to back. A call that waits on the device cannot be queued ahead: fastgauss
  reads device timesteps back to validate them, so its "t per sample" row shows host time in
  its GPU time too; the "scalar t" rows (a Python int) queue freely.

"GB/s" counts the bytes each call must move (every array read once, every output written once)
over its GPU time; "of copy" divides that by the fastest device-to-device copy of the same
bytes (numba's, CuPy's, torch's), timed the same way. Shapes: (64, 3, 256, 256) and a large one,
(512, 3, 512, 512) (1.6 GB a float32 array), where the host's per-call time no longer hides
the kernels.

    python benchmarks/bandwidth_cuda.py [output folder] [--small]
"""

import sys
import time

import numpy as np
from numba import cuda

import fastgauss

SCHEDULE = fastgauss.NoiseSchedule.linear(1000)
CALLS = 8
REPEATS = 3
SIMULATED = not hasattr(cuda, "nanosleep")  # the simulator has no nanosleep: it runs calls in order anyway

try:
    import torch

    torch = torch if torch.cuda.is_available() else None
except ImportError:
    torch = None
try:
    import cupy
except ImportError:
    cupy = None


@cuda.jit
def _spin(microseconds):
    for _ in range(microseconds):
        cuda.nanosleep(1000)


def gpu_time(function, hold_us):
    """Best per-call GPU time of CALLS calls queued behind a spin kernel (see the docstring)."""
    best = float("inf")
    for _ in range(REPEATS):
        cuda.synchronize()
        start, stop = cuda.event(), cuda.event()
        if not SIMULATED:
            _spin[1, 1](hold_us)
        start.record()
        for _ in range(CALLS):
            function()
        stop.record()
        stop.synchronize()
        best = min(best, start.elapsed_time(stop) / 1e3 / CALLS)
    return best


def wall_time(function):
    best = float("inf")
    for _ in range(REPEATS * 2):
        began = time.perf_counter()
        function()
        cuda.synchronize()
        best = min(best, time.perf_counter() - began)
    return best


def rows(shape, dtype):
    """(op, implementation, bytes moved, function) for every row at this shape and dtype."""
    rng = np.random.default_rng(0)
    n = int(np.prod(shape))
    size = n * np.dtype(dtype).itemsize
    dev = {  # drawn on the device: the large shape would take a minute on the host
        name: fastgauss.default_rng(seed).standard_normal(shape, dtype, backend="cuda")
        for seed, name in enumerate(("x0", "noise", "xt", "eps"))
    }
    t_host = rng.integers(1, 1000, shape[0])
    out = cuda.device_array(shape, dtype)
    g = fastgauss.default_rng(0)
    alpha = np.sqrt(SCHEDULE.alphas_cumprod).astype(dtype)
    sigma = np.sqrt(1.0 - SCHEDULE.alphas_cumprod).astype(dtype)
    ax = (slice(None),) + (None,) * (len(shape) - 1)

    def copy():
        out.copy_to_device(dev["x0"])

    yield "copy", "numba", 2 * size, copy
    if cupy is not None:
        cx, cn, co = (cupy.asarray(dev[k]) for k in ("x0", "noise", "xt"))
        ca, cs, ct = cupy.asarray(alpha), cupy.asarray(sigma), cupy.asarray(t_host)
        yield "copy", "cupy", 2 * size, lambda: cupy.copyto(co, cx)
    if torch is not None:
        tx, tn, to_ = (torch.as_tensor(dev[k], device="cuda") for k in ("x0", "noise", "xt"))
        ta, ts, tt = (torch.as_tensor(a, device="cuda") for a in (alpha, sigma, t_host))
        yield "copy", "torch", 2 * size, lambda: to_.copy_(tx)

    t_dev = cuda.to_device(t_host)
    yield "q_sample given noise, t per sample", "fastgauss", 3 * size, lambda: fastgauss.q_sample(
        dev["x0"], t_dev, SCHEDULE, dev["noise"], out=out
    )
    yield "q_sample given noise, scalar t", "fastgauss", 3 * size, lambda: fastgauss.q_sample(
        dev["x0"], 500, SCHEDULE, dev["noise"], out=out
    )
    if cupy is not None:
        yield "q_sample given noise, t per sample", "cupy", 3 * size, lambda: ca[ct][ax] * cx + cs[ct][ax] * cn
    if torch is not None:
        yield "q_sample given noise, t per sample", "torch", 3 * size, lambda: ta[tt][ax] * tx + ts[tt][ax] * tn
    yield "predict_x0, scalar t", "fastgauss", 3 * size, lambda: fastgauss.predict_x0(
        dev["xt"], 500, dev["eps"], SCHEDULE, out=out
    )
    yield "ddpm_step given noise, scalar t", "fastgauss", 4 * size, lambda: fastgauss.ddpm_step(
        dev["eps"], dev["xt"], 500, SCHEDULE, noise=dev["noise"], out=out
    )
    yield "ddim_step eta=0, scalar t", "fastgauss", 3 * size, lambda: fastgauss.ddim_step(
        dev["eps"], dev["xt"], 500, 499, SCHEDULE, out=out
    )
    yield "standard_normal", "fastgauss", size, lambda: g.standard_normal(shape, dtype, out=out, backend="cuda")
    if cupy is not None:
        cg = cupy.random.default_rng(0)
        yield "standard_normal", "cupy", size, lambda: cg.standard_normal(shape, dtype=dtype)
    if torch is not None:
        yield "standard_normal", "torch", size, lambda: torch.randn(shape, dtype=tx.dtype, device="cuda", out=to_)
    yield "q_sample drawn noise, scalar t", "fastgauss", 2 * size, lambda: fastgauss.q_sample(
        dev["x0"], 500, SCHEDULE, rng=g, out=out
    )
    if torch is not None:
        yield "q_sample drawn noise, scalar t", "torch", 2 * size, lambda: ta[500] * tx + ts[500] * torch.randn_like(tx)
    yield "normal_kl mean", "fastgauss", 4 * size, lambda: fastgauss.normal_kl(
        dev["x0"], dev["noise"], dev["xt"], dev["eps"], reduce="mean"
    )
    if torch is not None:
        tl = torch.as_tensor(dev["eps"], device="cuda")

        def torch_kl():
            kl = 0.5 * (-1.0 + tl - tn + torch.exp(tn - tl) + (tx - to_) ** 2 * torch.exp(-tl))
            return kl.reshape(kl.shape[0], -1).mean(1)

        yield "normal_kl mean", "torch", 4 * size, torch_kl


def mvn_rows(batch, dim, dtype):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((batch, dim, dim))
    cov = (a @ a.transpose(0, 2, 1) + dim * np.eye(dim)).astype(dtype)
    mean = rng.standard_normal((batch, dim)).astype(dtype)
    dmean, dcov = cuda.to_device(mean), cuda.to_device(cov)
    out = cuda.device_array((batch, dim), dtype)
    g = fastgauss.default_rng(0)
    moved = (mean.nbytes + cov.nbytes + out.nbytes)
    yield "mvn_sample", "fastgauss", moved, lambda: fastgauss.mvn_sample(dmean, dcov, rng=g, out=out)
    if torch is not None:
        tm, tc = torch.as_tensor(dmean, device="cuda"), torch.as_tensor(dcov, device="cuda")

        def torch_mvn():
            scale = torch.linalg.cholesky(tc)
            return tm + (scale @ torch.randn_like(tm).unsqueeze(-1)).squeeze(-1)

        yield "mvn_sample", "torch", moved, torch_mvn


def main(folder=None, small=False):
    device = cuda.get_current_device()
    name = getattr(device, "name", b"simulator")
    lines = [name.decode() if isinstance(name, bytes) else str(name)]
    shapes = [(2, 3, 8, 8)] if small else [(64, 3, 256, 256), (512, 3, 512, 512)]
    for shape in shapes:
        for dtype in (np.float32, np.float64):
            if dtype is np.float64 and shape[0] > 64:
                continue  # float64 at the large shape adds nothing the float32 row does not say
            lines += ["", f"### {shape} {np.dtype(dtype).name}", ""]
            lines.append("| op | implementation | wall ms | GPU ms | GB/s | of copy |")
            lines.append("|---|---|---:|---:|---:|---:|")
            copy_rate = None
            hold = 20_000 if shape[0] > 64 else 5_000
            for op, implementation, moved, function in rows(shape, dtype):
                function()
                cuda.synchronize()
                wall, gpu = wall_time(function), gpu_time(function, hold)
                rate = moved / gpu / 1e9
                if op == "copy":
                    copy_rate = max(copy_rate or 0.0, rate)
                share = f"{rate / copy_rate:.0%}" if copy_rate else ""
                lines.append(f"| {op} | {implementation} | {wall * 1e3:.3f} | {gpu * 1e3:.3f} | {rate:.0f} | {share} |")
                print(lines[-1], flush=True)
    batch = 1000 if small else 1_000_000
    for dtype in (np.float32, np.float64):
        lines += ["", f"### mvn_sample {batch} 4x4 {np.dtype(dtype).name}", ""]
        lines.append("| op | implementation | wall ms | GPU ms |")
        lines.append("|---|---|---:|---:|")
        for op, implementation, moved, function in mvn_rows(batch, 4, dtype):
            function()
            cuda.synchronize()
            lines.append(f"| {op} | {implementation} | {wall_time(function) * 1e3:.3f} | {gpu_time(function, 5_000) * 1e3:.3f} |")
            print(lines[-1], flush=True)
    report = "\n".join(lines)
    print(report)
    if folder:
        with open(f"{folder}/bandwidth.md", "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(arguments[0] if arguments else None, small="--small" in sys.argv)
