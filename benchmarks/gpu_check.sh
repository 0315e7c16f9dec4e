#!/usr/bin/env bash
# The GPU check in one line, for a lent GPU machine (see benchmarks/gpu_check.py): <= 8 min on one GPU, writes
# benchmarks/results/gpu/gpu_check.json. Run from the repository root: bash benchmarks/gpu_check.sh [args...]
#
# The machine's image has torch, transformers, lightning and tokenizers but no registry access. Sections whose
# packages it lacks are recorded as errors (the others still run). To run them too, first download their wheels
# here into .whl/ (git-ignored via .git/info/exclude) and carry .whl with the run, e.g.:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#     liger-kernel==0.8.5 lm-eval==<the version in pyproject.toml> <its missing requirements>
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
PYTHONUNBUFFERED=1 exec "$PYTHON" -m benchmarks.gpu_check "$@"
