"""Cost of `mergescope extract-lora` on the synthetic 1B set (base + ft0, bf16): wall time, CPU time and
peak RSS of the command in its own process under `/usr/bin/time -v`, and the task-vector energy the
rank keeps (from `--json`), per SVD solver.

    python3 tests/benchmarks/bench_extract_lora.py [--size 1b] [--rank 32] [--solvers eigh,svd,lowrank]

The synthetic fine-tunes are base + Gaussian noise: a flat spectrum, the worst case for a LoRA (a low
kept share) and for the randomized solver; the timings are what any 1B model of this shape costs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.benchmarks.synth import generate  # noqa: E402


def _time_v(stderr: str, key: str) -> str:
    m = re.search(rf"{re.escape(key)}: (.+)", stderr)
    return m.group(1).strip() if m else ""


def _seconds(clock: str) -> float:
    parts = [float(x) for x in clock.split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


def run(base: Path, model: Path, out: Path, rank: int, solver: str, threads: int | None = None) -> dict:
    js = out.with_suffix(".json")
    cmd = [sys.executable, "-m", "mergescope.tui.cli", "extract-lora", str(base), str(model), "-o", str(out)]
    cmd += ["--rank", str(rank), "--solver", solver, "--force", "-q", "--json", str(js)]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd="/", env=env)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    data = json.loads(js.read_text())
    cpu = float(_time_v(res.stderr, "User time (seconds)")) + float(_time_v(res.stderr, "System time (seconds)"))
    return {
        "solver": solver,
        "wall": _seconds(_time_v(res.stderr, "Elapsed (wall clock) time (h:mm:ss or m:ss)")),
        "cpu": cpu,
        "rss": int(_time_v(res.stderr, "Maximum resident set size (kbytes)")) * 1024,
        "matrices": len(data["matrices"]),
        "adapter_bytes": data["adapter_bytes"],
        "kept": {g: s["kept_share_lora"] for g, s in data["groups"].items() if s["kept_share_lora"] is not None},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1b")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--solvers", default="eigh", help="comma-separated: eigh,svd,lowrank")
    ap.add_argument(
        "--threads", type=int, default=None, help="OMP_NUM_THREADS for the child (on a loaded machine 1 beats 2)"
    )
    a = ap.parse_args(argv)
    base, ft0 = generate(REPO / "bench_data" / a.size, size=a.size, finetunes=1)[:2]
    work = REPO / "bench_data" / "_extract_lora"
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"{a.size} set, rank {a.rank}, {os.cpu_count()} CPUs, threads {a.threads or 'default'}, "
        f"load average at start {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows = []
    for solver in a.solvers.split(","):
        r = run(base, ft0, work / f"out_{solver}", a.rank, solver, a.threads)
        rows.append(r)
        kept = ", ".join(f"{g} {100 * v:.2f} %" for g, v in r["kept"].items())
        print(
            f"{solver:>8}: wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s, peak RSS {r['rss'] / 1e9:.2f} GB, "
            f"{r['matrices']} matrices, adapter {r['adapter_bytes'] / 1e6:.1f} MB; kept {kept}",
            flush=True,
        )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
