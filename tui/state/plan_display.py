"""What the plan editor draws, built from the plan state, the report and the predictions: the ratio
table, the measured counterpart of a what-if metric, and the line about one predicted cell.

No widgets here, so each piece can be checked without an app.
"""

from __future__ import annotations

import math

from rich.text import Text

from mergescope.tui.format import compact, short_names
from mergescope.tui.state.heatdata import Grid, HeatData, WhatIfMetric
from mergescope.tui.state.metrics import METRIC_BY_ID
from mergescope.tui.state.plan_state import PlanState


def table_grid(state: PlanState, param: str, model: int) -> Grid:
    """The per-(row, column) values of `param` for one model; "mix" where a cell's values differ."""
    rows, cols = state.rows(), state.columns()
    values, texts = [], {}
    for r, row in enumerate(rows):
        out = []
        for c, col in enumerate(cols):
            v = state.cell_value(param, row, col, model)
            if v is not None and math.isnan(v):
                texts[(r, c)] = "mix"
                v = None
            out.append(v)
        values.append(out)
    spec = state.spec.param(param)
    return Grid(
        title=f"{param} · {short_names(state.models, 14)[model]}",
        row_labels=[r.label for r in rows],
        col_labels=cols,
        values=values,
        texts=texts,
        note=(spec.help if spec is not None else ""),
    )


def measured_grid(data: HeatData, metric: WhatIfMetric, model: int, chosen: list[int]) -> Grid:
    """The measured counterpart: for a two-model plan, that pair's numbers; else all analysed models."""
    report = data.report
    short = short_names(report.models, 14)
    mid = metric.measured
    pair = chosen if len(chosen) == 2 else None
    if pair and mid == "sign_conflict":
        mid = "sign_conflict_pair"
    if pair and mid == "magnitude_asymmetry":
        mid = "magnitude_ratio"
    measured = METRIC_BY_ID[mid]
    a, b = pair if pair else (model, (model + 1) % max(1, report.n))
    grid = data.grid(measured, "groups", model if measured.subject == "model" else a, b)
    if measured.subject == "model":
        who = f" · {short[model]}"
    elif measured.subject == "pair":
        who = f" · {short[a]}×{short[b]}"
    else:
        who = f" · all {report.n}"
    grid.title = f"measured: {measured.title}{who}"
    return grid


def prediction_line(p, report, whatif, chosen: list[int]) -> Text:
    """One predicted cell: the merge's numbers, each model's part, and the measured conflict with a
    hint when it was measured for other models or at another density than the plan's."""
    t = Text()
    if p is None:
        t.append("no tensors", "dim")
        return t
    short = short_names(report.models, 10)
    t.append("predicted ", "cyan")
    t.append(f"merged rel {compact(p.merged_relative_norm)} · retained {compact(p.retained, True)} · ")
    t.append(
        " ".join(
            f"{short[i]} c={p.coeff[i]:.3g} ({p.share[i]:.0%})"
            for i in range(len(short))
            if p.coeff[i] != 0 or p.share[i] != 0
        )
        or "no model contributes"
    )
    t.append("  measured ", "cyan")
    exact = whatif is not None and whatif.conflict_report is not None
    subset = not exact and len(chosen) != report.n
    if p.conflict_trimmed:
        t.append(
            f"conflict after trim {p.trimmed_sign_conflict:.0%} at d={p.measured_density} "
            f"(untrimmed {p.sign_conflict:.0%})"
        )
    else:
        t.append(f"sign conflict {p.sign_conflict:.0%}")
    if subset:
        t.append(f" over all {report.n} analysed models", "yellow")
    dens = [d for d, cc in zip(p.density, p.coeff) if cc != 0 and not math.isnan(d)]
    other_d = p.conflict_trimmed and dens and any(abs(d - p.measured_density) > 1e-6 for d in dens)
    if other_d:
        t.append(f" (plan density {', '.join(f'{d:g}' for d in sorted(set(round(x, 4) for x in dens)))})", "yellow")
    if (other_d or subset) and len(chosen) >= 2:
        t.append(" — r measures this plan's models" + (" at its density" if other_d else ""), "yellow")
    return t
