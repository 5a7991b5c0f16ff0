#!/usr/bin/env bash
# Create .venv-mergekit/ (repo root): mergekit 0.1.5 in its own virtualenv, for the optional
# comparison tests (tests/test_mergekit_compat.py) and the benchmark (tests/benchmarks/bench.py).
#
# torch is installed FIRST and pinned to the CPU build, so mergekit's unpinned `torch` requirement is
# already satisfied and pip never pulls a multi-GB CUDA wheel. mergekit 0.1.5 accepts torch 2.13
# (it brings transformers 5.x, accelerate, peft, datasets ...: ~1.5 GB on disk).
#
#   scripts/setup_mergekit_venv.sh            # -> .venv-mergekit/bin/python
#   MERGESCOPE_MERGEKIT_PY=/other/venv/bin/python pytest tests/test_mergekit_compat.py
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-mergekit}
TORCH=${TORCH_VERSION:-2.13.0}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet "torch==$TORCH"
"$VENV/bin/pip" install --quiet "mergekit==0.1.5"
# Refuse a CUDA torch sneaking in through mergekit's dependencies.
"$VENV/bin/python" - <<'PY'
import importlib.metadata as m, torch
assert m.version("mergekit") == "0.1.5", m.version("mergekit")
assert torch.version.cuda is None, f"CUDA torch {torch.__version__} was installed; reinstall torch==<cpu build>"
print(f"mergekit {m.version('mergekit')}, torch {torch.__version__} (CPU) in {__import__('sys').prefix}")
PY
