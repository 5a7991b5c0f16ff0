"""Cost of `mergescope analyze --spectral` on the synthetic 1B set (base + ft0..ft2, bf16): wall time, CPU
time and peak RSS of the command in its own process under `/usr/bin/time -v`, from an empty cache (the
analysis and the spectral pass) and again (both from the cache). The split between the two passes comes
from the report's `elapsed_s` and `spectral.elapsed_s`.

    python3 tests/benchmarks/bench_spectral.py [--size 1b] [--rank 64] [--finetunes 3] [--threads N]

The synthetic fine-tunes are base + Gaussian noise: a flat spectrum, so rank 64 holds little of each task
vector and the SAR's 95 % rank is always capped at K; the timings are what any model of this shape costs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.benchmarks.bench_extract_lora import _seconds, _time_v  # noqa: E402
from tests.benchmarks.synth import generate  # noqa: E402


def run(paths: list[Path], rank: int, cache: Path, js: Path, threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "mergescope.tui.cli", "analyze", *map(str, paths)]
    cmd += ["--spectral", "--rank", str(rank), "-q", "--json", str(js)]
    env = dict(os.environ, MERGESCOPE_CACHE_DIR=str(cache), **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    load = os.getloadavg()[0]
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd="/", env=env)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    data = json.loads(js.read_text())
    cpu = float(_time_v(res.stderr, "User time (seconds)")) + float(_time_v(res.stderr, "System time (seconds)"))
    return {
        "wall": _seconds(_time_v(res.stderr, "Elapsed (wall clock) time (h:mm:ss or m:ss)")),
        "cpu": cpu,
        "rss": int(_time_v(res.stderr, "Maximum resident set size (kbytes)")) * 1024,
        "load": load,
        "analysis_s": data["elapsed_s"],
        "spectral_s": data["spectral"]["elapsed_s"],
        "spectral": data["spectral"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1b")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--finetunes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the child")
    a = ap.parse_args(argv)
    paths = generate(REPO / "bench_data" / a.size, size=a.size, finetunes=a.finetunes)
    print(
        f"{a.size} set, base + {a.finetunes} fine-tunes, rank {a.rank}, {os.cpu_count()} CPUs, "
        f"threads {a.threads or 'default'}, load average at start {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-spectral-") as tmp:
        cache, js = Path(tmp) / "cache", Path(tmp) / "report.json"
        for label in ("empty cache", "cached"):
            r = run(paths, a.rank, cache, js, a.threads)
            line = f"{label:>11}: wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s, peak RSS {r['rss'] / 1e9:.2f} GB"
            if label == "empty cache":
                s = r["spectral"]
                line += (
                    f" (analysis {r['analysis_s']:.1f} s + spectral {r['spectral_s']:.1f} s, {s['matrices']} matrices; "
                    f"energy@{a.rank} {s['model_summary'][0]['spectral_energy']:.4f}, "
                    f"STI {s['summary']['sti']:.4f}, SAR {s['model_summary'][0]['sar']:.4f})"
                )
            print(f"{line}; load average before {r['load']:.2f}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
