#!/usr/bin/env bash
# Install fastgauss with its test extras and run the README's two commands (quick main job, test suite).
# Fails when any self-check or test fails. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --disable-pip-version-check -q -e ".[test]"
python -m fastgauss --quick
python -m pytest
