"""What the heatmap shows: a grid of numbers built from a Report, with no widget code.

Rows follow `Report.rows()` (embed, L0..Ln, final norm, head, other). Columns are either module roles
(q_proj … down_proj, norms) or layer groups (attn, mlp, norm), always preceded by an "all" column that
holds the whole row; rows outside the blocks only fill "all". Aggregates are built once per column
mode; switching metric or model only re-evaluates cheap ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mergescope.io.naming import GROUPS
from mergescope.stats.report import Aggregate
from mergescope.tui.state.metrics import Metric
from mergescope.tui.state.scales import DATA, Scale, conflict_scale

ALL = "all"
COLUMN_MODES = ("modules", "groups")
# Reading order of the usual roles; others keep the report's order after these.
ROLE_ORDER = (
    "q_proj",
    "k_proj",
    "v_proj",
    "qkv_proj",
    "o_proj",
    "q_norm",
    "k_norm",
    "gate_proj",
    "up_proj",
    "gate_up_proj",
    "down_proj",
    "router",
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)


def ordered_modules(modules: list[str]) -> list[str]:
    known = [m for m in ROLE_ORDER if m in modules]
    return known + [m for m in modules if m not in ROLE_ORDER]


@dataclass
class Grid:
    """Numbers for one heatmap view: values[r][c] is a float, inf, or None (no tensors there)."""

    title: str
    row_labels: list[str]
    col_labels: list[str]
    values: list[list[float | None]]
    pct: bool = False
    scale: Scale = DATA  # where the colours' ends sit (scales.py)
    note: str = ""
    meta: dict = field(default_factory=dict)
    texts: dict = field(default_factory=dict)  # (r, c) -> text shown instead of the number

    def finite(self) -> list[float]:
        return [v for row in self.values for v in row if v is not None and math.isfinite(v)]

    def bounds(self) -> tuple[float, float]:
        """The colour scale's ends for these values."""
        return self.scale.ends(self.finite())


class HeatData:
    """Aggregates of a report arranged as rows × columns, per column mode (cached)."""

    def __init__(self, report):
        self.report = report
        self.rows = report.rows()
        self._aggs: dict[str | tuple, tuple[list[str], list[list]]] = {}  # mode, or ("spectral", mode)
        self._sites: dict[str, list[list[list]]] = {}
        self._by_row = [self._row_sites(layer, group) for _, layer, group in self.rows]

    def _row_sites(self, layer, group):
        return [s for s in self.report.sites if _in_row(s, layer, group)]

    def columns(self, mode: str) -> list[str]:
        return self.aggregates(mode)[0]

    def aggregates(self, mode: str, spectral: bool = False) -> tuple[list[str], list[list[Aggregate | None]]]:
        """Per column mode: the columns, and one aggregate per (row, column); `spectral`: of the
        spectral pass's sites (SpectralAggregate), bucketed the same way, under the same columns."""
        key = ("spectral", mode) if spectral else mode
        if key in self._aggs:
            return self._aggs[key]
        rep = self.report
        block_sites = [s for s in rep.sites if s.layer is not None]
        if mode == "modules":
            present = {s.module for s in block_sites}
            cols = ordered_modules([m for m in rep.modules() if m in present])
        else:
            present = {s.group for s in block_sites}
            cols = [g for g in GROUPS if g in present]
        if spectral:
            from mergescope.stats.spectral import SpectralAggregate

            sp = rep.spectral
            sites = sp.sites if sp is not None else []
            by_row = [[s for s in sites if _in_row(s, layer, group)] for _, layer, group in self.rows]
            grid, _ = self._bucket(by_row, cols, mode, lambda ss: SpectralAggregate(ss, sp.n))
        else:
            grid, self._sites[mode] = self._bucket(self._by_row, cols, mode, lambda ss: Aggregate(ss, rep.n))
        self._aggs[key] = ([ALL] + cols, grid)
        return self._aggs[key]

    def _bucket(self, by_row, cols, mode, make):
        """(aggregates, sites) per (row, column): the row's sites whole, then per column (block rows only)."""
        col_of = (lambda s: s.module) if mode == "modules" else (lambda s: s.group)  # noqa: E731
        grid, site_grid = [], []
        for (_, layer, _), sites in zip(self.rows, by_row):
            buckets: dict[str, list] = {}
            if layer is not None:
                for s in sites:
                    buckets.setdefault(col_of(s), []).append(s)
            grid.append([make(sites) if sites else None] + [make(buckets[c]) if c in buckets else None for c in cols])
            site_grid.append([list(sites)] + [buckets.get(c, []) for c in cols])
        return grid, site_grid

    def sites(self, mode: str) -> list[list[list]]:
        """The SiteStats behind every cell of `mode`'s grid (empty lists where there are none)."""
        self.aggregates(mode)
        return self._sites[mode]

    def aggregate(self, mode: str, r: int, c: int) -> Aggregate | None:
        grid = self.aggregates(mode)[1]
        if 0 <= r < len(grid) and 0 <= c < len(grid[r]):
            return grid[r][c]
        return None

    def grid(self, metric: Metric, mode: str, i: int = 0, j: int = 1, title: str = "") -> Grid:
        cols, aggs = self.aggregates(mode, spectral=metric.spectral)
        values = []
        for row in aggs:
            out = []
            for agg in row:
                if agg is None:
                    out.append(None)
                    continue
                try:
                    v = float(metric.fn(agg, i, j))
                except (ZeroDivisionError, IndexError, ValueError):
                    v = None
                out.append(v)
            values.append(out)
        return Grid(
            title=title or metric.label,
            row_labels=[r[0] for r in self.rows],
            col_labels=cols,
            values=values,
            pct=metric.pct,
            scale=metric.scale_for(self.report, i, j),
        )


