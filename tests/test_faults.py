"""Faults leave no trace: Ctrl-C / SIGTERM in a real child process, a full disk, two merges into one
output; and randomised merges repeat byte for byte across processes."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergescope.io.guard import MARKER
from mergescope.merge.plan import Plan
from mergescope.tui.cli import main
from tests.ckpt_utils import make_finetune, make_llama

SLOW = """
import sys, time
import mergescope.merge.executor as ex
real, delay = ex._compute, float(sys.argv[1])
def slow(*a, **k):
    time.sleep(delay)
    return real(*a, **k)
ex._compute = slow
from mergescope.tui.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    base = make_llama(root / "base", n_layers=3, hidden=16, vocab=32, seed=0)
    fts = [make_finetune(base, root / f"ft{i}", scale=0.002, seed=i + 1) for i in range(2)]
    (root / "slow.py").write_text(SLOW)
    return root, base, fts


def _plan(root, base, fts, weight=0.5, method="task_arithmetic", extra=None, name="p.yml"):
    d = {
        "merge_method": method,
        "base_model": str(base),
        "models": [{"model": str(m), "parameters": {"weight": weight, **(extra or {})}} for m in fts],
    }
    p = root / name
    p.write_text(Plan.from_dict(d).to_yaml())
    return p


def _leftovers(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.")]


def _slow_merge(root, plan, out, delay, *extra):
    cmd = [sys.executable, str(root / "slow.py"), str(delay), "merge", str(plan), str(out), "-q", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_merge_leaves_nothing(fam, tmp_path, sig, code):
    root, base, fts = fam
    out = tmp_path / "out"
    proc = _slow_merge(root, _plan(root, base, fts), out, 0.1)
    deadline = time.time() + 60
    while not any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()):  # the merge is writing
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "nothing was written" in err and "Traceback" not in err
    assert _leftovers(tmp_path, "out") == []


def test_a_full_disk_is_one_line_and_leaves_nothing(fam, tmp_path, monkeypatch, capsys):
    root, base, fts = fam
    import mergescope.merge.output.shards as shards

    calls = {"n": 0}
    real = shards.write_tensor

    def write(fh, t):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fh, t)

    monkeypatch.setattr(shards, "write_tensor", write)
    out = tmp_path / "out"
    assert main(["merge", str(_plan(root, base, fts)), str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk is full" in err[0] and "nothing was written" in err[0]
    assert _leftovers(tmp_path, "out") == []


def test_existing_output_is_untouched_without_force_and_replaced_only_when_complete(fam, tmp_path, capsys):
    root, base, fts = fam
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / MARKER).write_text("")  # an earlier output (a file added to it): --force may replace it
    assert main(["merge", str(_plan(root, base, fts)), str(out), "-q"]) == 2
    assert "--force" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    proc = _slow_merge(root, _plan(root, base, fts), out, 0.1, "--force")
    time.sleep(0.8)
    assert proc.poll() is None and (out / "keep.txt").is_file()  # still the old one while merging
    proc.communicate(timeout=120)
    assert proc.returncode == 0 and not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_two_merges_into_one_output_one_wins_never_mixed(fam, tmp_path):
    root, base, fts = fam
    out = tmp_path / "out"
    plans = [_plan(root, base, fts, w, name=f"w{w}.yml") for w in (0.3, 0.9)]
    procs = [_slow_merge(root, plans[0], out, 0.02), _slow_merge(root, plans[1], out, 0.06)]
    results = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], results
    loser = results[[p.returncode for p in procs].index(2)][1]
    assert len(loser.strip().splitlines()) == 1 and str(out) in loser
    written = load_file(str(out / "model.safetensors"))
    expected = []
    for i, p in enumerate(plans):
        ref = tmp_path / f"ref{i}"
        assert main(["merge", str(p), str(ref), "-q"]) == 0
        expected.append(load_file(str(ref / "model.safetensors")))
    assert any(all(torch.equal(written[k], e[k]) for k in e) for e in expected)  # one whole merge, not a mix
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_dare_with_a_seed_is_byte_identical_across_processes(fam, tmp_path):
    root, base, fts = fam
    plan = _plan(root, base, fts, 1.0, method="dare_ties", extra={"density": 0.5}, name="dare.yml")
    outs = []
    for i in range(2):
        out = tmp_path / f"o{i}"
        res = subprocess.run(
            [sys.executable, "-m", "mergescope.tui.cli", "merge", str(plan), str(out), "--seed", "7", "-q"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        outs.append(out)
    assert (outs[0] / "model.safetensors").read_bytes() == (outs[1] / "model.safetensors").read_bytes()
    assert "- Seed: 7" in (outs[0] / "README.md").read_text()
