"""Tuning: Optuna searches the plan editor's table, one value per model × layer band × group for each
tuned parameter; every trial is the plan the editor would write for its table, merged and scored in
memory like a sweep's points.

Why the editor's table: the best trial is an ordinary mergekit plan (filters + gradients) that opens
in the app as the table it was found as (the space: tune_space.py). Pruning: a trial is first scored
on the first quarter of every text and reports that as its intermediate value; one in the worst
quarter of the trials so far at that point stops there (Optuna's PercentilePruner, after 5 trials).
Studies live in Optuna storage (tune_study.py), so a stopped search resumes and several workers
share one. The first trial of a new study is the plan as given (when its values lie in the ranges).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from mergescope.io.errors import InputError
from mergescope.io.extras import install_hint
from mergescope.io.progress import Cancelled, Progress, ShouldStop
from mergescope.score.candidate import MEAN, Objective, score_plan
from mergescope.search.tune_space import Space

PRUNE_FRACTION = 0.25  # the slice of every text a trial is first scored on
PRUNE_MIN_BYTES = 1024


def require_optuna():
    """The optuna module, or the InputError that says how to install it."""
    try:
        import optuna
    except ImportError:
        raise InputError(f"tune needs optuna, which is not installed: {install_hint('tune')}") from None
    return optuna


# ---------------------------------------------------------------------------------------------- trials
@dataclass
class TrialRecord:
    number: int
    state: str  # complete | pruned | fail | running | waiting
    value: float | None
    scores: dict[str, float]
    params: dict[str, float]
    worker: str | None = None
    first_slice: float | None = None  # the intermediate value on the first slice of the texts


@dataclass
class TuneResult:
    study: str
    metric: str  # bits per byte | score (a command's)
    higher_is_better: bool
    n_trials: int  # the study's target
    trials: list[TrialRecord]
    ran: int = 0  # trials this call finished
    stopped: bool = False  # should_stop, Ctrl-C or a cancelled scorer ended it early

    @property
    def done(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.state in ("complete", "pruned")]

    def ranked(self) -> list[TrialRecord]:
        ok = [t for t in self.trials if t.state == "complete" and t.value is not None]
        return sorted(ok, key=lambda t: (-t.value if self.higher_is_better else t.value, t.number))

    @property
    def best(self) -> TrialRecord | None:
        r = self.ranked()
        return r[0] if r else None


def record(t) -> TrialRecord:
    """One Optuna FrozenTrial as a TrialRecord."""
    done = t.state.name == "COMPLETE"
    return TrialRecord(
        t.number,
        t.state.name.lower(),
        t.value if done else None,
        dict(t.user_attrs.get("scores", {})),
        dict(t.params),
        t.user_attrs.get("worker"),
        t.intermediate_values.get(0),
    )


def records(study) -> list[TrialRecord]:
    return sorted((record(t) for t in study.get_trials(deepcopy=False)), key=lambda r: r.number)


def tune(
    space: Space,
    scorer,
    study,
    *,
    n_trials: int,
    objective: Objective | None = None,
    prune: bool = True,
    should_stop: ShouldStop | None = None,
    progress: Progress | None = None,
    log: Callable[[TrialRecord], None] | None = None,
) -> TuneResult:
    """Run trials until the study holds `n_trials` finished (complete or pruned) ones, across every
    worker; `progress(done, n_trials, label)` and `log(record)` after each trial; `should_stop()` (also
    polled inside the merge and the scoring) or Ctrl-C ends it cleanly: the study keeps what finished,
    and a new call continues it. The study comes from tune_study.open_study."""
    optuna = require_optuna()
    from optuna.trial import TrialState

    objective = objective or MEAN
    objective.check(scorer.text_names)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    stop = should_stop or (lambda: False)
    scorer = dataclasses.replace(scorer, should_stop=stop)
    first = scorer.first_slice(PRUNE_FRACTION, PRUNE_MIN_BYTES) if prune else None
    worker = f"{socket.gethostname()}:{os.getpid()}"
    ran = [0]

    def count() -> int:
        return len(study.get_trials(deepcopy=False, states=finished))

    def run_trial(trial) -> float:
        if stop():
            raise Cancelled()
        trial.set_user_attr("worker", worker)
        values = {d.name: trial.suggest_float(d.name, d.low, d.high) for d in space.dims}
        plan = space.plan_for(values)
        plan.validate(check_paths=False)

        def after_first(row) -> None:
            trial.report(objective.value(row), 0)
            if trial.should_prune():
                raise optuna.TrialPruned()

        row = score_plan(plan, scorer, label=f"trial {trial.number}", first=first, after_first=after_first)
        trial.set_user_attr("scores", {t: s.value for t, s in row.items()})
        return objective.value(row)

    def guarded(trial) -> float:
        try:
            return run_trial(trial)
        except BaseException as exc:  # SIGTERM and the like would leave the trial RUNNING forever
            if not isinstance(exc, (Exception, KeyboardInterrupt)):
                study.tell(trial, state=TrialState.FAIL)
            raise

    def after(st, frozen) -> None:
        ran[0] += 1
        rec = record(frozen)
        if log is not None:
            log(rec)
        if progress is not None:
            progress(min(count(), n_trials), n_trials, f"trial {frozen.number} {rec.state}")
        if stop():
            st.stop()

    stopped = False
    remaining = n_trials - count()
    if remaining > 0 and not stop():
        start = space.start_values()
        if start is not None and not study.get_trials(deepcopy=False):
            study.enqueue_trial(start, skip_if_exists=True)
        cap = optuna.study.MaxTrialsCallback(n_trials, states=finished)
        try:
            study.optimize(guarded, n_trials=remaining, callbacks=[after, cap], catch=())
        except (Cancelled, KeyboardInterrupt):
            stopped = True
        stopped = stopped or (stop() and count() < n_trials)
    metric = "score" if scorer.command or scorer.tasks is not None else "bits per byte"
    return TuneResult(study.study_name, metric, scorer.higher_is_better, n_trials, records(study), ran[0], stopped)


def best_yaml(
    result: TuneResult, space: Space, objective: Objective | None = None, report=None, at: str | None = None
) -> str:
    """The best trial's plan as YAML, the search's scores in a comment on top (the selection split's, and
    the report split's verdict when `report`, an outcome.Outcome, is given); `at`: the file it is
    written to (model references resolve from there: Plan.to_yaml)."""
    best = result.best
    if best is None:
        raise InputError("no trial has finished yet: nothing to write; run more trials")
    how = "higher is better" if result.higher_is_better else "lower is better"
    obj = (objective or MEAN).describe()
    per = ", ".join(f"{t} {v:.4f}" for t, v in best.scores.items())
    head = (
        f"# mergescope tune: trial {best.number}, the best of {len(result.done)} in study {result.study}\n"
        f"# selection split: {obj} {result.metric} {best.value:.4f} ({how}); per text: {per}\n"
    )
    if report is not None:
        head += f"# {report.split}: {report.summary()}\n"
    return head + space.plan_for(best.params).to_yaml(at=at)
