#!/usr/bin/env bash
# One command for a GPU machine (< 8 minutes with set-up): CUT3R / SigLIP+fusion / TTFT speed on CUDA
# and CPU-vs-CUDA parity on the public fixtures. Extra arguments go to gpu_check.py (e.g. --out r.json).
# Set-up: the project's .venv if it exists (its torch must be a CUDA build), else `make setup` with
# VLM3R_TORCH_INDEX_URL set to a CUDA wheel index (see scripts/setup.sh). Exit status 1 when parity fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VLM3R_PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ]; then
    echo "[gpu_check] no $PY: running make setup" >&2
    make setup
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "[gpu_check] $PY has no CUDA torch ($("$PY" -c 'import torch; print(torch.__version__)')): install a CUDA" \
         "build of the pinned torch version into it, or set VLM3R_PYTHON to a Python that has one" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 450 "$PY" benchmarks/gpu_check.py --device cuda "$@"
