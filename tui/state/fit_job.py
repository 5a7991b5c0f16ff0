"""Fitting the plan editor's weight table from the app, without widgets: the job (the editor's plan at its
band mode, the held-out texts' selection split, the memory it holds, said before it starts), running
`mergescope fit`'s fit in the app's worker thread (`run`, which only calls back), and the fitted table
as the editor writes it (`tuning.apply_table` loads it).

The fit is the CLI's (mergescope.search.fit): Adam on the first part of each text's selection split,
early stopping on the rest of it, each step clamped into the weight's range, starting at the plan.
The report split (the last quarter of each text) is left for the Evaluate tab.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mergescope.io.progress import ShouldStop
from mergescope.search.fit import DEFAULTS
from mergescope.tui.format import short_names
from mergescope.tui.state.plan_state import PlanState, band_name

DEFAULT_STEPS = DEFAULTS["steps"]  # as `mergescope fit`


def memory_note(plan, device: str) -> str:
    """What a fit or a sensitivity pass of `plan` holds on `device`; InputError when it does not fit."""
    from mergescope.io.errors import InputError
    from mergescope.io.units import fmt_bytes
    from mergescope.search import fit

    weights, acts = fit.memory_needed(plan)
    free = fit.available_bytes(device)
    n = len(plan.input_models())
    note = (
        f"holds {fmt_bytes(weights)} of weights (the base and {n} task vector{'s' if n != 1 else ''}, float32) "
        f"and about {fmt_bytes(acts)} for a step (activations, the merged model and its gradient) on {device}"
    )
    if free is not None and weights + acts > free:
        raise InputError(
            f"the plan needs about {fmt_bytes(weights + acts)} on {device}, {fmt_bytes(free)} available: leave "
            "models out (i), start the app with --device cuda, or use `mergescope fit` on a bigger machine"
        )
    return note + (f"; {fmt_bytes(free)} available" if free is not None else "")


@dataclass
class FitJob:
    param: str  # "weight": the table it fits (tuning.apply_table reads it)
    band_mode: int
    text_paths: tuple[str, ...]
    texts: dict = field(repr=False)  # the selection split {name: Text}
    plan: object = field(repr=False)
    space: object = field(repr=False)  # mergescope.search.tune_space.Space at the editor's band mode
    models: list[int] = field(default_factory=list)  # the space's models as indices into the state's
    what: str = ""
    memory: str = ""
    device: str = "cpu"
    steps: int = DEFAULT_STEPS
    split: str = ""

    @property
    def granularity(self) -> str:
        return "layer" if self.band_mode == 0 else band_name(self.band_mode)

    def table(self, values) -> dict:
        """The fitted cells for `values` (one per dimension, in order): {(group, band): [value per plan model]}."""
        dims = [d for d in self.space.dims if d.param == "weight"]
        table = self.space.tables({d.name: float(v) for d, v in zip(dims, values)})["weight"]
        return {d.key: table[d.key] for d in dims}


def make_job(state: PlanState | None, paths, *, device: str = "cpu", steps: int = DEFAULT_STEPS) -> FitJob:
    """The job for the editor's plan and weight table; InputError (one line) when it cannot run."""
    from mergescope.io.errors import InputError
    from mergescope.score.texts import REPORT_FRACTION, read_texts, split_texts
    from mergescope.search.fit import HELD
    from mergescope.search.tune_space import build_space

    if state is None:
        raise InputError("no analysis yet: open a model set first (o)")
    if not paths:
        raise InputError(
            "no held-out texts to fit on: start the app with --eval-text FILE, or enter texts in the Evaluate "
            "tab (u, then t)"
        )
    if state.custom is not None:
        raise InputError(
            "the plan is hand-written (filters/slices): fit it with `mergescope fit`, or press R for an editable table"
        )
    if "weight" not in state.table_params():
        raise InputError(f"{state.method} has no per-model weight table to fit: pick another method with t")
    plan = state.to_plan()
    from mergescope.merge.linear_form import SUPPORTED

    if plan.merge_method not in SUPPORTED:
        raise InputError(
            f"fit differentiates {', '.join(SUPPORTED)}; for {plan.merge_method}, tune the table instead (O)"
        )
    memory = memory_note(plan, device)
    space = build_space(
        plan, params=["weight"], band_mode=state.band_mode, names=state.names, num_layers=state.n_layers
    )
    texts = split_texts(read_texts(list(paths), what="text"))[0]
    chosen = state.chosen()
    what = (
        f"weight of {' + '.join(short_names([state.models[i] for i in chosen], 14))} · "
        f"bands {band_name(state.band_mode)} · {len(space.dims)} values · objective mean"
    )
    fit_part = (1 - REPORT_FRACTION) * (1 - HELD)
    split = (
        f"fits on the first {fit_part:.0%} of each text, stops early on the next {(1 - REPORT_FRACTION) * HELD:.0%} "
        f"(held-out); the last {REPORT_FRACTION:.0%} is left for the Evaluate tab"
    )
    return FitJob(
        "weight", state.band_mode, tuple(paths), texts, plan, space, chosen, what, memory, device, steps, split
    )


