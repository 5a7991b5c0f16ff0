"""What the Evaluate tab shows, as Rich renderables: scores with their intervals, the plan against each
input with the passages where it lost, a sweep's points, a soup's steps, and a search's outcome on the
report split. Each table is introduced by the split its numbers come from.

Widths matter: the tab must stay readable at 80 columns, so a table that would not fit in `width`
writes its intervals without spaces, and a long snippet is cut at the edge rather than wrapped.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from mergescope.tui.format import display_names, short_names
from mergescope.tui.state.evaluation import PLAN_ROW, SELECTION, TOP, WHOLE

UNIT = "bits per byte, lower is better"
VERDICT_STYLE = {"better": "green", "worse": "red", "within noise": "yellow"}
PLAN_LABEL = "plan (merged)"


def pm(value: float, iv, compact: bool = False) -> str:
    """2.2406 ± 0.012 (half of the 95 % interval), or the value alone when it has none."""
    if iv is None:
        return f"{value:.4f}"
    return f"{value:.4f}±{iv.half:.3f}" if compact else f"{value:.4f} ± {iv.half:.3f}"


def span(iv, compact: bool = False) -> str:
    """A difference with its interval: +0.0025 [-0.0010, +0.0061]."""
    if iv is None:
        return "n/a"
    sep = "," if compact else ", "
    return f"{iv.value:+.4f} [{iv.lo:+.4f}{sep}{iv.hi:+.4f}]"


def verdict_text(verdict: str) -> Text:
    return Text(verdict, style=VERDICT_STYLE.get(verdict, "dim"))


def split_line(split: str, what: str) -> Text:
    """The line above a table: which split its numbers come from, and what they are."""
    t = Text("on the ", style="dim")
    t.append(split, "bold")
    t.append(f" · {what}", "dim")
    return t


def _table(**kw) -> Table:
    return Table(box=None, header_style="bold", padding=(0, 1), pad_edge=False, **kw)


def fitted(build, width: int | None):
    """build(compact) at full size when it fits in `width` columns, else compact."""
    from rich.console import Console
    from rich.measure import Measurement

    wide = build(False)
    if width is None:
        return wide
    console = Console(width=1000)  # measured unconstrained: a narrower console would clamp it
    return wide if Measurement.get(console, console.options, wide).maximum <= width else build(True)


# ---------------------------------------------------------------------------------------------- scores
def scores_table(scored, base: str | None = None, width: int | None = None) -> Group:
    """Models × texts and their mean, each with its interval; the best of each column in bold."""
    rows = scored.rows
    texts = list(next(iter(rows.values())))
    higher = next(iter(next(iter(rows.values())).values())).higher_is_better
    shown = display_names([r for r in rows if r != PLAN_ROW])
    objective = scored.objective.describe()
    values = {n: [row[n].value for row in rows.values()] for n in texts}
    values[objective] = [scored.objective.value(row) for row in rows.values()]
    best = {n: (max(v) if higher else min(v)) for n, v in values.items()}

    def build(compact: bool) -> Table:
        t = _table()
        t.add_column("model", no_wrap=True)
        for name in values:
            t.add_column(name, justify="right", no_wrap=True)
        for i, ref in enumerate(rows):
            label = PLAN_LABEL if ref == PLAN_ROW else shown[ref]
            if ref == base and label != "base":
                label += " (base)"
            ivs = [scored.cells[ref][n] for n in texts] + [scored.means[ref]]
            cells = [
                Text(pm(values[n][i], iv, compact), style="bold" if values[n][i] == best[n] else "")
                for n, iv in zip(values, ivs)
            ]
            t.add_row(Text(label, style="bold cyan" if ref == PLAN_ROW else ""), *cells)
        return t

    some = next(iter(rows.values()))[texts[0]]
    what = f"{'bits per byte' if some.is_bits else 'score'}, {'higher' if higher else 'lower'} is better"
    return Group(split_line(scored.split, f"{what}; ± half the 95 % interval"), fitted(build, width))


def pairs_section(pairs, width: int | None = None, top: int = TOP) -> Group:
    """Per text, the plan against each input: the paired difference, its verdict and the share of
    passages that regressed; then, per input, the passages where the plan lost most (over all texts)."""
    if not pairs:
        return Group(Text("the plan has no inputs besides the base to compare it with", style="dim"))
    inputs = list(dict.fromkeys(p.parent for p in pairs))
    names = display_names(inputs)
    threshold = pairs[0].threshold

    def build(compact: bool) -> Table:
        t = _table()
        for c in ("text", "input", "plan − input", "verdict", "regressed"):
            t.add_column(c, justify="right" if c in ("plan − input", "regressed") else "left", no_wrap=True)
        for p in pairs:
            share = f"{len(p.regressed)}/{len(p.passages)} ({p.regressed_share:.0%})" if p.passages else "n/a"
            t.add_row(p.text, names[p.parent], span(p.diff, compact), verdict_text(p.verdict), share)
        return t

    parts = [
        Text("The plan against each input", style="bold"),
        split_line(WHOLE, f"plan − input, paired 95 % interval; regressed: worse by > {threshold:g}"),
        fitted(build, width),
    ]
    for parent in inputs:
        lost = [(q, p.text) for p in pairs if p.parent == parent for q in p.worst(top)]
        lost = sorted(lost, key=lambda x: -x[0].bits)[:top]
        head = Text("lost most against ", style="dim")
        head.append(names[parent], "bold")
        if not lost:
            head.append(": no passage got worse", "dim")
            parts.append(head)
            continue
        head.append(" (bits lost: Δ bits per byte × bytes)", "dim")
        parts.append(head)
        for q, text in lost:
            line = Text(no_wrap=True, overflow="ellipsis")
            line.append(f"  {q.delta:+.3f}", "red")
            line.append(f" × {q.bytes} B  {text} #{q.index}  ", "dim")
            line.append(q.snippet)
            parts.append(line)
    return Group(*parts)


# ---------------------------------------------------------------------------------------------- sweep
def sweep_table(result, now: float | None) -> Group:
    """Value × texts with the mean, on the selection split; ✱ and bold mark the best of each column,
    ◂ the plan's value."""
    multi = len(result.texts) > 1
    t = _table()
    t.add_column(result.param, justify="right", no_wrap=True)
    for name in [*result.texts, *(["mean"] if multi else [])]:
        t.add_column(name, justify="right", no_wrap=True)
    best = {n: result.best(n) for n in result.texts}
    best_mean = result.best()
    for i, (v, row) in enumerate(zip(result.values, result.scores)):
        cells = [_marked(row[n].value, best[n] == i) for n in result.texts]
        if multi:
            cells.append(_marked(result.objective.value(row), best_mean == i))
        mark = " ◂" if now is not None and abs(v - now) < 1e-9 else "  "
        t.add_row(Text(f"{v:g}{mark}", style="bold" if best_mean == i else ""), *cells)
    return Group(split_line(SELECTION, f"{UNIT}; ✱ best, ◂ the plan"), t)


