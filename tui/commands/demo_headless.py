"""`mergescope demo --headless`: the whole story without a screen.

analyse the bundled family → merge two domain fine-tunes (task arithmetic and TIES) → score the base,
every fine-tune and the merges on held-out text per domain (bits per byte) → a greedy soup of the
code fine-tunes → a task-arithmetic weight sweep, with its plot. The merges go into a temporary
directory unless --output names one; the soup and the sweep are scored in memory.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# The merges the demo shows: (label, method, models, per-model params, global params).
# Weights were picked on the held-out table printed by scripts/train_demo_family.py: with 1.0 each the
# summed task vectors overshoot; 0.7 keeps each domain close to its specialist.
DEMO_MERGES = (
    ("TA code+prose ×0.7", "task_arithmetic", ("code", "prose"), {"weight": 0.7}, {}),
    ("TIES code+prose d=0.5", "ties", ("code", "prose"), {"weight": 1.0, "density": 0.5}, {}),
    ("TA code+prose+dialog ×0.5", "task_arithmetic", ("code", "prose", "dialog"), {"weight": 0.5}, {}),
)
SWEEP = ("TA code+prose", "weight", "0:1.5:0.25")  # the first merge's weight, from nothing to overshoot
EXTRA_BYTES = 8000  # the sweep scores the first 8 kB of each text: the demo stays short


@dataclass
class DemoRun:
    table: dict[str, dict[str, float]]  # bits per byte, model -> domain
    soup: object = None  # SoupResult
    sweep: object = None  # SweepResult
    lines: list[str] = field(default_factory=list)


def demo_plans(family: Path) -> list[tuple[str, object]]:
    from mergescope.merge.plan import Plan

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


def merge_folders() -> list[str]:
    """The folder each demo merge is written to (under the output folder)."""
    return [re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") for label, *_ in DEMO_MERGES]


def merge_and_score(out_root: Path, progress=None) -> dict[str, dict[str, float]]:
    """Run the demo merges into `out_root` and score base, fine-tunes and merges on held-out text."""
    from mergescope.demo import family_dir, heldout_dir
    from mergescope.merge.run import run_merge
    from mergescope.score.backends import Scorer
    from mergescope.score.evaluate import load_texts

    fam = family_dir()
    merged = {}
    for (label, plan), folder in zip(demo_plans(fam), merge_folders()):
        dest = out_root / folder
        run_merge(plan, dest, force=True)
        merged[label] = dest
    paths = {"base": fam / "base", **{m: fam / m for m in ("code", "prose", "dialog")}, **merged}
    scores = Scorer(load_texts(heldout_dir()), progress=progress).models([str(v) for v in paths.values()])
    return {k: {t: s.value for t, s in scores[str(v)].items()} for k, v in paths.items()}


def soup_and_sweep(con) -> tuple[object, object]:
    """The greedy soup of the code fine-tunes on held-out code, and the weight sweep of the first merge."""
    from mergescope import demo
    from mergescope.score.backends import Scorer
    from mergescope.search.soup import greedy_soup
    from mergescope.search.sweep import parse_values, sweep
    from mergescope.tui.commands.sweep import print_sweep, sweep_plot

    fam, held = demo.family_dir(), demo.heldout_dir()
    texts = {d: (held / f"{d}.txt").read_bytes()[:EXTRA_BYTES] for d in ("code", "prose")}
    soup = None
    ingredients = [str(fam / m) for m in getattr(demo, "SOUP_MODELS", ()) if (fam / m).exists()]
    if len(ingredients) >= 2:
        code = Scorer({"code": (held / "code.txt").read_bytes()})  # all of it: the ingredients are close
        with con.status("greedy soup of the code fine-tunes…"):
            soup = greedy_soup(ingredients, code.plan, code.model, dtype="float32")
        con.print("[bold]greedy soup[/bold] of the code fine-tunes (bits per byte on held-out code):")
        for st in soup.steps:
            con.print(
                f"  {st.action:>8} {Path(st.model).name}: alone {st.own['code'].value:.4f}, "
                f"soup {st.soup['code'].value:.4f}",
                highlight=False,
            )
        best_single = min(s.own["code"].value for s in soup.steps)
        con.print(
            f"  soup of {len(soup.kept)}: {soup.score['code'].value:.4f} vs the best single {best_single:.4f}",
            highlight=False,
        )
    label, param, values = SWEEP
    plan = dict(demo_plans(fam))["TA code+prose ×0.7"]
    with con.status(f"sweeping the {param} of {label}…"):
        result = sweep(plan, param, parse_values(values), Scorer(texts).plan)
    print_sweep(con, result)
    con.print(sweep_plot(result, width=min(con.width, 90), height=14), highlight=False, markup=False)
    return soup, result


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


def run_headless(output: str | None = None, use_cache: bool = True, console=None) -> DemoRun:
    """Print the demo's findings, table, verdicts, soup and sweep; return what was computed."""
    from rich.console import Console

    from mergescope.demo import DEMO_MODELS, family_dir
    from mergescope.stats.readiness import analyze
    from mergescope.tui.commands.analyze import print_report

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
    lines = cross_domain_verdicts(table)
    for line in lines:
        con.print(line)
    soup, sweep = soup_and_sweep(con)
    con.print(
        f"[dim]{len(table)} models × {len(next(iter(table.values())))} domains, {time.perf_counter() - t0:.1f}s"
        + (f"; merges kept in {output}" if output else "")
        + "[/dim]"
    )
    return DemoRun(table, soup, sweep, lines)


def _print_table(con, table: dict, domains: list[str]) -> None:
    from rich.table import Table

    con.print("[bold]held-out bits per byte[/bold] (lower is better; best per domain in bold)")
    t = Table(header_style="bold")
    t.add_column("model")
    for d in domains:
        t.add_column(d, justify="right")
    best = {d: min(row[d] for row in table.values()) for d in domains}
    for label, row in table.items():
        t.add_row(label, *[f"[bold]{row[d]:.3f}[/bold]" if row[d] == best[d] else f"{row[d]:.3f}" for d in domains])
    con.print(t)
