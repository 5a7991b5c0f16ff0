"""Model soups (Wortsman et al., 2022): the plain weight average, and the greedy soup that keeps an
ingredient only when the held-out score does not get worse.

Greedy: score every ingredient alone, sort best first, start the soup from the best, then try each
next one: the candidate soup (equal weights over the kept ingredients plus it) is scored in memory and
the ingredient stays if the candidate's objective is not worse than the soup's (the seed's rule), by at
least `min_gain` when asked, and only when the paired interval of the gain excludes 0 with
`significant`. Every step records that interval, so a step decided within noise says so. The choices are
made on the selection split; the result is reported on the report split (outcome.py). The soup is an
ordinary plan: `linear` with equal weights over the kept models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mergescope.io.errors import InputError
from mergescope.merge.plan import Plan
from mergescope.score.candidate import MEAN, Objective
from mergescope.score.result import Score
from mergescope.score.stats import Interval, reduced_diff, verdict

Row = Mapping[str, Score]


def soup_plan(models: Sequence[str], dtype: str | None = None, out_dtype: str | None = None) -> Plan:
    """linear, weight 1 each (normalised: the average)."""
    if not models:
        raise InputError("a soup needs at least one model")
    return Plan.from_dict(
        {
            "merge_method": "linear",
            "models": [{"model": str(m), "parameters": {"weight": 1.0}} for m in models],
            **({"dtype": dtype} if dtype else {}),
            **({"out_dtype": out_dtype} if out_dtype else {}),
        }
    )


@dataclass
class SoupStep:
    model: str
    own: Row  # the ingredient alone
    soup: Row  # the candidate soup with it (the ingredient itself for the first step)
    action: str  # "start" | "added" | "rejected"
    kept: list[str] = field(default_factory=list)  # the soup after this step
    gain: Interval | None = None  # objective(candidate) − objective(soup before), paired, selection split
    noise: str = ""  # verdict of the gain: better | worse | within noise | no interval

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "action": self.action,
            "own": {t: s.value for t, s in self.own.items()},
            "soup": {t: s.value for t, s in self.soup.items()},
            "kept": list(self.kept),
            "change": self.gain.to_dict() if self.gain else None,
            "verdict": self.noise or None,
        }


@dataclass
class SoupResult:
    kind: str  # "greedy" | "uniform"
    plan: Plan
    score: Row  # on the selection split (the texts it chose on)
    steps: list[SoupStep]
    objective: Objective = MEAN
    outcome: object = None  # its outcome.Outcome on the report split, once a caller computed it

    @property
    def kept(self) -> list[str]:
        return [m.model for m in self.plan.models]


def uniform_soup(models: Sequence[str], score_plan: Callable[[Plan], Row], **dtypes) -> SoupResult:
    plan = soup_plan(models, **dtypes)
    return SoupResult("uniform", plan, score_plan(plan), [])


def greedy_soup(
    models: Sequence[str],
    score_plan: Callable[[Plan], Row],
    score_model: Callable[[str], Row],
    log: Callable[[SoupStep], None] | None = None,
    *,
    objective: Objective = MEAN,
    min_gain: float = 0.0,
    significant: bool = False,
    **dtypes,
) -> SoupResult:
    """The greedy soup; `log(step)` is called after every step (the CLI prints it)."""
    if len(models) < 2:
        raise InputError(f"a greedy soup needs at least two models, got {len(models)}")
    if min_gain < 0:
        raise InputError(f"--min-gain {min_gain:g}: must be 0 or more (the improvement a step must bring)")
    own = {m: score_model(m) for m in models}
    order = sorted(models, key=lambda m: objective.loss(own[m]))
    kept = [order[0]]
    best = own[order[0]]
    steps = [SoupStep(order[0], own[order[0]], own[order[0]], "start", list(kept))]
    if log:
        log(steps[-1])
    for m in order[1:]:
        candidate = score_plan(soup_plan([*kept, m], **dtypes))
        hib = bool(next(iter(candidate.values())).higher_is_better)
        gain = reduced_diff(candidate, best, objective.reducer(candidate))
        noise = verdict(gain, hib)
        good = objective.loss(candidate) <= objective.loss(best) - min_gain
        if significant:
            good = good and noise == "better"
        if good:
            kept.append(m)
            best = candidate
        steps.append(SoupStep(m, own[m], candidate, "added" if good else "rejected", list(kept), gain, noise))
        if log:
            log(steps[-1])
    return SoupResult("greedy", soup_plan(kept, **dtypes), best, steps, objective)