def _marked(value: float, best: bool) -> Text:
    return Text(f"{value:.4f} ✱" if best else f"{value:.4f}  ", style="bold" if best else "")


# ---------------------------------------------------------------------------------------------- soup
def soup_steps(steps, width: int | None = None) -> Group:
    """One row per step on the selection split: the ingredient alone, the soup with it, and the change
    of the soup's mean with its paired interval and verdict (a step within noise says so)."""
    names = dict(zip([s.model for s in steps], short_names([s.model for s in steps], 14)))
    styles = {"start": "bold", "added": "green", "rejected": "yellow"}

    def build(compact: bool) -> Table:
        t = _table()
        for c in ("step", "model", "alone", "soup", "change", "verdict"):
            t.add_column(c, justify="right" if c in ("alone", "soup", "change") else "left", no_wrap=True)
        for s in steps:
            first = s.action == "start"
            t.add_row(
                Text(s.action, style=styles[s.action]),
                names[s.model],
                f"{_mean(s.own):.4f}",
                "" if first else f"{_mean(s.soup):.4f}",
                "" if first else span(s.gain, compact),
                "" if first else verdict_text(s.noise),
            )
        return t

    what = "mean bits per byte; change: soup with it − soup before, paired"
    return Group(split_line(SELECTION, what), fitted(build, width))


def _mean(row) -> float:
    return sum(s.value for s in row.values()) / len(row)


# ---------------------------------------------------------------------------------------------- outcome
def outcome_section(reported, width: int | None = None) -> Group:
    """The chosen candidate against the reference on the report split, text by text and by the
    objective (rows, so that many texts stay narrow), then the verdict."""
    out, scored = reported.outcome, reported.report
    obj = out.objective.describe()
    same = out.verdict == "same candidate"
    labels = [out.reference] if same else [out.chosen, out.reference]

    def build(compact: bool) -> Table:
        t = _table()
        t.add_column("text", no_wrap=True)
        for c in [*labels, *([] if same else ["difference"])]:
            t.add_column(c, justify="right", no_wrap=True)
        for name in out.rows[out.reference]:
            cells = [pm(out.rows[k][name].value, scored.cells[k][name], compact) for k in labels]
            t.add_row(name, *cells, *([] if same else [span(reported.diffs.get(name), compact)]))
        cells = [pm(out.value(k), scored.means[k], compact) for k in labels]
        diff = [] if same else [span(out.diff, compact)]
        t.add_row(*(Text(c, style="bold") for c in [obj, *cells, *diff]))
        return t

    what = f"{UNIT}; ± half the 95 % interval"
    return Group(split_line(out.split, what), fitted(build, width), _summary(out))


def _summary(out) -> Text:
    return Text(out.summary(), style=VERDICT_STYLE.get(out.verdict, "yellow"))
