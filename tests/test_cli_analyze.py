"""`mergescope analyze`: exit codes, one-line errors, JSON file (the contract in the README, section JSON)."""

import json
import subprocess
import sys

import pytest
import torch

from mergescope.tui.cli import main
from tests.ckpt_utils import make_family


@pytest.fixture
def family(tmp_path):
    return make_family(tmp_path / "m", dtype=torch.bfloat16, n_models=2)


def test_analyze_writes_json_and_exit_codes(family, tmp_path, capsys):
    base, models = family
    out = tmp_path / "r.json"
    assert main(["analyze", str(base), *map(str, models), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["base"] == str(base) and data["models"] == [str(m) for m in models]
    text = capsys.readouterr().out
    assert "per layer" in text and "L0" in text
    # ft1 moves 2x as far as ft0: no error, so --fail-on error passes
    assert main(["analyze", str(base), *map(str, models), "--fail-on", "error"]) == 0


def test_fail_on_threshold(family, tmp_path):
    base, models = family
    # base vs itself-shaped but unrelated: a different base is an error
    other, _ = make_family(tmp_path / "other", n_models=0)

    # reseed the other base so it differs from ours
    from safetensors.torch import load_file, save_file

    sd = {k: (torch.randn(v.shape) * 1.0).to(v.dtype) for k, v in load_file(str(other / "model.safetensors")).items()}
    save_file(sd, str(other / "model.safetensors"))
    assert main(["analyze", str(base), str(models[0]), str(other), "--fail-on", "error"]) == 1
    assert main(["analyze", str(base), str(models[0]), str(other)]) == 0


@pytest.mark.parametrize(
    "args,needle",
    [
        (["analyze", "/definitely/missing", "/also/missing"], "no such file"),
        (["analyze", "BASEDIR", "BASEDIR", "--density", "1.5"], "--density"),
        (
            ["analyze", "BASEDIR", "BASEDIR", "--device", "cuda"]
            if not torch.cuda.is_available()
            else ["analyze", "/x", "/y"],
            "",
        ),
    ],
)
def test_bad_input_exit_2_one_line(family, args, needle):
    base, _ = family
    args = [str(base) if a == "BASEDIR" else a for a in args]
    res = subprocess.run(
        [sys.executable, "-m", "mergescope.tui.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mergescope analyze: error:") and needle in lines[0]
    assert "Traceback" not in res.stderr


def test_corrupt_header_exit_2(tmp_path, family):
    base, _ = family
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    res = subprocess.run(
        [sys.executable, "-m", "mergescope.tui.cli", "analyze", str(base), str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and str(bad) in res.stderr and "corrupt" in res.stderr
