"""Benchmark: `mergescope analyze` and `mergescope merge` (task_arithmetic, ties) vs mergekit 0.1.5.

    python tests/benchmarks/bench.py                      # 1B set (generated if missing), 3 runs each
    python tests/benchmarks/bench.py --size 3b --repeat 1
    python tests/benchmarks/bench.py --tasks ties --no-analyze --no-compare
    git archive REV | tar -x -C /tmp/before && python tests/benchmarks/bench.py --baseline /tmp/before
    python tests/benchmarks/bench.py --size 100m --baseline-python OLD_VENV/bin/python --eval   # an installed older version

Every measured command runs in its own child process under `/usr/bin/time -v` (peak RSS = its
"Maximum resident set size"), with a warm page cache (all input files are read once first), and the
runs of the tools are interleaved (mergekit, mergescope, mergekit, ...) so that load from other
processes hits both alike. Reported: the median wall time of N runs (min-max), the median CPU time
(user + sys), the median peak RSS, the ratios against mergekit on the same YAML, and the input read
per second (the four models' weight bytes / wall time). mergekit runs from its own virtualenv
(tests/mergekit_utils.py: `$MERGESCOPE_MERGEKIT_PY` or `.venv-mergekit/`), and is skipped without it.

Plans: base + 3 fine-tunes, weights 0.5/0.3/0.2, `dtype: float32` (both tools compute in float32,
as mergescope always does), `out_dtype: bfloat16`; ties with density 0.2 (`--density`). With
`--compare` (default) the last outputs of both tools are compared like tests/test_mergekit_compat.py:
identical bf16 except (ties) at positions where a task vector's magnitude ties at the trim
threshold, where mergekit's unstable argsort picks arbitrarily.

pytest does not collect this directory (see pyproject's addopts).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from tests.benchmarks.synth import generate  # noqa: E402
from tests.mergekit_utils import mergekit_available, mergekit_cmd  # noqa: E402

WEIGHTS = (0.5, 0.3, 0.2)


def plan_yaml(method: str, paths: list[Path], density: float, dtype: str | None) -> str:
    base, *fts = paths
    lines = [f"merge_method: {method}", f"base_model: {base}", "models:"]
    for p, w in zip(fts, WEIGHTS):
        params = f"weight: {w}" + (f", density: {density}" if method == "ties" else "")
        lines += [f"  - model: {p}", f"    parameters: {{{params}}}"]
    if dtype:
        lines.append(f"dtype: {dtype}")
    lines.append("out_dtype: bfloat16")
    return "\n".join(lines) + "\n"


def warm(paths: list[Path]) -> int:
    """Read every weight file once (page cache); returns their total size."""
    total = 0
    for p in paths:
        for f in sorted(p.glob("*.safetensors")):
            with open(f, "rb", buffering=0) as fh:
                while fh.read(64 << 20):
                    pass
            total += f.stat().st_size
    return total


def timed(cmd: list[str], env: dict | None = None, cwd=None) -> dict:
    """Run under /usr/bin/time -v; wall/user/sys seconds and peak RSS bytes."""
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env, cwd=cwd)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
    err = r.stderr

    def field(label):
        m = re.search(rf"{re.escape(label)}: (.+)", err)
        return m.group(1).strip() if m else None

    wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    parts = [float(x) for x in wall.split(":")]
    secs = 0.0
    for x in parts:
        secs = secs * 60 + x
    return {
        "wall": secs,
        "cpu": float(field("User time (seconds)")) + float(field("System time (seconds)")),
        "rss": int(field("Maximum resident set size (kbytes)")) * 1024,
    }


def fmt_gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def run(args) -> int:
    root = args.data or REPO / "bench_data" / args.size
    paths = generate(Path(root), args.size, 3)
    work = Path(args.work or REPO / "bench_data" / f"_bench_{args.size}")
    work.mkdir(parents=True, exist_ok=True)
    mk_ok, mk_why = mergekit_available()
    if args.no_mergekit:
        mk_ok, mk_why = False, "--no-mergekit"
    if not mk_ok:
        print(f"mergekit: not run ({mk_why})", file=sys.stderr)
    dtype = None if args.dtype == "none" else args.dtype
    env = dict(os.environ)
    if args.threads:
        env["MERGESCOPE_THREADS"] = str(args.threads)
    ms = [sys.executable, "-m", "mergescope.tui.cli"]
    base_ms = ms
    base_env = None
    if args.baseline:  # an older checkout of mergescope, run the same way (e.g. `git archive REV | tar -x -C DIR`)
        base_env = dict(env, PYTHONPATH=str(Path(args.baseline).resolve()))
        base_env.pop("MERGESCOPE_THREADS", None)
    elif args.baseline_python:  # an older mergescope installed in another virtualenv
        base_env = dict(env)
        base_env.pop("MERGESCOPE_THREADS", None)
        base_ms = [str(args.baseline_python), "-m", "mergescope.tui.cli"]
    mk_tasks = args.mergekit_tasks if args.mergekit_tasks is not None else args.tasks

    cases: list[tuple[str, str, list[str], Path | None, dict]] = []  # (task, tool, cmd, output dir, env)
    if not args.no_analyze:
        an = ["analyze", *map(str, paths), "--quiet", "--no-cache", "--density", str(args.density)]
        if base_env is not None:
            cases.append(
                (
                    "analyze",
                    "mergescope-before",
                    [*base_ms, *an, "--json", str(work / "analyze-before.json")],
                    None,
                    base_env,
                )
            )
        cases.append(("analyze", "mergescope", [*ms, *an, "--json", str(work / "analyze.json")], None, env))
    for task in args.tasks:
        cfg = work / f"{task}.yml"
        cfg.write_text(plan_yaml(task, paths, args.density, dtype))
        if mk_ok and task in mk_tasks:
            out = work / f"out-{task}-mergekit"
            cases.append((task, "mergekit", mergekit_cmd(cfg, out), out, env))
        if base_env is not None:
            out = work / f"out-{task}-baseline"
            cases.append((task, "mergescope-before", [*base_ms, "merge", str(cfg), str(out), "--quiet"], out, base_env))
        out = work / f"out-{task}-mergescope"
        cases.append((task, "mergescope", [*ms, "merge", str(cfg), str(out), "--quiet"], out, env))

    if args.eval:  # scoring the base on 16 kB of text (the demo's held-out code, byte-level tokens)
        text = REPO / "analysis" / "demo" / "heldout" / "code.txt"
        if not (paths[0] / "tokenizer.json").is_file():
            shutil.copyfile(
                REPO / "analysis" / "demo" / "family" / "base" / "tokenizer.json", paths[0] / "tokenizer.json"
            )
        ev = ["eval", str(paths[0]), "--text", str(text), "--max-bytes", "16000", "--context", "512"]
        if base_env is not None:
            cases.append(("eval", "mergescope-before", [*base_ms, *ev], None, base_env))
        cases.append(("eval", "mergescope", [*ms, *ev], None, env))

    in_bytes = warm(paths)
    print(
        f"inputs: {len(paths)} models, {fmt_gb(in_bytes)} ({paths[0].parent}); {args.repeat} run(s) each; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    results: dict[tuple[str, str], list[dict]] = {}
    for rep in range(args.repeat):
        for task, tool, cmd, out, cenv in cases:
            if out is not None and out.exists():
                shutil.rmtree(out)
            m = timed(cmd, cenv, cwd=args.baseline if cenv is base_env and base_env is not None else None)
            results.setdefault((task, tool), []).append(m)
            if out is not None and not args.keep and (not args.compare or rep + 1 < args.repeat):
                shutil.rmtree(out, ignore_errors=True)  # disk: a 3B output is 6 GB
            print(
                f"  run {rep + 1}/{args.repeat} {task:16s} {tool:10s} wall {m['wall']:7.1f} s  cpu {m['cpu']:7.1f} s  "
                f"peak RSS {fmt_gb(m['rss'])}",
                file=sys.stderr,
            )

    def med(task, tool, key):
        return statistics.median(r[key] for r in results[(task, tool)])

    rows = []
    header = ("task", "tool", "wall s (min-max)", "cpu s", "peak RSS", "wall vs mk", "RSS vs mk", "input GB/s")
    for task, tool, _, _, _ in cases:
        walls = [r["wall"] for r in results[(task, tool)]]
        w, c, rss = med(task, tool, "wall"), med(task, tool, "cpu"), med(task, tool, "rss")
        ref = (task, "mergekit") in results and tool != "mergekit"
        rows.append(
            (
                task,
                tool,
                f"{w:.1f} ({min(walls):.1f}-{max(walls):.1f})",
                f"{c:.1f}",
                fmt_gb(rss),
                f"{w / med(task, 'mergekit', 'wall'):.3f}x" if ref else "-",
                f"{rss / med(task, 'mergekit', 'rss'):.3f}x" if ref else "-",
                f"{in_bytes / w / 1e9:.2f}",
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(wd) for x, wd in zip(r, widths)) + " |"  # noqa: E731
    print(
        f"\n{args.size} set, {fmt_gb(in_bytes)} of inputs, median of {args.repeat}, "
        f"dtype {dtype or 'native'}, ties density {args.density}"
    )
    print(line(header))
    print("|" + "|".join("-" * (wd + 2) for wd in widths) + "|")
    for r in rows:
        print(line(r))

    if args.compare and mk_ok:
        for task in args.tasks:
            if task in mk_tasks:
                print(f"{task}: mergescope vs mergekit: {compare(task, work, paths, args.density, dtype)}")
    if args.json:
        Path(args.json).write_text(json.dumps({f"{t}/{tool}": v for (t, tool), v in results.items()}, indent=1))
    if not args.keep:
        for _, _, _, out, _ in cases:
            if out is not None and out.exists():
                shutil.rmtree(out)
    return 0


def compare(task: str, work: Path, paths: list[Path], density: float, dtype: str | None) -> str:
    """Tensor by tensor (memory: a few tensors); for ties, magnitude ties at the trim cut are excused."""
    import torch

    from mergescope.io.checkpoint import open_checkpoint
    from tests.mergekit_utils import compare_states

    a = open_checkpoint(work / f"out-{task}-mergekit")
    b = open_checkpoint(work / f"out-{task}-mergescope")
    ins = [open_checkpoint(p) for p in paths]
    compute = torch.float32 if dtype else torch.bfloat16
    tot = None
    for name in a.names():
        ref, ours = {name: a.get(name)}, {name: b.get(name)}
        allowed = None
        if task == "ties":
            base = ins[0].get(name).reshape(-1).to(compute)
            mask = torch.zeros(base.numel(), dtype=torch.bool)
            for ck in ins[1:]:
                d = (ck.get(name).reshape(-1).to(compute) - base).abs().float()
                n = d.numel()
                k = max(1, int(density * n))
                if k < n:
                    v = torch.kthvalue(d, n - k + 1).values  # k-th largest
                    if int(torch.count_nonzero(d >= v)) > k:  # the cut falls inside a run of equal values
                        mask |= d == v
            allowed = {name: mask}
        c = compare_states(ref, ours, allowed)
        if tot is None:
            tot = c
        else:
            for f in ("n", "n_diff", "n_excused", "n_allowed", "n_diff_unexcused", "n_over_1ulp"):
                setattr(tot, f, getattr(tot, f) + getattr(c, f))
            tot.max_ulp = max(tot.max_ulp, c.max_ulp)
            tot.max_ulp_unexcused = max(tot.max_ulp_unexcused, c.max_ulp_unexcused)
            tot.max_rel = max(tot.max_rel, c.max_rel)
            tot.missing += c.missing
            tot.dtype_mismatch += c.dtype_mismatch
    if set(a.names()) != set(b.names()):
        return f"different tensor names: {sorted(set(a.names()) ^ set(b.names()))[:5]}"
    ok = tot.max_ulp_unexcused <= 1 and tot.frac_unexcused <= 0.001 and not tot.dtype_mismatch
    return ("OK " if ok else "MISMATCH ") + tot.summary()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1b", choices=["tiny", "100m", "1b", "3b"])
    ap.add_argument("--data", type=Path, help="checkpoint set directory (default bench_data/SIZE)")
    ap.add_argument("--work", type=Path, help="plans and outputs (default bench_data/_bench_SIZE)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--tasks",
        type=lambda s: [x for x in s.split(",") if x],
        default=["task_arithmetic", "ties"],
        help="merges to time ('' for none)",
    )
    ap.add_argument("--density", type=float, default=0.2)
    ap.add_argument("--dtype", default="float32", help="plan dtype (float32, bfloat16, or none)")
    ap.add_argument("--threads", type=int, help="MERGESCOPE_THREADS for our merges")
    ap.add_argument("--no-mergekit", action="store_true")
    ap.add_argument(
        "--mergekit-tasks",
        type=lambda s: [x for x in s.split(",") if x],
        help="run mergekit only for these tasks (default: all of --tasks)",
    )
    ap.add_argument("--baseline", type=Path, help="also time an older mergescope checkout in DIR (analysis and merges)")
    ap.add_argument("--baseline-python", type=Path, help="also time the mergescope installed for this Python")
    ap.add_argument("--eval", action="store_true", help="also time `mergescope eval` of the base on 16 kB of text")
    ap.add_argument("--no-analyze", action="store_true")
    ap.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--keep", action="store_true", help="keep the outputs")
    ap.add_argument("--json", help="write every run's numbers here")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
