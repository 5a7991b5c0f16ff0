#!/usr/bin/env bash
# Install mergescope (editable) into the current Python; run it inside a virtualenv (README, Two commands).
# `--dev` adds the test tools.
# torch: an existing torch (CPU or CUDA) is kept as is. When it is missing, the CUDA build is installed
# if an NVIDIA GPU answers `nvidia-smi`, else the CPU build from PyTorch's CPU index (PyPI's Linux wheel
# is the multi-GB CUDA build). TORCH_VERSION is the version the tests run on; the project itself
# accepts any torch>=2.2 (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
CPU_INDEX=https://download.pytorch.org/whl/cpu
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

say() { echo "install.sh: $*" >&2; }

nvidia_gpu() {  # the first GPU's name when nvidia-smi runs and lists one
  command -v nvidia-smi >/dev/null 2>&1 || return 1
  local gpu
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1) || return 1
  [ -n "$gpu" ] || return 1
  echo "$gpu"
}

torch_build() {  # "2.13.0+cpu (CPU build)" / "2.13.0 (CUDA 12.8 build)"
  "$PY" -c 'import torch; c = torch.version.cuda; print(torch.__version__, f"(CUDA {c} build)" if c else "(CPU build)")'
}

if "$PY" -c "import torch" >/dev/null 2>&1; then
  have=$(torch_build)
  say "keeping the installed torch $have"
  if [[ "$have" == *"CPU build"* ]] && gpu=$(nvidia_gpu); then
    say "note: an NVIDIA GPU is present ($gpu); for the CUDA build: $PY -m pip install --force-reinstall torch==$TORCH_VERSION"
  fi
elif gpu=$(nvidia_gpu); then
  say "torch not found; NVIDIA GPU found ($gpu): installing the CUDA build of torch $TORCH_VERSION (PyPI's Linux wheel, several GB)"
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
else
  say "torch not found and no NVIDIA GPU (nvidia-smi): installing the CPU build of torch $TORCH_VERSION ($CPU_INDEX)"
  "$PY" -m pip install -q --no-deps "torch==$TORCH_VERSION" --index-url "$CPU_INDEX"
  "$PY" -m pip install -q "torch==$TORCH_VERSION"  # its dependencies, from the usual index
fi
"$PY" -m pip install -q -e ".${extras}"
say "installed mergescope$extras with torch $(torch_build)"
