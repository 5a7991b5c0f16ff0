"""Model soups (Wortsman et al., 2022): the plain weight average, and the greedy soup that keeps an
ingredient only when the held-out score does not get worse.

Greedy: score every ingredient alone, sort best first, start the soup from the best, then try each
next one: the candidate soup (equal weights over the kept ingredients plus it) is scored in memory and
the ingredient stays if the candidate's score is not worse than the soup's. With several texts the
objective is their mean. Every step is recorded (and printed by the CLI, kept in the model card).
The result is an ordinary plan: `linear` with equal weights over the kept models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mergescope.io.errors import InputError
from mergescope.merge.plan import Plan
from mergescope.score.evaluate import Score

# score_plan(plan) -> {text: Score}; score_model(path) -> {text: Score}
PlanScorer = Callable[[Plan], Mapping[str, Score]]


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


def objective(row: Mapping[str, Score]) -> float:
    """The mean over texts, oriented so that lower is better."""
    vals = [s.value for s in row.values()]
    m = sum(vals) / len(vals)
    return -m if next(iter(row.values())).higher_is_better else m


@dataclass
class SoupStep:
    model: str
    own: Mapping[str, Score]  # the ingredient alone
    soup: Mapping[str, Score]  # the candidate soup with it (the ingredient itself for the first step)
    action: str  # "start" | "added" | "rejected"
    kept: list[str] = field(default_factory=list)  # the soup after this step

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "action": self.action,
            "own": {t: s.value for t, s in self.own.items()},
            "soup": {t: s.value for t, s in self.soup.items()},
            "kept": list(self.kept),
        }


@dataclass
class SoupResult:
    kind: str  # "greedy" | "uniform"
    plan: Plan
    score: Mapping[str, Score]
    steps: list[SoupStep]

    @property
    def kept(self) -> list[str]:
        return [m.model for m in self.plan.models]


def uniform_soup(models: Sequence[str], score_plan: PlanScorer, **dtypes) -> SoupResult:
    plan = soup_plan(models, **dtypes)
    return SoupResult("uniform", plan, score_plan(plan), [])


def greedy_soup(
    models: Sequence[str],
    score_plan: PlanScorer,
    score_model: Callable[[str], Mapping[str, Score]],
    log: Callable[[SoupStep], None] | None = None,
    **dtypes,
) -> SoupResult:
    """The greedy soup; `log(step)` is called after every step (the CLI prints it)."""
    if len(models) < 2:
        raise InputError(f"a greedy soup needs at least two models, got {len(models)}")
    own = {m: score_model(m) for m in models}
    order = sorted(models, key=lambda m: objective(own[m]))
    kept = [order[0]]
    best = own[order[0]]
    steps = [SoupStep(order[0], own[order[0]], own[order[0]], "start", list(kept))]
    if log:
        log(steps[-1])
    for m in order[1:]:
        candidate = score_plan(soup_plan([*kept, m], **dtypes))
        if objective(candidate) <= objective(best):
            kept.append(m)
            best = candidate
            steps.append(SoupStep(m, own[m], candidate, "added", list(kept)))
        else:
            steps.append(SoupStep(m, own[m], candidate, "rejected", list(kept)))
        if log:
            log(steps[-1])
    return SoupResult("greedy", soup_plan(kept, **dtypes), best, steps)
