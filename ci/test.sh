#!/usr/bin/env bash
# Install fastgauss with its test extras and run the README's two commands (quick main job, test suite),
# then compile every CUDA kernel for real GPUs (sm_90, sm_80) with the argument types the test suite
# launched it with, and assemble it with ptxas (ci/cuda_compile.py; no GPU needed).
# Fails when any self-check or test fails, when a CUDA kernel is never launched by the tests, or when
# one does not compile or assemble. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

# torch==2.13.0: the registry serves it as a CPU-only wheel, so tests/test_torch.py runs here
python -m pip install --disable-pip-version-check -q -e ".[test,cuda-compile,torch,dask]" "torch==2.13.0"
python -m fastgauss --quick
mkdir -p build
# The test suite records every CUDA kernel launch (simulator or GPU) and its argument types.
FASTGAUSS_KERNEL_LAUNCHES=build/cuda_launches.json python -m pytest
python ci/cuda_compile.py build/cuda_launches.json --report benchmarks/README.md
