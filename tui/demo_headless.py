"""`mergescope demo --headless`: the whole story without a screen.

analyse the bundled family → merge two domain fine-tunes (task arithmetic and TIES) → score the base,
every fine-tune and the merges on held-out text per domain → print the findings and the table.
The merges go into a temporary directory unless --output names one.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

# The merges the demo shows: (label, method, models, per-model params, global params).
# Weights were picked on the held-out table printed by scripts/train_demo_family.py: with 1.0 each the
# summed task vectors overshoot; 0.7 keeps each domain close to its specialist.
DEMO_MERGES = (
    ("TA code+prose ×0.7", "task_arithmetic", ("code", "prose"), {"weight": 0.7}, {}),
    ("TIES code+prose d=0.5", "ties", ("code", "prose"), {"weight": 1.0, "density": 0.5}, {}),
    ("TA code+prose+dialog ×0.5", "task_arithmetic", ("code", "prose", "dialog"), {"weight": 0.5}, {}),
)


def demo_plans(family: Path) -> list[tuple[str, object]]:
    from mergescope.plan import Plan

    plans = []
    for label, method, models, mparams, gparams in DEMO_MERGES:
        d = {
            "merge_method": method,
            "base_model": str(family / "base"),
            "models": [{"model": str(family / m), "parameters": dict(mparams)} for m in models],
            "dtype": "float32",
            "out_dtype": "bfloat16",
        }
        if gparams:
            d["parameters"] = dict(gparams)
        plans.append((label, Plan.from_dict(d, source=f"demo plan {label}")))
    return plans


def merge_and_score(out_root: Path, progress=None) -> dict[str, dict[str, float]]:
    """Run the demo merges into `out_root` and score base, fine-tunes and merges on held-out text."""
    from mergescope.demo import family_dir, heldout_dir
    from mergescope.evaluate import evaluate_models, load_texts
    from mergescope.merge import run_merge

    fam = family_dir()
    merged = {}
    for label, plan in demo_plans(fam):
        dest = out_root / re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")
        run_merge(plan, dest, force=True)
        merged[label] = dest
    paths = {"base": fam / "base", **{m: fam / m for m in ("code", "prose", "dialog")}, **merged}
    texts = load_texts(heldout_dir())
    return evaluate_models({k: str(v) for k, v in paths.items()}, texts, progress)


def cross_domain_verdicts(table: dict[str, dict[str, float]]) -> list[str]:
    """One line per two-model merge: its score on each domain against both specialists."""
    lines = []
    for label, _, models, _, _ in DEMO_MERGES:
        if len(models) != 2:
            continue
        a, b = models
        row = table[label]
        parts = []
        for own, other in ((a, b), (b, a)):
            vs_own = row[own] / table[own][own] - 1
            beats = row[own] < table[other][own]
            parts.append(
                f"{own} {row[own]:.3f} ({vs_own:+.1%} vs the {own} specialist, "
                f"{'beats' if beats else 'loses to'} the {other} specialist's {table[other][own]:.3f})"
            )
        lines.append(f"{label}: " + "; ".join(parts))
    return lines


def run_headless(output: str | None = None, use_cache: bool = True, console=None) -> dict[str, dict[str, float]]:
    """Print the demo's findings, table and verdicts; return the perplexity table."""
    from rich.console import Console

    from mergescope.demo import DEMO_MODELS, family_dir
    from mergescope.readiness import analyze

    from .cmd_analyze import print_report

    con = console or Console()
    fam = family_dir()
    t0 = time.perf_counter()
    models = [m for m in DEMO_MODELS if (fam / m).exists()]
    report = analyze(str(fam / "base"), [str(fam / m) for m in models], use_cache=use_cache, labels=["base", *models])
    print_report(report, con, quiet=True)
    with tempfile.TemporaryDirectory(prefix="mergescope-demo-") as tmp:
        out_root = Path(output) if output else Path(tmp)
        out_root.mkdir(parents=True, exist_ok=True)
        with con.status("merging and scoring held-out text…"):
            table = merge_and_score(out_root)
    _print_table(con, table, sorted(next(iter(table.values()))))
    for line in cross_domain_verdicts(table):
        con.print(line)
    con.print(
        f"[dim]{len(table)} models × {len(next(iter(table.values())))} domains, {time.perf_counter() - t0:.1f}s"
        + (f"; merges kept in {output}" if output else "")
        + "[/dim]"
    )
    return table


def _print_table(con, table: dict, domains: list[str]) -> None:
    from rich.table import Table

    t = Table(
        title="held-out perplexity per byte (lower is better; best per domain in bold)",
        title_justify="left",
        header_style="bold",
    )
    t.add_column("model")
    for d in domains:
        t.add_column(d, justify="right")
    best = {d: min(row[d] for row in table.values()) for d in domains}
    for label, row in table.items():
        t.add_row(label, *[f"[bold]{row[d]:.3f}[/bold]" if row[d] == best[d] else f"{row[d]:.3f}" for d in domains])
    con.print(t)
