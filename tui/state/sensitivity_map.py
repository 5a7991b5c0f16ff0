"""The sensitivity heatmap and the plan editor's first-order prediction, without widgets.

`mergescope.search.sensitivity` gives, per text, d bits per byte / d weight for every model in every
(layer, group) cell of the plan's table at layer granularity. Here that becomes a heatmap metric per
(model, text) on the heatmap's rows (embed, L0…, final norm, head) and the plan's groups, and, for the
table being edited, Σ gradient · (value now − value then) per text: what the editor predicts beside
the change measured by scoring the plan. It is computed on the whole texts, as the Evaluate tab scores
them, so the two changes compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mergescope.tui.format import short_names
from mergescope.tui.state.heatdata import ALL, Grid, HeatData
from mergescope.tui.state.metrics import Metric
from mergescope.tui.state.plan_state import PlanState
from mergescope.tui.state.scales import Scale

SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
MEAN_TEXT = "all texts (mean)"  # the gradient of the mean bits per byte: what a fit with --objective mean follows

SENSITIVITY = Metric(
    "sensitivity",
    "percent_sign",
    "sensitivity ∂ bits/byte / ∂ weight",
    "model",
    None,  # not an aggregate's number: the gradients of a sensitivity pass (`sensitivity_grid`)
    help="how a text's bits per byte moves when the model's weight in this cell rises, at the plan",
    short="sensitivity",
    scale=Scale(
        centre=0.0,
        good="low",
        low_word="more of the model here helps the text",
        high_word="more of it hurts",
        reference="0 = no effect",
    ),
    reading="negative (blue): raising this model's weight here lowers the text's bits per byte, to first "
    "order by gradient × change; positive (red): it raises them. The size says how much a step of the "
    "table moves the score; the plan editor adds it up for its edits",
)


@dataclass
class Cell:
    """One differentiated value: a model's weight at one table key (layer None: outside the blocks)."""

    group: str
    layer: int | None
    model: int  # index into the report's models


@dataclass
class SensitivityMap:
    """A sensitivity pass over the plan as it was (`key`: its YAML) on these texts."""

    key: str
    text_paths: tuple[str, ...]
    result: object  # mergescope.search.sensitivity.Sensitivity
    cells: list[Cell]  # aligned with result.names
    method: str
    chosen: list[int]
    others: dict = field(default_factory=dict)  # the plan's other settings: the prediction holds while they do
    what: str = ""
    scored: dict = field(default_factory=dict)  # text -> the plan's score as the Evaluate tab computes it

    @property
    def texts(self) -> list[str]:
        return list(self.result.grad)

    def text_choices(self) -> list[str]:
        return [*self.texts, MEAN_TEXT] if len(self.texts) > 1 else self.texts

    def gradient(self, text: str) -> list[float]:
        grads = self.result.grad
        if text == MEAN_TEXT:
            return [sum(gs) / len(grads) for gs in zip(*grads.values())]
        return grads[text]

    def at(self, text: str, model: int) -> dict[tuple[int | None, str], float]:
        """{(layer, group): gradient} of one model for one text."""
        grads = self.gradient(text)
        return {(c.layer, c.group): g for c, g in zip(self.cells, grads) if c.model == model}

    def start_at(self, model: int, layer: int | None, group: str) -> float | None:
        for c, v in zip(self.cells, self.result.start):
            if c.model == model and c.layer == layer and c.group == group:
                return v
        return None

    def value(self, text: str) -> float:
        vals = self.result.value
        return sum(vals.values()) / len(vals) if text == MEAN_TEXT else vals[text]


def signature(state: PlanState) -> dict:
    """What a weight edit leaves alone: method, models, globals, the other tables, vocabulary."""
    return {
        "method": state.method,
        "chosen": state.chosen(),
        "globals": dict(state.globals),
        "tables": {p: {k: list(v) for k, v in t.items()} for p, t in state.tables.items() if p != "weight"},
        "vocab": state.tokenizer_source,
        "custom": state.custom is not None,
    }


def compute(
    plan, state: PlanState, report, texts: dict, text_paths, *, device: str = "cpu", progress=None, should_stop=None
) -> SensitivityMap:
    """The sensitivity pass of `plan` (the editor's, at layer granularity) on the whole texts; `state`: the
    editor's state it was built from (a copy: the editor may change meanwhile)."""
    from mergescope.io.progress import check
    from mergescope.merge.whatif import plan_models_to_report
    from mergescope.score.candidate import Scorer
    from mergescope.search.fit import Problem, prepare
    from mergescope.search.sensitivity import sensitivity

    def reading(done, total, label):
        check(should_stop)  # LinearForm reads tensor by tensor: a cancel stops it between two
        if progress is not None:
            progress(done, total, label)

    space, form = prepare(plan, granularity="layer", device=device, progress=reading)
    problem = Problem(plan, space, form, texts, granularity="layer", device=device)
    result = sensitivity(problem, progress=progress, should_stop=should_stop)
    # the measured change starts from the plan scored as the Evaluate tab scores it (merged at the plan's
    # dtype, where the gradients are taken in float32): both ends of it then come from one scorer
    scored = Scorer(texts, device=device, progress=progress, should_stop=should_stop).plan(plan)
    to_report = plan_models_to_report(plan, report)
    dims = [d for d in space.dims if d.param == "weight"]
    cells = [Cell(d.group, d.band[0] if d.band else None, to_report.get(space.models[d.model], -1)) for d in dims]
    short = short_names([state.models[i] for i in state.chosen()], 14)
    return SensitivityMap(
        plan.to_yaml(),
        tuple(text_paths),
        result,
        cells,
        state.method,
        state.chosen(),
        signature(state),
        f"{state.method} of {' + '.join(short)}",
        {t: float(s.value) for t, s in scored.items()},
    )


