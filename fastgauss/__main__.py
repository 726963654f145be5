"""python -m fastgauss: environment, self-check against the reference, benchmark table.

Exit status 1 when any self-check fails. Options: --quick (small size, fewer
repeats), --size 64,3,256,256 (benchmark shape), --json PATH (write everything).
"""

import argparse
import inspect
import json
import os
import platform
import sys
import time

import numpy as np

import fastgauss
from fastgauss import _bench
from fastgauss._dispatch import OPS, cuda_unavailable_reason
from fastgauss._examples import EXAMPLES

DTYPES = (np.float32, np.float64)
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}  # rtol = atol, against the reference
CHECK_SHAPE = (4, 3, 16, 16)
DEFAULT_SIZE = (64, 3, 256, 256)
QUICK_SIZE = (8, 3, 64, 64)


def say(text=""):
    print(text, flush=True)


def environment():
    import numba

    info = {
        "fastgauss": fastgauss.__version__,
        "cpu": cpu_model(),
        "isa": numba_isa(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "backends": list(fastgauss.backends()),
        "cpu_count": os.cpu_count(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
    }
    from fastgauss.cpu import THREADING_LAYER  # starts the thread pool, so the layer is known

    info["threading_layer"] = THREADING_LAYER
    reason = cuda_unavailable_reason()
    if reason is None:
        from numba import cuda

        device = cuda.get_current_device()
        name = getattr(device, "name", "simulated device")  # the simulator's device has no name
        name = name.decode() if isinstance(name, bytes) else str(name)
        info["gpu"] = name + (" (CUDA simulator)" if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else "")
    else:
        info["gpu"] = f"no GPU ({reason})"
    return info


def cpu_model():
    """The CPU's model name (/proc/cpuinfo on Linux, else platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numba_isa():
    """The CPU target Numba compiles for (NUMBA_CPU_NAME or the host's) and its widest vector ISA."""
    import llvmlite.binding as llvm
    import numba

    name = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    source = "NUMBA_CPU_NAME" if numba.config.CPU_NAME else "host"
    if numba.config.CPU_NAME in (None, "host"):
        features = {k for k, on in llvm.get_host_cpu_features().items() if on}
        vector = "AVX-512" if "avx512f" in features else "AVX2" if "avx2" in features else "SSE"
        return f"{name} ({source}, {vector})"
    return f"{name} ({source})"


def _to_device(value):
    from numba import cuda

    return cuda.to_device(value) if isinstance(value, np.ndarray) else value


def _to_host(value):
    if isinstance(value, tuple):
        return tuple(_to_host(v) for v in value)
    return value if isinstance(value, np.ndarray) else value.copy_to_host()


def _run(call, backend, **extra):
    args = tuple(_to_device(a) for a in call.args) if backend == "cuda" else call.args
    return call.function(*args, **call.kwargs, **extra, backend=backend)


def _matches(got, expected, dtype):
    pairs = zip(_to_host(got), expected) if isinstance(expected, tuple) else [(_to_host(got), expected)]
    tol = TOLERANCE[dtype]
    return all(
        g.shape == e.shape
        and g.dtype == e.dtype
        and (np.array_equal(g, e) if e.dtype.kind in "iu" else np.allclose(g, e, rtol=tol, atol=tol, equal_nan=True))
        for g, e in pairs
    )


def self_check(backends):
    """Every op on every compiled backend against the NumPy reference."""
    results = []
    rng = np.random.default_rng(20261124)
    for op in OPS:
        for backend in backends:
            failed = [] if op in EXAMPLES else ["no example in fastgauss/_examples.py"]
            for dtype in DTYPES if op in EXAMPLES else ():
                for call in EXAMPLES[op](CHECK_SHAPE, dtype, rng):
                    problem = ""
                    try:
                        if not _matches(_run(call, backend), _run(call, "numpy"), dtype):
                            problem = "differs from the reference"
                    except Exception as exc:  # a crash is a FAIL, reported, not a traceback
                        problem = f"{type(exc).__name__}: {exc}"
                    if problem:
                        failed.append(f"{np.dtype(dtype).name} {call.label}: {problem}")
            status = "FAIL" if failed else "PASS"
            say(f"  {op:<24} {backend:<5} {status}" + (f"  ({'; '.join(failed)})" if failed else ""))
            results.append({"op": op, "backend": backend, "status": status, "failed": failed})
    return results


def _bytes_moved(args, result):
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    outputs = result if isinstance(result, tuple) else (result,)
    return sum(a.nbytes for a in arrays) + sum(o.nbytes for o in outputs)


def _time(call, backend, expected, repeats):
    """Timing (an untimed warm-up, then ``repeats`` >= 3 timed runs) of ``call`` on ``backend``,
    with a preallocated out= where the op takes one (so the times measure the op, not the
    page faults of a fresh output buffer). Every backend, the reference included, is timed
    the same way."""
    takes_out = "out" in inspect.signature(call.function).parameters
    if backend == "cuda":
        from numba import cuda

        args = tuple(_to_device(a) for a in call.args)  # copied once, outside the timing
        extra = {"out": cuda.device_array(expected.shape, expected.dtype)} if takes_out else {}
        run = lambda: call.function(*args, **call.kwargs, **extra, backend="cuda")  # noqa: E731
        return _bench.time_runs(run, repeats, synchronize=cuda.synchronize)
    extra = {"out": np.empty_like(expected)} if takes_out else {}
    if backend == "numpy" and call.numpy_way is not None:  # NumPy's generator + the reference formula
        return _bench.time_runs(lambda: call.numpy_way(*call.args, **call.kwargs, **extra), repeats)
    return _bench.time_runs(lambda: _run(call, backend, **extra), repeats)


def benchmark(backends, shape, repeats):
    """Time each benchmarked call per backend, next to a copy moving the same bytes (same run, same moment).

    Each backend's time is the best of ``repeats`` (at least 3) warm runs after one untimed run;
    the rows keep every run (``runs``) and the warm-up, so the table can be audited."""
    rows = []
    rng = np.random.default_rng(0)
    for op in OPS:
        for dtype in DTYPES if op in EXAMPLES else ():
            if not any(call.benchmark for call in EXAMPLES[op](CHECK_SHAPE, dtype, rng)):
                continue  # skip building full-size inputs nobody times
            for call in EXAMPLES[op](shape, dtype, rng):
                if not call.benchmark:
                    continue
                say(f"  {op} {np.dtype(dtype).name} {shape} ({call.label}) ...")
                expected = _run(call, "numpy")  # the result's shape and dtype, for out=
                row = {"op": op, "dtype": np.dtype(dtype).name, "shape": list(shape), "case": call.label}
                row["numpy baseline"] = "numpy.random + reference" if call.numpy_way else "reference"
                row["bytes"] = _bytes_moved(call.args, expected)
                row["copy GB/s"] = {"host": _bench.host_copy_bandwidth(row["bytes"] // 2, repeats=3) / 1e9}
                if "cuda" in backends:
                    row["copy GB/s"]["cuda"] = _bench.device_copy_bandwidth(row["bytes"] // 2) / 1e9
                for backend in backends:
                    timing = _time(call, backend, expected, repeats)
                    row[backend] = {
                        "seconds": timing.best,
                        "runs": list(timing.runs),
                        "warm_up": timing.warm_up,
                        "GB/s": row["bytes"] / timing.best / 1e9,
                    }
                rows.append(row)
    return rows


def print_table(rows, backends):
    compiled = [b for b in backends if b != "numpy"]
    header = f"{'op':<17}{'case':<35}{'dtype':<9}{'numpy ms':>10}"
    for b in compiled:
        header += f"{b + ' ms':>10}{'speedup':>9}{'GB/s':>8}{'copy GB/s':>11}{'of copy':>9}"
    say(header)
    for row in rows:
        case = row["case"] + (" *" if row["numpy baseline"] != "reference" else "")
        line = f"{row['op'][:16]:<17}{case[:34]:<35}{row['dtype']:<9}{row['numpy']['seconds'] * 1e3:>10.2f}"
        for b in compiled:
            copy = row["copy GB/s"]["cuda" if b == "cuda" else "host"]
            line += (
                f"{row[b]['seconds'] * 1e3:>10.2f}{row['numpy']['seconds'] / row[b]['seconds']:>8.1f}x"
                f"{row[b]['GB/s']:>8.1f}{copy:>11.1f}{row[b]['GB/s'] / copy:>9.0%}"
            )
        say(line)
    say("numpy ms = the NumPy reference op; * = what a NumPy user writes instead: NumPy's own Generator")
    say("(PCG64) for the noise, then the reference formula (the reference's Philox emulation is a spec).")
    say("GB/s = bytes the op must move (inputs read once, outputs written once) / time.")
    say("copy GB/s = a copy moving the same bytes, timed right before (host: best of numpy.copyto and a")
    say("parallel Numba copy); 'of copy' = GB/s / copy GB/s. Outputs preallocated (out=). Every time is the")
    say("best of its warm runs after one untimed run (compilation, page faults), the same for NumPy.")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fastgauss", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"benchmark at {QUICK_SIZE} with fewer repeats")
    parser.add_argument("--size", help=f"benchmark shape, e.g. 64,3,256,256 (default {DEFAULT_SIZE})")
    parser.add_argument("--json", metavar="PATH", help="write environment, self-check and benchmarks as JSON")
    args = parser.parse_args(argv)
    if args.size:
        try:
            args.shape = tuple(int(n) for n in args.size.replace("x", ",").split(","))
        except ValueError:
            parser.error(f"--size must be comma-separated integers, e.g. 64,3,256,256; got {args.size!r}")
        if not args.shape or min(args.shape) < 1:
            parser.error(f"--size needs positive dimensions; got {args.size!r}")
    else:
        args.shape = QUICK_SIZE if args.quick else DEFAULT_SIZE
    return args


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    say("fastgauss environment")
    env = environment()
    for key, value in env.items():
        say(f"  {key:<16} {value}")
    backends = [b for b in env["backends"] if b != "numpy"]

    say("\nself-check against the NumPy reference (float32 rtol=atol=1e-5, float64 1e-12)")
    checks = self_check(backends)
    failed = [c for c in checks if c["status"] == "FAIL"]

    repeats = 3 if args.quick else 5
    say(f"\nbenchmark at {args.shape}: every backend, NumPy included, best of {repeats} runs after an untimed one")
    say(f"  on {env['cpu']}, Numba target {env['isa']}, {env['numba_threads']} threads, {env['threading_layer']} layer")
    rows = benchmark(env["backends"], args.shape, repeats=repeats)
    say()
    print_table(rows, env["backends"])

    elapsed = time.perf_counter() - started
    say(f"\n{'FAIL' if failed else 'PASS'}: {len(checks) - len(failed)}/{len(checks)} self-checks passed in {elapsed:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "self_check": checks, "benchmarks": rows}, f, indent=2)
        say(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
