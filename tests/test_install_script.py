"""scripts/install.sh chooses the torch build: keeps an installed one, installs the CUDA build when an NVIDIA
GPU answers nvidia-smi, else the CPU build, and says which. A stand-in Python records the pip commands
(nothing is installed), and a stand-in nvidia-smi plays the GPU."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

FAKE_PYTHON = """#!/bin/sh
# `-c CODE`: torch is importable once the log says a torch was installed (or $HAVE_TORCH is set)
if [ "$1" = "-c" ]; then
  if [ -n "$HAVE_TORCH" ] || grep -q "install.*torch==" "$LOG" 2>/dev/null; then
    case "$2" in *version*) echo "${HAVE_TORCH:-2.13.0+cpu} (CPU build)";; esac
    exit 0
  fi
  exit 1
fi
echo "$*" >> "$LOG"
"""


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run(tmp_path, gpu: str | None, have_torch: str = ""):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _exe(bin_dir / "python", FAKE_PYTHON)
    # a GPU machine lists its GPU; elsewhere nvidia-smi (if any) fails, as without a driver
    _exe(bin_dir / "nvidia-smi", f"#!/bin/sh\necho '{gpu}'\n" if gpu else "#!/bin/sh\nexit 9\n")
    log = tmp_path / "pip.log"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PYTHON": str(bin_dir / "python"),
        "LOG": str(log),
        "HAVE_TORCH": have_torch,
        "HOME": os.environ.get("HOME", "/tmp"),
    }
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install.sh"), "--dev"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return res.stderr, log.read_text().splitlines()


def test_no_gpu_installs_the_cpu_build_from_the_cpu_index(tmp_path):
    said, pip = _run(tmp_path, gpu=None)
    assert "no NVIDIA GPU" in said and "CPU build" in said
    torch_lines = [line for line in pip if "torch==" in line]
    assert CPU_INDEX in torch_lines[0] and "--no-deps" in torch_lines[0]
    assert pip[-1] == "-m pip install -q -e .[dev]"


def test_a_gpu_gets_the_cuda_build(tmp_path):
    said, pip = _run(tmp_path, gpu="NVIDIA H100 80GB HBM3")
    assert "NVIDIA GPU found (NVIDIA H100 80GB HBM3)" in said and "CUDA build" in said
    torch_lines = [line for line in pip if "torch==" in line]
    assert len(torch_lines) == 1 and CPU_INDEX not in torch_lines[0]


@pytest.mark.parametrize("gpu", [None, "NVIDIA A10"])
def test_an_installed_torch_is_kept(tmp_path, gpu):
    said, pip = _run(tmp_path, gpu=gpu, have_torch="2.5.1+cpu")
    assert "keeping the installed torch 2.5.1+cpu" in said
    assert not [line for line in pip if "torch" in line]
    assert ("for the CUDA build" in said) == (gpu is not None)