def cell_gradient(smap: SensitivityMap, text: str, model: int, row: tuple, col: str) -> float | None:
    """The gradient under one heatmap cell: a group's, or for a block's "all" the sum of its groups'
    (raising the model's weight in the whole layer)."""
    _, layer, group = row
    per = smap.at(text, model)
    if layer is None:
        return per.get((None, group)) if col == ALL else None
    if col != ALL:
        return per.get((layer, col))
    present = [g for (lay, _), g in per.items() if lay == layer]
    return sum(present) if present else None


def sensitivity_grid(data: HeatData, smap: SensitivityMap, model: int, text: str, title: str = "") -> Grid:
    """Rows as the heatmap's, columns the plan's groups; numbers in units of 10^k (k a multiple of 3) so
    the largest has at most three digits before the point."""
    cols = data.columns("groups")
    values = [[cell_gradient(smap, text, model, row, c) for c in cols] for row in data.rows]
    top = max((abs(v) for r in values for v in r if v is not None), default=0.0)
    power = 3 * math.floor(math.log10(top) / 3) if top > 0 else 0
    if power:
        values = [[None if v is None else v / 10**power for v in r] for r in values]
    grid = Grid(
        title=title or SENSITIVITY.label,
        row_labels=[r[0] for r in data.rows],
        col_labels=cols,
        values=values,
        scale=SENSITIVITY.scale,
    )
    grid.meta["power"] = power
    if power:
        grid.note = f"numbers × 10{str(power).translate(SUPERSCRIPT)}"
    if model not in smap.chosen:
        grid.note = "not in the plan: include it (i in the plan editor), then % computes its sensitivity"
    return grid


# ---- the plan editor's prediction ---------------------------------------------------------------------
def applies(smap: SensitivityMap | None, state: PlanState | None) -> str | None:
    """Why the prediction does not hold for the state's plan (None: it does)."""
    if smap is None or state is None:
        return "no sensitivity yet"
    if state.custom is not None:
        return "the plan is hand-written (filters/slices)"
    if signature(state) != smap.others:
        return "the plan changed beyond its weights since the sensitivity (method, models or another parameter)"
    return None


def predicted(smap: SensitivityMap, state: PlanState) -> dict[str, float]:
    """First-order Δ bits per byte per text for the state's weight table against the one differentiated."""
    values = {}
    for name, c in zip(smap.result.names, smap.cells):
        values[name] = state.value_at("weight", c.layer, c.group, c.model) if c.model >= 0 else None
    return smap.result.predicted({k: v for k, v in values.items() if v is not None})


def measured(smap: SensitivityMap, scores: dict | None) -> dict[str, float]:
    """Measured Δ per text: the plan's scores now (a score of the Evaluate tab) minus the differentiated
    plan's, scored alike."""
    if not scores:
        return {}
    return {t: float(scores[t].value) - smap.scored[t] for t in smap.texts if t in scores and t in smap.scored}


def prediction_text(
    smap: SensitivityMap | None, state: PlanState | None, scores: dict | None, score_hint: str, compact: bool = False
):
    """The editor's line: per text, the predicted Δ and, once the plan is scored, the measured one."""
    from rich.text import Text

    t = Text()
    if smap is None:
        return t
    t.append("Δ bits/byte  " if compact else "Δ bits/byte since the sensitivity (%)  ", "bold")
    why = applies(smap, state)
    if why is not None:
        t.append(f"{why}: % in the heatmap recomputes it", "yellow")
        return t
    pred, meas = predicted(smap, state), measured(smap, scores)
    t.append("predicted ", "cyan")
    _per_text(t, pred)
    t.append("  measured ", "cyan")
    if meas:
        _per_text(t, meas)
    else:
        t.append(score_hint, "dim")
    if not compact:
        t.append("  (predicted: Σ gradient × Δweight, first order)", "dim")
    return t


def _per_text(t, values: dict[str, float]) -> None:
    for k, (text, v) in enumerate(values.items()):
        t.append(" · " if k else "", "dim")
        t.append(f"{text} ")
        t.append(f"{v:+.4f}", "green" if v < 0 else ("red" if v > 0 else ""))


def text_order(smap: SensitivityMap | None, current: str | None, step: int) -> str | None:
    """The next text of the map after `current` (wrapping), the mean last."""
    if smap is None:
        return None
    choices = smap.text_choices()
    if current not in choices:
        return choices[0]
    return choices[(choices.index(current) + step) % len(choices)]