@dataclass
class Best:
    """The best step so far: its held-out loss, per text and reduced, and the values it was measured at."""

    step: int
    held: float
    per_text: dict[str, float]
    values: list[float]


def watched_problem():
    """A fit.Problem that keeps the values and per-text losses of every held-out measurement (one per
    step, at the values the step starts from): the best step so far can then be shown as a table."""
    from mergescope.search.fit import Problem

    class Watched(Problem):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.held_at: list[tuple[list[float], dict[str, float]]] = []

        def losses(self, values, texts=None, should_stop=None):
            out = super().losses(values, texts, should_stop)
            if texts and all(t.startswith("held:") for t in texts):
                per = {t.split(":", 1)[1]: v for t, v in out.items()}
                self.held_at.append(([float(x) for x in values], per))
            return out

    return Watched


def run(
    job: FitJob,
    *,
    should_stop: ShouldStop,
    on_read: Callable[[int, int, str], None] | None = None,
    on_step: Callable[[object, Best | None], None] | None = None,
):
    """Read the plan's tensors and fit: (FitResult, Best at its best step | None). `on_step(step, best so
    far)` after each step. Stopping keeps the best so far (FitResult.stopped)."""
    from mergescope.io.progress import check
    from mergescope.merge.linear_form import LinearForm

    def reading(done, total, label):
        check(should_stop)
        if on_read is not None:
            on_read(done, total, label)

    form = LinearForm.from_plan(job.plan, device=job.device, progress=reading, should_stop=should_stop)
    return fit_with(job, form, should_stop=should_stop, on_step=on_step)


def fit_with(job: FitJob, form, *, should_stop: ShouldStop, on_step=None):
    """The fit of `job` on an already read LinearForm (see `run`)."""
    from mergescope.score.candidate import MEAN
    from mergescope.search.fit import fit

    watched = watched_problem()
    made: list = []
    best: list[Best] = []

    def problem_for(txts):
        made.append(watched(job.plan, job.space, form, txts, granularity="band", device=job.device))
        return made[-1]

    def log(step):
        values, per = made[0].held_at[step.step]
        if not best or step.held < best[-1].held - 1e-6:  # as fit keeps its best
            best.append(Best(step.step, step.held, per, values))
        if on_step is not None:
            on_step(step, best[-1])

    result, problem = fit(
        problem_for,
        job.texts,
        granularity=job.granularity,
        steps=job.steps,
        global_sweep=False,
        should_stop=should_stop,
        log=log,
    )
    final = None
    if problem.held_at and result.best_step < len(problem.held_at):
        values, per = problem.held_at[result.best_step]
        final = Best(result.best_step, float(MEAN.reduce(per)), per, list(result.best))
    return result, final
