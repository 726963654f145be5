"""Compile every CUDA kernel of fastgauss for real GPUs, without a GPU.

The test suite runs the CUDA kernels under Numba's simulator, which executes them as
Python and so accepts code the real numba-cuda target rejects. This harness takes the
argument types of every kernel launch recorded during that run (tests/_cuda_launches.py,
``FASTGAUSS_KERNEL_LAUNCHES=path``), and in fresh processes without the simulator
compiles each (kernel, signature) with the real target to PTX (NVVM) for each compute
capability, then assembles the PTX with ptxas (``-v``: registers, spills, shared memory).

It fails, naming the kernel and the signature, on any typing, lowering, NVVM or ptxas
error, on a fused multiply-add in the noise and diffusion kernels that the CPU does not
compute (``_unintended_fmas``: they must give the CPU's bits), on a recorded argument
type that is not a plain array/scalar/tuple, and on a kernel of fastgauss.cuda that the
recorded run never launched. With ``--report FILE``
it rewrites the section between the cuda-compile markers of FILE (benchmarks/README.md):
registers and spill bytes per kernel for the first architecture (sm_90).

Needs the NVVM, NVRTC and ptxas wheels: ``pip install -e ".[test,cuda-compile]"``.
By hand, from the repository root:

    FASTGAUSS_KERNEL_LAUNCHES=build/cuda_launches.json python -m pytest
    python ci/cuda_compile.py build/cuda_launches.json --report benchmarks/README.md

The only patch is inside the worker process: compiling a kernel that calls a
``@cuda.jit(device=True)`` function asks the current device for its compute capability,
so the worker answers with the capability it compiles for. The library is untouched.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- cuda-compile:begin -->", "<!-- cuda-compile:end -->"
THREADS = 256  # fastgauss.cuda.THREADS: the block size of every launch, for the occupancy column


def _import_paths():
    for p in (ROOT / "tests", ROOT):  # this checkout's fastgauss, not an installed one
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


# --- worker: one compute capability, in a process without the simulator ------------------------


def _ptxas():
    from cuda.pathfinder import find_nvidia_binary_utility

    path = find_nvidia_binary_utility("ptxas")
    if path is None:
        raise SystemExit("ptxas not found: pip install -e '.[cuda-compile]' (the nvidia-cuda-nvcc wheel)")
    return path


def _parse_ptxas(text):
    """Registers, spill bytes, stack frame and shared memory of the one entry function in ptxas -v output."""
    info = {"registers": None, "spill_stores": 0, "spill_loads": 0, "stack": 0, "smem": 0}
    for m in re.finditer(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text):
        info["stack"] = max(info["stack"], int(m.group(1)))
        info["spill_stores"] += int(m.group(2))
        info["spill_loads"] += int(m.group(3))
    m = re.search(r"Used (\d+) registers", text)
    if m:
        info["registers"] = int(m.group(1))
    m = re.search(r"(\d+) bytes smem", text)
    if m:
        info["smem"] = int(m.group(1))
    return info


# The noise and the diffusion ops give the CPU's bits on a GPU only if NVVM fuses no product into
# an FMA: their element code writes such products as fastgauss.cuda.rounded_product (PTX mul.rn).
# The one FMA sequence meant to be there is the float64 quotient of fastgauss.cuda.random's
# divide: 17 constant divisions in a Box-Muller pair, 15 with one constant (2 FMAs) and 2 with two
# (3 FMAs), 36 in all, once per kernel that draws float64 normals.
BITWISE_MODULES = ("fastgauss.cuda.random", "fastgauss.cuda.diffusion")
DIVIDE_FMAS = 15 * 2 + 2 * 3


def _unintended_fmas(module, ptx):
    """'' or what is wrong with the FMAs in a kernel of BITWISE_MODULES."""
    if module not in BITWISE_MODULES:
        return ""
    f32 = len(re.findall(r"\bfma\.rn\.f32\b", ptx))
    f64 = len(re.findall(r"\bfma\.rn\.f64\b", ptx))
    if f32 == 0 and f64 in (0, DIVIDE_FMAS):
        return ""
    return (f"{f32} float32 and {f64} float64 FMAs, expected none but the float64 divide's {DIVIDE_FMAS}: a plain "
            "a * b + c was fused, so the GPU's bits differ from the CPU's (write the product as product(a, b))")


def worker(launches_path, cc, out_path, ptx_dir):
    os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
    _import_paths()
    import numba
    import numba.cuda.dispatcher
    from numba import cuda

    class _Device:  # answers compile_device's question for the capability compiled here
        compute_capability = cc

    numba.cuda.dispatcher.get_current_device = lambda: _Device

    import _cuda_launches

    data = json.loads(Path(launches_path).read_text())
    dispatchers = _cuda_launches.kernels()
    found = sorted(f"{m}.{n}" for m, n in dispatchers)
    results, errors = [], []
    if found != data["kernels"]:
        errors.append(f"kernels differ between the simulator run {data['kernels']} and the real target {found}")
    ptxas = _ptxas()
    arch = f"sm_{cc[0]}{cc[1]}"
    ptx_dir.mkdir(parents=True, exist_ok=True)
    for i, entry in enumerate(data["launches"]):
        name = f"{entry['module']}.{entry['kernel']}"
        where = f"{name}{entry['signature']} for {arch}"
        started = time.perf_counter()
        try:
            argtypes = tuple(_cuda_launches.decode(a) for a in entry["args"])
            dispatcher = dispatchers[(entry["module"], entry["kernel"])]
            options = dispatcher.targetoptions
            ptx, _ = cuda.compile_ptx(
                dispatcher.py_func, argtypes, cc=cc, fastmath=options.get("fastmath", False),
                debug=options.get("debug") or None, lineinfo=options.get("lineinfo", False), opt=options.get("opt"),
                launch_bounds=options.get("launch_bounds"),
            )
        except Exception as exc:  # typing, lowering or NVVM
            errors.append(f"{where}: {type(exc).__name__}: {exc}")
            continue
        compiled = time.perf_counter() - started
        fused = _unintended_fmas(entry["module"], ptx)
        if fused:
            errors.append(f"{where}: {fused}")
        ptx_path = ptx_dir / f"{i:03d}_{entry['kernel']}.ptx"
        ptx_path.write_text(ptx)
        run = subprocess.run(
            [ptxas, f"-arch={arch}", "-v", str(ptx_path), "-o", str(ptx_path.with_suffix(".cubin"))],
            capture_output=True, text=True,
        )
        if run.returncode != 0:
            errors.append(f"{where}: ptxas failed:\n{run.stderr.strip()}")
            continue
        info = _parse_ptxas(run.stderr + run.stdout)
        info.update(kernel=name, signature=entry["signature"], seconds=round(time.perf_counter() - started, 2),
                    compile_seconds=round(compiled, 2))
        results.append(info)
        print(f"{arch} {info['registers']:4d} regs  {info['spill_stores']:4d}/{info['spill_loads']:<4d} spill  {where}",
              flush=True)
    lines = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout.splitlines()
    version = next((line.strip() for line in lines if "release" in line), "?")
    Path(out_path).write_text(json.dumps({
        "arch": arch, "results": results, "errors": errors, "ptxas": version,
        "numba_cuda": _version("numba-cuda"), "nvvm": _version("nvidia-nvvm"),
    }, indent=1))


def _version(dist):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


# --- report -----------------------------------------------------------------------------------


def occupancy(registers, threads=THREADS, regs_per_sm=65536, max_warps=64, max_blocks=32):
    """Theoretical occupancy (fraction of the SM's 64 warps) limited by registers, sm_80/sm_90."""
    per_warp = -(-max(registers, 1) * 32 // 256) * 256  # allocated in units of 256 per warp
    warps_per_block = -(-threads // 32)
    blocks = min(regs_per_sm // per_warp // warps_per_block, max_blocks)
    return min(blocks * warps_per_block, max_warps) / max_warps


def report(summaries, launches):
    first = summaries[0]
    by_kernel = {}
    for r in first["results"]:
        by_kernel.setdefault(r["kernel"], []).append(r)
    lines = [
        BEGIN,
        "",
        "Written by `ci/cuda_compile.py` (the CI step; see ci/test.sh). Every kernel of",
        "`fastgauss.cuda`, with every argument-type signature the test suite launches it with",
        f"({len(launches)} signatures), compiled with the real numba-cuda target",
        f"(numba-cuda {first['numba_cuda']}, NVVM {first['nvvm']}) and assembled with ptxas",
        f"({first['ptxas']}) for " + ", ".join(s["arch"] for s in summaries) + " without a GPU.",
        f"Per kernel for {first['arch']}: registers per thread (over its signatures), spill bytes",
        f"(stores/loads, largest over its signatures), and the theoretical occupancy those",
        f"registers allow at {THREADS} threads per block.",
        "",
        "| kernel | signatures | registers | spill bytes | stack bytes | shared bytes | occupancy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kernel in sorted(by_kernel):
        rs = by_kernel[kernel]
        lo, hi = min(r["registers"] for r in rs), max(r["registers"] for r in rs)
        spills = f"{max(r['spill_stores'] for r in rs)}/{max(r['spill_loads'] for r in rs)}"
        lines.append(
            f"| `{kernel.removeprefix('fastgauss.cuda.')}` | {len(rs)} | {lo if lo == hi else f'{lo}-{hi}'} | {spills} |"
            f" {max(r['stack'] for r in rs)} | {max(r['smem'] for r in rs)} | {occupancy(hi):.0%} |"
        )
    lines.append("")
    for s in summaries:
        rs = s["results"]
        spilling = sorted({r["kernel"] for r in rs if r["spill_stores"] or r["spill_loads"]})
        lines.append(
            f"- {s['arch']}: {len(rs)} signatures compiled and assembled; most registers "
            f"{max(r['registers'] for r in rs)}; " + (f"spills in {', '.join(spilling)}" if spilling else "no spills") + "."
        )
    heavy = [(k, max(r["registers"] for r in rs)) for k, rs in sorted(by_kernel.items()) if max(r["registers"] for r in rs) > 128]
    if heavy:
        lines.append(f"- Above 128 registers on {first['arch']}: " + ", ".join(
            f"`{k}` ({n}, occupancy {occupancy(n):.0%})" for k, n in heavy) + ".")
    else:
        lines.append(f"- No kernel above 128 registers on {first['arch']}.")
    lines += ["", END]
    return "\n".join(lines)


def write_report(path, text):
    path = Path(path)
    current = path.read_text() if path.exists() else ""
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        current = head + text + rest.split(END, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(current)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("launches", help="JSON written by the test suite with FASTGAUSS_KERNEL_LAUNCHES=path")
    parser.add_argument("--cc", default="9.0,8.0", help="compute capabilities, the first one reported (default 9.0,8.0)")
    parser.add_argument("--out", default=str(ROOT / "build" / "cuda_compile"), help="PTX, cubins and results go here")
    parser.add_argument("--report", help="markdown file whose cuda-compile section to rewrite (benchmarks/README.md)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.worker:
        cc = tuple(int(v) for v in args.worker.split("."))
        worker(args.launches, cc, out / f"sm_{cc[0]}{cc[1]}.json", out / f"sm_{cc[0]}{cc[1]}")
        return 0

    data = json.loads(Path(args.launches).read_text())
    launched = {f"{e['module']}.{e['kernel']}" for e in data["launches"]}
    errors = [f"{k}: no test launched it, so it has no signature to compile" for k in data["kernels"] if k not in launched]
    summaries = []
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING"] = "1"  # plain error text in CI logs
    for cc in args.cc.split(","):
        started = time.perf_counter()
        run = subprocess.run([sys.executable, __file__, args.launches, "--out", str(out), "--worker", cc], env=env)
        arch = "sm_" + cc.replace(".", "")
        result_path = out / f"{arch}.json"
        if run.returncode != 0 or not result_path.exists():
            errors.append(f"{arch}: the compile worker failed (exit {run.returncode})")
            continue
        summary = json.loads(result_path.read_text())
        errors += summary["errors"]
        summaries.append(summary)
        print(f"{arch}: {len(summary['results'])} of {len(data['launches'])} signatures compiled and assembled "
              f"in {time.perf_counter() - started:.0f} s", flush=True)
    if summaries and not errors:
        text = report(summaries, data["launches"])
        (out / "report.md").write_text(text + "\n")
        print(text)
        if args.report:
            write_report(args.report, text)
    for e in errors:
        print("ERROR:", e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
