"""The Evaluate tab's work, without widgets: the jobs (score the plan against its base and inputs, sweep
the plan editor's cell under the cursor, a greedy soup of the open models), their progress over
candidates, and the results kept per plan.

A score is on the whole texts and says, per text and passage, where the plan lost against each input
(score/compare.py). A sweep and a soup choose on the selection split of every text and report the
chosen candidate against the plan as it is (sweep) or the best single ingredient (soup) on the report
split, as the CLI does. Every interval is computed here, in the worker (a bootstrap each).

`run` executes a job in the app's worker thread and only calls back; the widgets never see it.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from mergescope.score.candidate import MEAN, Objective
from mergescope.score.texts import REPORT_FRACTION
from mergescope.tui.format import short_names
from mergescope.tui.state.plan_state import PlanState, Row

PLAN_ROW = "plan"  # the score table's row for the plan merged in memory
KEPT = 24  # results kept (every kind, plan and text list together)
TOP = 3  # passages listed per input where the plan lost most
WHOLE = "whole texts"
SELECTION = f"selection (first {1 - REPORT_FRACTION:.0%} of each text, used to choose)"


def parse_paths(raw: str) -> list[str]:
    """The texts field: shell words, so that a path with spaces can be quoted."""
    from mergescope.io.errors import InputError

    try:
        return shlex.split(raw)
    except ValueError as exc:
        raise InputError(f"texts: {exc}; quote a path that has spaces") from None


def join_paths(paths) -> str:
    return shlex.join(list(paths))


@dataclass
class SweepTarget:
    """The plan editor's cell a sweep varies: one table parameter of one model at one (row, column)."""

    param: str
    model: int
    row: Row
    col: str

    def label(self, state: PlanState) -> str:
        where = self.row.label if self.col == "all" else f"{self.row.label}·{self.col}"
        return f"{self.param} of {short_names(state.models, 20)[self.model]} at {where}"


def default_values(state: PlanState, param: str) -> str:
    """A sweep range from the parameter's spec: ten steps up to a bounded maximum (density:
    0.1:1:0.1), else from the minimum (or 0) past 1 to where a weight overshoots (0:1.5:0.25)."""
    spec = state.spec.param(param)
    lo = spec.min if spec is not None and spec.min is not None else 0.0
    if spec is not None and spec.max is not None and spec.max > lo:
        step = round((spec.max - lo) / 10, 6)
        return f"{lo + step:g}:{spec.max:g}:{step:g}"
    return f"{lo:g}:1.5:0.25"


def sweep_plans(state: PlanState, target: SweepTarget, values: list[float]) -> list:
    """One plan per value: a copy of the editor's state with the cell set to it, as an edit sets it
    (every value is checked before anything is scored)."""
    from mergescope.io.errors import InputError

    if state.custom is not None:
        raise InputError(
            "the plan is hand-written (filters/slices): sweep it with `mergescope sweep`, or press R in the plan "
            "editor for an editable table"
        )
    if target.param not in state.table_params():
        raise InputError(
            f"{state.method} has no per-model table for {target.param}: pick a parameter with a in the plan editor"
        )
    if not state.keys_of(target.row, target.col):
        raise InputError(
            f"no tensors at {target.row.label}·{target.col}: move the plan editor's cursor to a cell with a value"
        )
    name = short_names(state.models, 40)[target.model]
    if not state.included[target.model]:
        raise InputError(f"{name} is left out of the plan: press i on it in the plan editor to include it")
    plans = []
    for v in values:
        st = copy.deepcopy(state)
        st.set_value(target.param, target.row, target.col, target.model, v)
        plans.append(st.to_plan())
    return plans


def soup_models(report) -> tuple[list[str], list[str]]:
    """(the open fine-tunes a soup can take, why each other one is left out): a model with a
    readiness error (another base, non-finite, other shapes) cannot be averaged in."""
    errors = {f.model: f.code for f in report.findings if f.severity == "error" and f.model}
    names = dict(zip(report.models, short_names(report.models, 40)))
    ok = [m for m in report.models if m not in errors]
    return ok, [f"{names[m]}: {errors[m]}" for m in report.models if m in errors]


