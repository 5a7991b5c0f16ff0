"""Cost of the readiness checks every merge runs (preflight sampling + the finite check of each merged
tensor): the same merge with and without them, interleaved, each in its own process under
`/usr/bin/time -v`.

    python3 tests/benchmarks/bench_checks.py [--size 1b] [--method ties] [--repeat 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.benchmarks.synth import generate  # noqa: E402

CHILD = r"""
import sys, time
import mergescope.merge.executor as ex
if sys.argv[3] == "off":
    from mergescope.merge.preflight import Checks
    ex.run_checks = lambda *a, **k: Checks()
    ex._check_finite = lambda *a, **k: None
t0 = time.perf_counter()
from mergescope.merge.run import run_merge
res = run_merge(sys.argv[1], sys.argv[2], force=True)
print(f"{time.perf_counter() - t0:.3f}")
"""


def run(plan: Path, out: Path, mode: str) -> tuple[float, int]:
    res = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-c", CHILD, str(plan), str(out), mode],
        capture_output=True,
        text=True,
        cwd="/",
    )
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1)) * 1024
    return float(res.stdout.strip().splitlines()[-1]), rss


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1b")
    ap.add_argument("--method", default="ties")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    paths = generate(REPO / "bench_data" / a.size, size=a.size, finetunes=3)
    work = REPO / "bench_data" / "_checks"
    work.mkdir(parents=True, exist_ok=True)
    plan = work / f"{a.method}.yml"
    params = "{weight: 1.0, density: 0.2}" if a.method != "task_arithmetic" else "{weight: 1.0}"
    plan.write_text(
        f"merge_method: {a.method}\nbase_model: {paths[0]}\nmodels:\n"
        + "".join(f"  - model: {p}\n    parameters: {params}\n" for p in paths[1:])
        + "dtype: float32\nout_dtype: bfloat16\n"
    )
    times = {"on": [], "off": []}
    for _ in range(a.repeat):
        for mode in ("off", "on"):
            times[mode].append(run(plan, work / f"out_{mode}", mode))
    for mode in ("off", "on"):
        print(
            f"checks {mode:>3}: wall {statistics.median(t for t, _ in times[mode]):.2f} s, "
            f"peak RSS {statistics.median(r for _, r in times[mode]) / 1e9:.2f} GB"
        )
    on, off = (statistics.median(t for t, _ in times[m]) for m in ("on", "off"))
    print(f"the checks cost {100 * (on - off) / off:+.1f} % of the {a.method} merge")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