def _in_row(site, layer, group) -> bool:
    """A row is a block (every group of it) or one group outside the blocks."""
    return site.layer == layer and (group is None or site.group == group)


def pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


# ---- what-if ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WhatIfMetric:
    id: str
    label: str
    per_model: bool
    pct: bool
    measured: str  # the measured metric shown beside it
    help: str
    short: str = ""
    scale: Scale = DATA  # the conflict's is centred on what unrelated deltas give (`whatif_grid`)


WHATIF_METRICS: tuple[WhatIfMetric, ...] = (
    WhatIfMetric(
        "retained",
        "retained mass ‖Σcτ‖/Σ‖cτ‖",
        False,
        True,
        "sign_conflict",
        "1 = the weighted task vectors add up; lower = they cancel each other here",
        "retained mass",
        Scale(0.0, 1.0, good="high", low_word="cancel", high_word="add up"),
    ),
    WhatIfMetric(
        "merged_relative_norm",
        "merged task vector ‖Σcτ‖/‖θ₀‖",
        False,
        False,
        "relative_norm",
        "how far the merge moves from the base, relative to the base weights",
        "merged ‖Δ‖/‖θ₀‖",
        Scale(lo=0.0, low_word="the base", high_word="moved far"),
    ),
    WhatIfMetric(
        "share",
        "share of the merge",
        True,
        True,
        "magnitude_asymmetry",
        "‖cᵢτᵢ‖ / Σⱼ‖cⱼτⱼ‖: who dominates this cell",
        "share",
        Scale(0.0, 1.0, low_word="none", high_word="all of it"),
    ),
    WhatIfMetric(
        "coeff",
        "effective coefficient cᵢ",
        True,
        False,
        "relative_norm",
        "weight after the method's normalisation and λ: what multiplies τᵢ",
        "coefficient cᵢ",
    ),
    WhatIfMetric(
        "conflict",
        "sign conflict left by the method",
        False,
        True,
        "sign_conflict",
        "measured: after the TIES trim at the plan's density for magnitude-trimming methods (ties, "
        "breadcrumbs, della), untrimmed otherwise; r re-measures the plan's models at its density",
        "conflict left",
    ),
)
WHATIF_BY_ID = {m.id: m for m in WHATIF_METRICS}


def whatif_predictions(data: HeatData, whatif) -> list[list]:
    """CellPrediction (or None) for every cell of the group-column grid. Pure numbers: run it anywhere."""
    out = []
    for row in data.sites("groups"):
        out.append([whatif.cell(sites) if sites else None for sites in row])
    return out


def whatif_grid(
    data: HeatData, preds: list[list], metric: WhatIfMetric, model: int, title: str = "", measured_models: int = 2
) -> Grid:
    """`measured_models`: how many models the conflict was measured over (its scale's reference)."""

    def value(p):
        if p is None:
            return None
        if metric.id == "retained":
            return None if math.isnan(p.retained) else p.retained
        if metric.id == "merged_relative_norm":
            return p.merged_relative_norm
        if metric.id == "share":
            return float(p.share[model])
        if metric.id == "coeff":
            return float(p.coeff[model])
        return p.conflict

    values = [[value(p) for p in row] for row in preds]
    scale = metric.scale
    if metric.id == "conflict":
        scale = _conflict_left_scale(preds, measured_models)
    return Grid(
        title=title or metric.label,
        row_labels=[r[0] for r in data.rows],
        col_labels=data.columns("groups"),
        values=values,
        pct=metric.pct,
        scale=scale,
    )


def _conflict_left_scale(preds, n: int) -> Scale:
    """Centred on what n unrelated deltas give (trimmed alike when the method trims)."""
    p = next((p for row in preds for p in row if p is not None), None)
    if p is not None and p.conflict_trimmed:
        d = p.measured_density
        return conflict_scale([d] * max(2, n), f"unrelated deltas trimmed to d={d:g}")
    return conflict_scale([1.0] * max(2, n))