@dataclass
class EvalJob:
    kind: str  # "score" | "sweep" | "soup"
    key: str  # what its result is kept for: the plan's YAML (the models, for a soup)
    text_paths: tuple[str, ...]
    texts: dict = field(default_factory=dict, repr=False)  # {name: bytes}
    plan: object = None  # score: the plan; sweep: the plan as it is (the reference)
    base: str | None = None  # score: the base it is compared with
    models: list[str] = field(default_factory=list)  # score: the plan's inputs; soup: the ingredients
    plans: list = field(default_factory=list, repr=False)  # sweep: one plan per value
    values: list[float] = field(default_factory=list)
    param: str = ""  # sweep: the parameter
    model: str | None = None  # sweep: the model whose cell is varied
    now: float | None = None  # sweep: the cell's value in the plan
    what: str = ""  # said above the result: the sweep's cell, the soup's ingredients
    note: str = ""  # e.g. the models a soup leaves out

    def phases(self) -> int:
        """Scoring one model is one phase; a plan is merged, then scored: two."""
        if self.kind == "score":
            return len(self.models) + 3  # the base and each input, then the plan merged and scored
        if self.kind == "sweep":
            return 2 * len(self.plans) + 4  # then the best and the plan on the report split
        return len(self.models) + 2 * (len(self.models) - 1) + 3  # then the soup and the best single


def make_job(kind: str, session, paths: list[str], target: SweepTarget | None = None, values: str = "") -> EvalJob:
    """The job for the session's plan and these texts; InputError (one line) when it cannot run."""
    from mergescope.io.errors import InputError
    from mergescope.score.texts import read_texts, split_texts

    if session.report is None:
        raise InputError("no analysis yet: open a model set first (o)")
    texts = read_texts(paths, what="text")
    common = {"text_paths": tuple(paths), "texts": texts}
    if kind in ("sweep", "soup"):
        split_texts(texts)  # a text too short to split is said now, not by the worker
    if kind == "soup":
        models, left_out = soup_models(session.report)
        if len(models) < 2:
            raise InputError(f"a greedy soup needs two or more compatible fine-tunes; {len(models)} open")
        what = " + ".join(short_names(models, 20))
        note = f"left out: {', '.join(left_out)}" if left_out else ""
        return EvalJob("soup", session.eval_key("soup"), models=models, what=what, note=note, **common)
    plan = session.current_plan()
    key = plan.to_yaml()
    if kind == "score":
        base = session.report.base
        models = list(dict.fromkeys(m for m in plan.input_models() if m != base))
        return EvalJob("score", key, plan=plan, base=base, models=models, **common)
    if kind != "sweep":
        raise ValueError(kind)
    from mergescope.search.sweep import parse_values

    state = session.plan_state
    if target is None:
        raise InputError("no cell to sweep: open the plan editor (e) and put the cursor on a value")
    try:
        vals = parse_values(values)
    except InputError as exc:
        raise InputError(str(exc).replace("--values", "values", 1)) from None
    plans = sweep_plans(state, target, vals)
    now = state.cell_value(target.param, target.row, target.col, target.model)
    return EvalJob(
        "sweep",
        key,
        plan=plan,
        plans=plans,
        values=vals,
        param=target.param,
        model=state.models[target.model],
        now=now,
        what=target.label(state),
        **common,
    )


class Meter:
    """A job's progress over its phases. The core's counter restarts with each phase (a new total, or
    a smaller count), so the bar moves once across the whole job, not once per merge or score."""

    def __init__(self, phases: int, post: Callable[[float, int, str], None]) -> None:
        self.phases, self.post = max(1, phases), post
        self.started = 0
        self.what = ""
        self._last: tuple[int, int] | None = None

    def begin(self, what: str) -> None:
        """The next candidate: its first count starts a phase."""
        self.what, self._last = what, None

    def __call__(self, done: int, total: int, label: str) -> None:
        if self._last is None or total != self._last[1] or done < self._last[0]:
            self.started += 1
        self._last = (done, total)
        overall = min(self.phases, self.started - 1 + (done / total if total else 0.0))
        self.post(overall, self.phases, f"{self.what} · {label}")


@dataclass
class Scored:
    """Scores {label: {text: Score}} on one split, with the 95 % interval of each and of each row's
    objective (None where a score has none)."""

    rows: dict
    split: str
    objective: Objective = MEAN
    cells: dict = field(default_factory=dict)  # label -> {text: Interval | None}
    means: dict = field(default_factory=dict)  # label -> Interval | None

    @classmethod
    def of(cls, rows, split: str, objective: Objective = MEAN) -> Scored:
        from mergescope.score.stats import interval, reduced

        cells = {k: {t: interval(s) for t, s in row.items()} for k, row in rows.items()}
        means = {k: reduced(row, objective.reducer(row)) for k, row in rows.items()}
        return cls(dict(rows), split, objective, cells, means)


@dataclass
class ScoreResult:
    """The plan, its base and inputs on the whole texts, and the plan against each input per text."""

    scored: Scored
    pairs: list  # score.compare.Pair: (text, plan, input) with the paired difference and the passages


