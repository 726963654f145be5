#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (numba, numba-cuda, numpy, scipy, pytest, pytest-benchmark and
# hypothesis already installed; torch, CuPy, dask and pytest-xdist used where present; nothing is
# downloaded). Results go to ${OUT:-gpu-results}/.
#
#   ci/gpu.sh          every test that runs a CUDA kernel (-k "cuda or gpu": the cuda backend's
#                      parametrizations, tests/test_cuda_kernels.py, tests/test_gpu.py for torch
#                      CUDA tensors and CuPy/Dask), the main job with --quick (its cuda rows),
#                      then the benchmarks' cuda rows, benchmarks/bandwidth_cuda.py (GPU time
#                      against the device copy, torch, CuPy) and benchmarks/normals_cuda_vs_cpu.py
#                      (the GPU's bits against the CPU's): fits a 15-minute GPU lease (about 4 min)
#   ci/gpu.sh --full   the whole test suite, the main job and every benchmark
#
# GPU_TEST_TIMEOUT / GPU_BENCH_TIMEOUT (seconds) bound each step, so that a slow step still
# leaves its log. The lent machines have torch, CuPy and pytest-xdist but no dask: carry the
# wheels of dask, distributed, partd, locket, zict, tblib and tornado for Python 3.12 and
# put them on PYTHONPATH first (2026-11-26: `pip install --target /tmp/site .whl/*.whl`),
# else the Dask-on-CuPy tests skip.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset NUMBA_ENABLE_CUDASIM
python="${PYTHON:-python3}"  # on the lent GPU machines python3 is the interpreter with torch and CuPy
full=0
[ "${1:-}" = "--full" ] && full=1

status=0
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt" || status=1
"$python" -c "import sys, numpy, numba, numba.cuda as c; print(sys.version.split()[0], 'numpy', numpy.__version__, 'numba', numba.__version__, 'cc', c.get_current_device().compute_capability)" | tee -a "$out/gpu.txt"
for module in numba_cuda torch cupy dask distributed xdist; do
    "$python" -c "import $module as m; print('$module', getattr(m, '__version__', '?'))" 2>/dev/null | tee -a "$out/gpu.txt"
done

# Workers when pytest-xdist is there (files whole: a file's tests share their compiled kernels);
# -o addopts drops pyproject's -n auto, which needs xdist.
workers=()
"$python" -c "import xdist" 2>/dev/null && workers=(-n "${GPU_TEST_WORKERS:-8}" --dist loadfile)
select=(-k "cuda or gpu")
[ $full -eq 1 ] && select=()
timeout "${GPU_TEST_TIMEOUT:-1800}" "$python" -m pytest tests -p no:cacheprovider -p no:benchmark -o addopts= -rfEs --tb=short -v "${workers[@]}" "${select[@]}" 2>&1 \
    | tee "$out/tests.txt" | grep -E "FAILED|ERROR|passed|failed" | tail -60
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

main=(--quick)
[ $full -eq 1 ] && main=()
timeout "${GPU_MAIN_TIMEOUT:-1800}" "$python" -m fastgauss "${main[@]}" --json "$out/main.json" > "$out/main.txt" 2>&1
[ $? -eq 0 ] || status=1
grep -E "FAIL|PASS:|Error" "$out/main.txt" | tail -20
bench_select=(-k cuda --benchmark-max-time=0.5)  # GPU rows take microseconds: 0.5 s is thousands of rounds
[ $full -eq 1 ] && bench_select=()
timeout "${GPU_BENCH_TIMEOUT:-1800}" "$python" -m pytest benchmarks -q -p no:cacheprovider --benchmark-only "${bench_select[@]}" \
    --benchmark-json="$out/bench.json" 2>&1 | tail -40 > "$out/bench.txt"
if [ -s "$out/bench.json" ]; then "$python" benchmarks/report.py "$out/bench.json" | tee "$out/table.md"; else status=1; fi
# The kernels' own GPU time against the device copy, torch and CuPy; the GPU's numbers against the CPU's.
timeout "${GPU_BENCH_TIMEOUT:-1800}" "$python" benchmarks/bandwidth_cuda.py "$out" > "$out/bandwidth.log" 2>&1 || status=1
timeout "${GPU_BENCH_TIMEOUT:-1800}" "$python" benchmarks/normals_cuda_vs_cpu.py "$out" > "$out/normals.log" 2>&1 || status=1
cat "$out/bandwidth.md" "$out/normals.md" 2>/dev/null
exit $status
