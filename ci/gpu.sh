#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (numba, numba-cuda, numpy, scipy, pytest, pytest-benchmark and
# hypothesis already installed; nothing is downloaded): the test suite on the real GPU, then the
# main job and the benchmarks. Results go to ${OUT:-gpu-results}/.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset NUMBA_ENABLE_CUDASIM

status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt" || status=1
# one process (-o addopts: no pytest-xdist workers, which this machine may not have installed)
python -m pytest -q -p no:cacheprovider -o addopts=-ra 2>&1 | tee "$out/tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
python -m fastgauss --json "$out/main.json" 2>&1 | tee "$out/main.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
python -m pytest benchmarks -q -p no:cacheprovider --benchmark-only --benchmark-json="$out/bench.json" 2>&1 | tail -40 > "$out/bench.txt"
python benchmarks/report.py "$out/bench.json" | tee "$out/table.md"
exit $status
