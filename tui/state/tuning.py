"""Tuning the plan editor's table from the app, without widgets: the job (the editor's plan, its band
mode, the parameter being edited as the space, the held-out texts, an in-memory Optuna study), running
it in the app's worker thread (`run`, which only calls back), and writing the best table back into the
editor's state.

The search itself is `mergescope tune`'s (mergescope.search.tune): the same space, trials and pruning; only
the storage differs (in memory: a study from the app is not resumed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mergescope.io.progress import ShouldStop
from mergescope.tui.format import short_names
from mergescope.tui.state.plan_state import PlanState, band_name

DEFAULT_TRIALS = 20


@dataclass
class TuneJob:
    param: str
    band_mode: int
    n_trials: int
    text_paths: tuple[str, ...]
    space: object = field(repr=False)  # mergescope.search.tune_space.Space
    scorer: object = field(repr=False)  # mergescope.score.backends.Scorer
    models: list[int] = field(default_factory=list)  # the space's models as indices into the state's
    what: str = ""

    def best_table(self, params: dict) -> dict:
        """The searched cells of the tuned parameter's table for a trial's values: {(group, band): [value
        per plan model]}."""
        table = self.space.tables(params)[self.param]
        return {d.key: table[d.key] for d in self.space.dims}


def make_job(state: PlanState | None, param: str, paths, *, device: str = "cpu", n_trials: int = DEFAULT_TRIALS):
    """The job for the editor's plan and table; InputError (one line) when it cannot run."""
    from mergescope.io.errors import InputError
    from mergescope.score.candidate import Scorer
    from mergescope.score.texts import read_texts
    from mergescope.search.tune import require_optuna
    from mergescope.search.tune_space import build_space

    if state is None:
        raise InputError("no analysis yet: open a model set first (o)")
    if not paths:
        raise InputError(
            "no held-out texts to score the trials on: start the app with --eval-text FILE, or enter texts in the "
            "Evaluate tab (u, then t)"
        )
    require_optuna()
    if state.custom is not None:
        raise InputError(
            "the plan is hand-written (filters/slices): tune it with `mergescope tune`, or press R for an editable table"
        )
    if param not in state.table_params():
        raise InputError(f"{state.method} has no per-model table for {param}: pick a parameter with a")
    plan = state.to_plan()
    space = build_space(plan, params=[param], band_mode=state.band_mode, names=state.names, num_layers=state.n_layers)
    texts = read_texts(list(paths), what="text")
    scorer = Scorer(texts, device=device)
    chosen = state.chosen()
    what = (
        f"{param} of {' + '.join(short_names([state.models[i] for i in chosen], 14))} · "
        f"bands {band_name(state.band_mode)} · {len(space.dims)} values"
    )
    return TuneJob(param, state.band_mode, n_trials, tuple(paths), space, scorer, chosen, what)


def run(
    job: TuneJob,
    *,
    should_stop: ShouldStop,
    log: Callable | None = None,
    progress: Callable | None = None,
    seed: int | None = None,
):
    """Run the job's trials in an in-memory study: a TuneResult (its `stopped` says whether should_stop
    ended it early; the trials finished so far are kept either way)."""
    import warnings

    from mergescope.score.candidate import Objective
    from mergescope.search.tune import require_optuna, tune
    from mergescope.search.tune_study import open_study, search_of

    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", module="optuna")
    objective = Objective()
    study = open_study(
        optuna.storages.InMemoryStorage(),
        "mergescope-tui",
        search_of(job.space, objective, job.scorer),
        higher_is_better=job.scorer.higher_is_better,
        seed=seed,
        start=job.space.start_values(),
    )
    return tune(
        job.space,
        job.scorer,
        study,
        n_trials=job.n_trials,
        objective=objective,
        should_stop=should_stop,
        progress=progress,
        log=log,
    )


def apply_table(state: PlanState, job: TuneJob, table: dict) -> None:
    """Write a tuned table into the editor's state: every searched cell of the job's parameter, for the
    models the plan merges (the others keep their values)."""
    target = state.table(job.param)
    default = state.default_value(job.param)
    for key in table:
        vals = target.setdefault(key, [default] * len(state.models))
        for k, i in enumerate(job.models):
            vals[i] = round(float(table[key][k]), 6)
    state.custom = None


def state_table(state: PlanState, job: TuneJob) -> dict:
    """The editor's table of the job's parameter as the space writes it (plan models only, searched keys)."""
    keys = {d.key for d in job.space.dims}
    return {
        key: [state.value_at(job.param, key[1][0] if key[1] else None, key[0], i) for i in job.models] for key in keys
    }
