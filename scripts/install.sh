#!/usr/bin/env bash
# Install mergescope (editable) into the current Python. `--dev` adds the test tools.
# torch: when it is missing we install the CPU build first (pip resolving a bare `torch>=2.2`
# on Linux would pull a multi-GB CUDA build); an existing torch (CPU or CUDA) is kept as is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "install.sh: torch not found, installing the CPU build" >&2
  "$PY" -m pip install -q "torch==2.13.0" 2>/dev/null \
    || "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
"$PY" -m pip install -q -e ".${extras}"
