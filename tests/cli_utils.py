"""The safety tests' helpers: a tiny byte-level family, `mergescope` run as a child process, the one-line
error it must print, and a snapshot of a folder's bytes (inputs must be byte-identical afterwards)."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from mergescope.merge.plan import Plan
from tests.ckpt_utils import make_finetune, make_llama

TEXT = ("A tiny held-out text for the tiny models; " * 30).encode()


def byte_family(root: Path):
    """(root, base, [3 fine-tunes]): a byte-level 2-layer base (no tokenizer files), its fine-tunes and
    root/text.txt, a held-out text."""
    base = make_llama(root / "base", n_layers=2, hidden=16, vocab=256, seed=0)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (base / f).unlink()
    fts = [make_finetune(base, root / f"ft{i}", scale=0.002 * (i + 1), seed=i + 1) for i in range(3)]
    (root / "text.txt").write_bytes(TEXT)
    return root, base, fts


def snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def cli(*args, cwd=None, env=None, timeout=180):
    """`mergescope ARGS` in a child process: (exit code, stdout, stderr)."""
    run_env = {**os.environ, **(env or {})}
    res = subprocess.run(
        [sys.executable, "-m", "mergescope.tui.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=run_env,
        timeout=timeout,
    )
    return res.returncode, res.stdout, res.stderr


def refused(res, *needles) -> str:
    """The one error line of a refused command (exit 2, no traceback), checked for each needle."""
    rc, out, err = res
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (rc, out, err)
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def write_plan(path: Path, base, models, method="task_arithmetic") -> Path:
    d = {
        "merge_method": method,
        "base_model": str(base),
        "models": [{"model": str(m), "parameters": {"weight": 0.5}} for m in models],
        "dtype": "float32",
    }
    path.write_text(Plan.from_dict(d).to_yaml())
    return path
