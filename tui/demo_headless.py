"""`mergescope demo --headless`: the whole story without a screen.

analyse the bundled family → merge two domain fine-tunes (task arithmetic and TIES) → score the base,
every fine-tune and the merges on held-out text per domain → print the findings and the table.
The merges go into a temporary directory unless --output names one.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

# The merges the demo shows: (label, method, models, per-model params, global params).
# Weights were picked on the held-out table printed by scripts/train_demo_family.py: with 1.0 each the
# summed task vectors overshoot; 0.7 keeps each domain close to its specialist.
DEMO_MERGES = (
    ("ta(code+prose)", "task_arithmetic", ("code", "prose"), {"weight": 0.7}, {}),
    ("ties(code+prose)", "ties", ("code", "prose"), {"weight": 1.0, "density": 0.5}, {}),
    ("ta(code+prose+dialog)", "task_arithmetic", ("code", "prose", "dialog"), {"weight": 0.5}, {}),
)


def demo_plans(family: Path) -> list[tuple[str, "object"]]:
    from analysis.plan import Plan

    plans = []
    for label, method, models, mparams, gparams in DEMO_MERGES:
        d = {"merge_method": method, "base_model": str(family / "base"),
             "models": [{"model": str(family / m), "parameters": dict(mparams)} for m in models],
             "dtype": "float32", "out_dtype": "bfloat16"}
        if gparams:
            d["parameters"] = dict(gparams)
        plans.append((label, Plan.from_dict(d, source=f"demo plan {label}")))
    return plans


def run_headless(output: str | None = None, use_cache: bool = True) -> int:
    from rich.console import Console
    from rich.table import Table

    from analysis.analyze import analyze
    from analysis.evaluate import evaluate_models, load_texts
    from analysis.merge import run_merge

    from .cmd_analyze import print_report
    from .cmd_demo import DEMO_MODELS, family_dir

    con = Console()
    fam = family_dir()
    t0 = time.perf_counter()
    models = [m for m in DEMO_MODELS if (fam / m).exists()]
    report = analyze(str(fam / "base"), [str(fam / m) for m in models], use_cache=use_cache,
                     labels=["base", *models])
    print_report(report, con, quiet=True)
    tmp = None
    if output is None:
        tmp = tempfile.TemporaryDirectory(prefix="mergescope-demo-")
        out_root = Path(tmp.name)
    else:
        out_root = Path(output)
        out_root.mkdir(parents=True, exist_ok=True)
    try:
        merged = {}
        for label, plan in demo_plans(fam):
            dest = out_root / label.replace("(", "_").replace(")", "").replace("+", "_")
            run_merge(plan, dest, force=True)
            merged[label] = dest
        paths = {"base": fam / "base", **{m: fam / m for m in ("code", "prose", "dialog") if (fam / m).exists()},
                 **merged}
        texts = load_texts(fam.parent / "heldout")
        with con.status("scoring held-out text…"):
            table = evaluate_models({k: str(v) for k, v in paths.items()}, texts)
        _print_table(con, table, list(texts))
        con.print(f"[dim]{len(paths)} models × {len(texts)} domains, total {time.perf_counter() - t0:.1f}s"
                  + (f"; merges kept in {out_root}" if tmp is None else "") + "[/dim]")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


def _print_table(con, table: dict, domains: list[str]) -> None:
    from rich.table import Table

    t = Table(title="held-out perplexity per byte (lower is better; best per domain in bold)", title_justify="left",
              header_style="bold")
    t.add_column("model")
    for d in domains:
        t.add_column(d, justify="right")
    best = {d: min(row[d] for row in table.values()) for d in domains}
    for label, row in table.items():
        t.add_row(label, *[f"[bold]{row[d]:.3f}[/bold]" if row[d] == best[d] else f"{row[d]:.3f}" for d in domains])
    con.print(t)
