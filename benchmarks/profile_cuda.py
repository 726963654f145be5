"""Where a cuda call's time goes, on a real GPU: the wall time of one warm call (synchronized),
the GPU time of the same call (CUDA events around it), the same for a tiny input (the host
side alone), and a cProfile of the host side of the large call.

    python benchmarks/profile_cuda.py [output folder]
"""

import cProfile
import io
import pstats
import sys
import time

import numpy as np
from numba import cuda

import fastgauss

SHAPE = (64, 3, 256, 256)
TINY = (4, 3, 4, 4)
SCHEDULE = fastgauss.NoiseSchedule.linear(1000)


def cases(shape):
    rng = np.random.default_rng(0)
    x0 = cuda.to_device(rng.standard_normal(shape, dtype=np.float32))
    noise = cuda.to_device(rng.standard_normal(shape, dtype=np.float32))
    t = cuda.to_device(rng.integers(0, 1000, shape[0]))
    out = cuda.device_array(shape, np.float32)
    g = fastgauss.default_rng(0)
    yield "q_sample out=", lambda: fastgauss.q_sample(x0, t, SCHEDULE, noise, out=out)
    yield "q_sample scalar t", lambda: fastgauss.q_sample(x0, 500, SCHEDULE, noise, out=out)
    yield "normal_kl mean", lambda: fastgauss.normal_kl(x0, noise, 0.0, 0.0, reduce="mean")
    yield "normal_kl elementwise", lambda: fastgauss.normal_kl(x0, noise, 0.0, 0.0)
    yield "standard_normal", lambda: g.standard_normal(shape, np.float32, out=out, backend="cuda")
    yield "q_sample rng", lambda: fastgauss.q_sample(x0, t, SCHEDULE, rng=g, out=out)


def timings(function, repeats=30):
    function()
    cuda.synchronize()
    walls, gpus = [], []
    for _ in range(repeats):
        start, stop = cuda.event(), cuda.event()
        began = time.perf_counter()
        start.record()
        function()
        stop.record()
        stop.synchronize()
        walls.append(time.perf_counter() - began)
        gpus.append(start.elapsed_time(stop) / 1e3)
    return min(walls), min(gpus)


def main(folder):
    name = getattr(cuda.get_current_device(), "name", "simulator")
    lines = [name.decode() if isinstance(name, bytes) else str(name)]
    lines.append("| op | wall ms (64,3,256,256) | events ms | wall ms (tiny) | launch-free floor ms |")
    lines.append("|---|---:|---:|---:|---:|")
    large = dict(cases(SHAPE))
    tiny = dict(cases(TINY))
    nbytes = 3 * int(np.prod(SHAPE)) * 4
    for name in large:
        wall, gpu = timings(large[name])
        tiny_wall, _ = timings(tiny[name])
        lines.append(f"| {name} | {wall * 1e3:.3f} | {gpu * 1e3:.3f} | {tiny_wall * 1e3:.3f} | {nbytes / 4.0e12 * 1e3:.3f} |")
    profile = cProfile.Profile()
    function = large["q_sample out="]
    profile.enable()
    for _ in range(50):
        function()
    cuda.synchronize()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(35)
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(20)
    lines.append(text.getvalue())
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():  # forward + backward through the adapter
        x = torch.randn(SHAPE, device="cuda", requires_grad=True)
        n = torch.randn(SHAPE, device="cuda", requires_grad=True)
        tt = torch.randint(0, 1000, SHAPE[:1], device="cuda")

        def step():
            return torch.autograd.grad(fastgauss.q_sample(x, tt, SCHEDULE, n).sum(), [x, n])

        wall, gpu = timings(step)
        lines.append(f"torch q_sample forward+backward: wall {wall * 1e3:.3f} ms, events {gpu * 1e3:.3f} ms")
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(20):
            step()
        torch.cuda.synchronize()
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(35)
        lines.append(text.getvalue())
    report = "\n".join(lines)
    print(report)
    if folder:
        with open(f"{folder}/profile.txt", "w") as f:
            f.write(report)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
