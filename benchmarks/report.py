"""Turn a pytest-benchmark JSON file into the markdown table of benchmarks/README.md.

    python benchmarks/report.py bench.json

For each group: the best (min) time per backend, the speedup over the NumPy reference,
GB/s = bytes the op must move / time, and that as a fraction of the bandwidth of a copy
moving the same bytes in the same run (host copy for numpy/cpu, device copy for cuda;
the faster of the host copies). Forward + backward groups through the torch adapter
(bench_torch.py: "implementation" fastgauss or torch, on a "device") get a table of their own:
the best times side by side and torch's over fastgauss's.
"""

import json
import sys


def main(path):
    with open(path) as f:
        data = json.load(f)
    rows, copy, notes, against_torch = {}, {}, [], {}
    for bench in data["benchmarks"]:
        info, best = bench["extra_info"], bench["stats"]["min"]
        if "implementation" in info:
            against_torch.setdefault((bench["group"], info["device"]), {})[info["implementation"]] = best
            continue
        if bench["group"].startswith("copy"):
            key = (info["backend"], info["dtype"])  # the fastest copy of each kind is the floor
            copy[key] = max(copy.get(key, 0.0), info["bytes"] / best)
            continue
        dtype = info.get("dtype") or next((d for d in ("float32", "float64") if d in bench["group"]), None)
        rows.setdefault(bench["group"], {})[info["backend"]] = (best, info["bytes"], dtype)
        for key, value in info.items():  # accuracy notes some benchmarks record (bench_kl.py)
            if key.startswith("max relative deviation"):
                notes.append(f"{bench['group']}, {info['backend']}: {key} {value:.1e}")
    machine = data.get("machine_info", {})
    print(f"Machine: {machine.get('cpu', {}).get('brand_raw', '?')}, {machine.get('cpu', {}).get('count', '?')} cores, "
          f"Python {machine.get('python_version', '?')}; run {data.get('datetime', '?')[:19]}")
    print("Copy bandwidth (read + write): " + ", ".join(f"{kind} {dtype} {rate / 1e9:.1f} GB/s" for (kind, dtype), rate in copy.items()))
    print()
    print("| benchmark | backend | best ms | speedup vs numpy | GB/s | of copy bandwidth |")
    print("|---|---|---:|---:|---:|---:|")
    baselines = {}  # other NumPy ways a group times next to the reference, e.g. "numpy-float32"
    for group, by_backend in rows.items():
        numpy_time = by_backend.get("numpy", (None,))[0]
        extra = sorted(b for b in by_backend if b not in ("numpy", "cpu", "cuda"))
        baselines.update({(group, b): by_backend[b][0] for b in extra})
        for backend in ("numpy", *extra, "cpu", "cuda"):
            if backend not in by_backend:
                continue
            best, nbytes, dtype = by_backend[backend]
            speedup = f"{numpy_time / best:.1f}x" if numpy_time else "-"
            reference = copy.get(("cuda" if backend == "cuda" else "host", dtype))
            rate = nbytes / best
            floor = f"{rate / reference:.0%}" if reference else "-"
            print(f"| {group} | {backend} | {best * 1e3:.2f} | {speedup} | {rate / 1e9:.1f} | {floor} |")
    if baselines:
        print()
        for (group, baseline), seconds in baselines.items():
            compiled = [f"{b} {seconds / rows[group][b][0]:.1f}x" for b in ("cpu", "cuda") if b in rows[group]]
            print(f"- {group}: speedup over {baseline}: {', '.join(compiled) or '-'}")
    if notes:
        print()
        for note in notes:
            print(f"- {note}")
    if against_torch:
        print()
        print("| forward + backward | device | fastgauss ms | torch ms | speedup vs torch |")
        print("|---|---|---:|---:|---:|")
        for (group, device), times in against_torch.items():
            ours, theirs = times.get("fastgauss"), times.get("torch")
            speedup = f"{theirs / ours:.1f}x" if ours and theirs else "-"
            cells = [f"{t * 1e3:.2f}" if t else "-" for t in (ours, theirs)]
            print(f"| {group} | {device} | {cells[0]} | {cells[1]} | {speedup} |")


if __name__ == "__main__":
    main(sys.argv[1])