@dataclass
class SearchResult:
    """A sweep's or soup's choice, made on the selection split, and its outcome on the report split."""

    search: object  # SweepResult | SoupResult (its .outcome set)
    outcome: object  # search.outcome.Outcome
    report: Scored  # the outcome's rows with their intervals
    diffs: dict = field(default_factory=dict)  # text -> paired Interval of chosen − reference


def reported(search, out) -> SearchResult:
    from mergescope.score.stats import paired

    search.outcome = out
    chosen, ref = out.rows[out.chosen], out.rows[out.reference]
    diffs = {t: paired(chosen[t], ref[t]) for t in chosen if t in ref} if chosen is not ref else {}
    return SearchResult(search, out, Scored.of(out.rows, out.split, out.objective), diffs)


def run(job: EvalJob, *, device: str = "cpu", post=None, should_stop=None, partial=None):
    """Compute the job: a ScoreResult, or a SearchResult for a sweep or a soup. `partial(result so
    far)` is called after each sweep point (a SweepResult) and soup step (the steps); cancelling
    raises Cancelled."""
    from mergescope.score.candidate import Scorer
    from mergescope.search.outcome import outcome, split_label

    meter = Meter(job.phases(), post or (lambda *a: None))
    scorer = Scorer(job.texts, device=device, progress=meter, should_stop=should_stop)
    partial = partial or (lambda _: None)
    if job.kind == "score":
        from mergescope.score.compare import compare

        refs = [job.base, *job.models]
        meter.begin("score base and inputs")
        rows = dict(zip(refs, scorer.models(refs).values()))
        meter.begin("score the plan (in memory)")
        rows = {PLAN_ROW: scorer.plan(job.plan), **rows}
        return ScoreResult(Scored.of(rows, WHOLE), compare(job.texts, rows, [PLAN_ROW], job.models))
    sel, rep = scorer.split()
    split = split_label(scorer, False, REPORT_FRACTION)
    if job.kind == "sweep":
        from mergescope.search.sweep import SweepResult

        scores = []
        for k, (v, plan) in enumerate(zip(job.values, job.plans)):
            meter.begin(f"sweep {k + 1}/{len(job.values)} {job.param}={v:g}")
            scores.append(sel.plan(plan))
            partial(SweepResult(job.param, job.model, job.values[: k + 1], list(scores)))
        result = SweepResult(job.param, job.model, list(job.values), scores)
        i = result.best()
        chosen = f"{job.param} = {result.values[i]:g}"
        reference = "the plan" + (f" ({job.param} = {job.now:g})" if job.now is not None else "")
        meter.begin("report split: the best value and the plan")
        out = outcome({chosen: job.plans[i], reference: job.plan}, chosen, reference, rep, MEAN, split)
        return reported(result, out)
    from mergescope.search.soup import greedy_soup

    names = dict(zip(job.models, short_names(job.models, 20)))
    steps = []

    def alone(model):
        meter.begin(f"soup: {names[model]} alone")
        return sel.model(model)

    def candidate(plan):
        meter.begin(f"soup: + {names.get(plan.models[-1].model, 'candidate')}")
        return sel.plan(plan)

    def log(step):
        steps.append(step)
        partial(list(steps))

    result = greedy_soup(job.models, candidate, alone, log=log)
    first = result.steps[0].model
    chosen, reference = f"greedy soup of {len(result.kept)}", f"best single ({names[first]})"
    meter.begin("report split: the soup and the best single model")
    cands = {chosen: result.plan if len(result.kept) > 1 else first, reference: first}
    return reported(result, outcome(cands, chosen, reference, rep, MEAN, split))


@dataclass
class EvalEntry:
    job: EvalJob
    result: object
    seconds: float


class EvalStore:
    """Results kept per (kind, what they were computed for, texts), so switching tabs shows them again
    without recomputing; once the plan or the texts change, the latest of the kind is shown as stale."""

    def __init__(self, limit: int = KEPT) -> None:
        self.limit = limit
        self._kept: dict[tuple, EvalEntry] = {}
        self._latest: dict[str, EvalEntry] = {}

    def put(self, entry: EvalEntry) -> None:
        j = entry.job
        key = (j.kind, j.key, tuple(j.text_paths))
        self._kept.pop(key, None)
        self._kept[key] = entry
        while len(self._kept) > self.limit:
            self._kept.pop(next(iter(self._kept)))
        self._latest[j.kind] = entry

    def get(self, kind: str, key: str | None, text_paths) -> tuple[EvalEntry | None, bool]:
        """(the result for this plan and these texts, False), else (the latest of the kind, True)."""
        entry = self._kept.get((kind, key, tuple(text_paths)))
        if entry is not None:
            return entry, False
        entry = self._latest.get(kind)
        return entry, entry is not None

    def forget_latest(self) -> None:
        """Another model set: its stale results would describe other models."""
        self._latest.clear()
