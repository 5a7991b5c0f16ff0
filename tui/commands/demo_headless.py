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


def merge_and_score(out_root: Path, progress=None) -> dict:
    """Run the demo merges into `out_root` and score base, fine-tunes and merges on held-out text:
    {label: {domain: Score}}."""
    from mergescope.demo import family_dir, heldout_dir
    from mergescope.merge.run import run_merge
    from mergescope.score.candidate import Scorer
    from mergescope.score.texts import load_texts

    fam = family_dir()
    merged = {}
    for (label, plan), folder in zip(demo_plans(fam), merge_folders()):
        dest = out_root / folder
        run_merge(plan, dest, force=True)
        merged[label] = dest
    paths = {"base": fam / "base", **{m: fam / m for m in ("code", "prose", "dialog")}, **merged}
    scores = Scorer(load_texts(heldout_dir()), progress=progress).models([str(v) for v in paths.values()])
    return {k: scores[str(v)] for k, v in paths.items()}


def soup_and_sweep(con) -> tuple[object, object]:
    """The greedy soup of the code fine-tunes on held-out code, and the weight sweep of the first merge;
    each chooses on the first three quarters of its texts and is reported on the last quarter."""
    from mergescope import demo
    from mergescope.score.candidate import MEAN, Scorer
    from mergescope.score.texts import load_texts, part
    from mergescope.search.outcome import outcome, split_label
    from mergescope.search.soup import greedy_soup
    from mergescope.search.sweep import parse_values, sweep, with_value
    from mergescope.tui.commands.scoring import print_outcome
    from mergescope.tui.commands.sweep import print_sweep
    from mergescope.tui.plots import draw_sweep, text_figure

    fam, held = demo.family_dir(), demo.heldout_dir()
    texts = load_texts(held)
    split = split_label(Scorer({}), False, 0.25)
    soup = None
    ingredients = [str(fam / m) for m in getattr(demo, "SOUP_MODELS", ()) if (fam / m).exists()]
    if len(ingredients) >= 2:
        sel, rep = Scorer({"code": texts["code"]}).split()  # all of the code: the ingredients are close
        with con.status("greedy soup of the code fine-tunes…"):
            soup = greedy_soup(ingredients, sel.plan, sel.model, dtype="float32")
            first = soup.steps[0].model
            chosen, ref = f"greedy soup of {len(soup.kept)}", f"best single ({Path(first).name})"
            cands = {chosen: soup.plan if len(soup.kept) > 1 else first, ref: first}
            soup_out = outcome(cands, chosen, ref, rep, MEAN, split)
        con.print("[bold]greedy soup[/bold] of the code fine-tunes (bits per byte on held-out code, selection split):")
        for st in soup.steps:
            g = f"; change {st.gain.value:+.4f} [{st.gain.lo:+.4f}, {st.gain.hi:+.4f}] {st.noise}" if st.gain else ""
            con.print(
                f"  {st.action:>8} {Path(st.model).name}: alone {st.own['code'].value:.4f}, "
                f"soup {st.soup['code'].value:.4f}{g}",
                highlight=False,
            )
        print_outcome(con, soup_out)
        soup.outcome = soup_out
    label, param, values = SWEEP
    plan = dict(demo_plans(fam))["TA code+prose ×0.7"]
    two = {d: part(texts[d], 0, EXTRA_BYTES) for d in ("code", "prose")}
    sel, rep = Scorer(two).split()
    with con.status(f"sweeping the {param} of {label}…"):
        result = sweep(plan, param, parse_values(values), sel.plan)
        v = result.values[result.best()]
        chosen = f"{param} = {v:g}"
        sweep_out = outcome(
            {chosen: with_value(plan, param, v), "weight 0.7": plan}, chosen, "weight 0.7", rep, MEAN, split
        )
    print_sweep(con, result)
    con.print(text_figure(lambda plt: draw_sweep(plt, result), min(con.width, 90), 24), highlight=False, markup=False)
    print_outcome(con, sweep_out)
    result.outcome = sweep_out
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
            rows = merge_and_score(out_root)
    _print_table(con, rows, sorted(next(iter(rows.values()))))
    table = {k: {t: s.value for t, s in row.items()} for k, row in rows.items()}
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


def _print_table(con, rows: dict, domains: list[str]) -> None:
    from rich.table import Table

    from mergescope.score.stats import interval

    con.print(
        "[bold]held-out bits per byte[/bold] (lower is better; ± half of the 95 % interval over the text's "
        "passages; best per domain in bold)"
    )
    t = Table(header_style="bold")
    t.add_column("model")
    for d in domains:
        t.add_column(d, justify="right")
    best = {d: min(row[d].value for row in rows.values()) for d in domains}

    def fmt(s, d: str) -> str:
        iv = interval(s)
        txt = f"{s.value:.3f}" + (f" ± {iv.half:.3f}" if iv else "")
        return f"[bold]{txt}[/bold]" if s.value == best[d] else txt

    for label, row in rows.items():
        t.add_row(label, *[fmt(row[d], d) for d in domains])
    con.print(t)
