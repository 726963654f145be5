"""python -m fastgauss: environment, self-check against the reference, benchmark table.

Exit status 1 when any self-check fails. Options: --quick (self-check of the
benchmarked call of each op only, small size, fewer repeats), --size 64,3,256,256 (benchmark shape), --json PATH (write everything).
"""

import argparse
import concurrent.futures
import inspect
import json
import multiprocessing
import os
import platform
import sys
import time

import numpy as np

import fastgauss
from fastgauss import _bench
from fastgauss._dispatch import OPS, cuda_unavailable_reason
from fastgauss._examples import EXAMPLES
from fastgauss._selfcheck import CHECK_SHAPE, DTYPES, check_op, check_ops
from fastgauss._selfcheck import run as _run
from fastgauss._selfcheck import on_device as _on_device

DEFAULT_SIZE = (16, 3, 128, 128)  # small enough that a first run stays near a minute; --size for more
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


# The mvn algebra ops have kernels of their own, apart from the sampling and density ops'.
MVN_ALGEBRA = ("mvn_affine", "mvn_marginal", "mvn_condition", "gaussian_product", "kalman_update")
# Each group's --quick self-check on a cold cache, alone in a process (2-core Intel Xeon): mvn's
# sampling and density ops 29.8 s, the KL family 27.8 s, objective 14.1 s, mvn's algebra 16.9 s,
# diffusion 12.3 s, random 7.5 s. In this order two workers end together: {mvn, algebra,
# random} and {KL, objective, diffusion}, 54 s each (a cold --quick 1-2 s sooner than largest
# first, side by side). The objective goes with the KL family, whose device functions it links.
GROUP_ORDER = ("mvn", "kl", "objective", "mvn algebra", "diffusion", "random")


def kernel_groups():
    """The ops in groups that share compiled kernels (a backend family; mvn in two), in the
    order ``GROUP_ORDER`` (measured), which a pool of two workers takes in balance."""
    groups = {}
    for name, op in OPS.items():
        groups.setdefault("mvn algebra" if name in MVN_ALGEBRA else op.family, []).append(name)
    rank = {key: i for i, key in enumerate(GROUP_ORDER)}
    return [groups[key] for key in sorted(groups, key=lambda key: rank.get(key, len(GROUP_ORDER)))]


def self_check(backends, jobs=1, quick=False):
    """Every op on every compiled backend against the NumPy reference (``quick``: only the calls
    the benchmark table times, one argument form per op and dtype).

    With jobs > 1 the ops are checked in that many worker processes: on a cold Numba cache
    the check is mostly compilation, which is single-threaded, so the workers compile (into
    the shared disk cache) in parallel and the benchmarks then load the kernels from it. A
    worker takes a whole group of ops that share kernels (``kernel_groups``, in a measured order):
    one op a task compiled a shared kernel in every worker that met it (26 of 119 s of compile
    time on a cold --quick)."""
    if jobs > 1:
        context = multiprocessing.get_context("spawn")  # no fork of a process with a thread pool
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
            groups = kernel_groups()
            futures = [pool.submit(check_ops, ops, backends, quick) for ops in groups]
            by_op = {}
            for ops, future in zip(groups, futures):
                try:
                    by_op.update(zip(ops, future.result()))
                except Exception as exc:  # a worker that died is a FAIL of its ops
                    for op in ops:
                        by_op[op] = [{"op": op, "backend": b, "status": "FAIL", "failed": [f"worker: {exc!r}"]} for b in backends]
            outcomes = [by_op[op] for op in OPS]
    else:
        outcomes = [check_op(op, backends, quick) for op in OPS]
    results = []
    for rows in outcomes:
        for row in rows:
            failed = row["failed"]
            say(f"  {row['op']:<24} {row['backend']:<5} {row['status']}" + (f"  ({'; '.join(failed)})" if failed else ""))
            results.append(row)
    return results


def _bytes_moved(args, result):
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    outputs = result if isinstance(result, tuple) else (result,)
    return sum(a.nbytes for a in arrays) + sum(o.nbytes for o in outputs)


def _outputs_like(expected, empty):
    """out= for a call whose reference result is ``expected``: one array, or a tuple for an op with
    several outputs (normal_product)."""
    return tuple(empty(e) for e in expected) if isinstance(expected, tuple) else empty(expected)


def _time(call, backend, expected, repeats):
    """Timing (an untimed warm-up, then ``repeats`` >= 3 timed runs) of ``call`` on ``backend``,
    with a preallocated out= where the op takes one (so the times measure the op, not the
    page faults of a fresh output buffer). Every backend, the reference included, is timed
    the same way."""
    takes_out = "out" in inspect.signature(call.function).parameters
    if backend == "cuda":
        from numba import cuda

        args, kwargs = _on_device(call)  # copied once, outside the timing
        extra = {"out": _outputs_like(expected, lambda e: cuda.device_array(e.shape, e.dtype))} if takes_out else {}
        run = lambda: call.function(*args, **kwargs, **extra, backend="cuda")  # noqa: E731
        return _bench.time_runs(run, repeats, synchronize=cuda.synchronize)
    extra = {"out": _outputs_like(expected, np.empty_like)} if takes_out else {}
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
                row["bytes"] = _bytes_moved(call.args + tuple(call.kwargs.values()), expected)
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
    parser.add_argument("--quick", action="store_true", help=f"self-check only the benchmarked call of each op; benchmark at {QUICK_SIZE} with fewer repeats")
    parser.add_argument("--size", help=f"benchmark shape, e.g. 64,3,256,256 (default {DEFAULT_SIZE})")
    parser.add_argument("--json", metavar="PATH", help="write environment, self-check and benchmarks as JSON")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1,
        help="worker processes for the self-check (it compiles the kernels on a cold cache); default: one per core",
    )
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
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1; got {args.jobs}")
    return args


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    say("fastgauss environment")
    env = environment()
    for key, value in env.items():
        say(f"  {key:<16} {value}")
    backends = [b for b in env["backends"] if b != "numpy"]

    scope = "the benchmarked call of each op (--quick)" if args.quick else "every example call of each op"
    say(f"\nself-check against the NumPy reference, {scope} (float32 rtol=atol=1e-5, float64 1e-12)")
    checks = self_check(backends, jobs=args.jobs, quick=args.quick)
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
