"""Sweeps: one parameter of a plan set to each of a list of values, every variant scored in memory.

The parameter is a method parameter (validated by the registry: weight, density, t, lambda, epsilon,
gamma, ...). A per-model one is set for one model (`model=`) or for every model; a global one at the
top level. Setting a value replaces whatever the plan had there (a gradient or filter list included),
so each point of the sweep is the plan with that one number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mergescope.io.errors import InputError
from mergescope.merge.plan import Plan
from mergescope.score.candidate import MEAN, Objective
from mergescope.score.result import Score


def parse_values(spec: str) -> list[float]:
    """'0.2:1.0:0.1' (start:stop:step, stop included when the steps land on it) or '0.2,0.5,1'."""
    s = str(spec).strip()
    try:
        if ":" in s:
            parts = [float(x) for x in s.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if step == 0 or (stop - start) / step < 0:
                raise InputError(f"--values {spec}: the step {step:g} never reaches {stop:g} from {start:g}")
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            if n > 1000:
                raise InputError(f"--values {spec}: {n} points; use a coarser step (at most 1000)")
            return [round(start + i * step, 10) for i in range(n)]
        vals = [float(x) for x in re.split(r"[,\s]+", s) if x]
    except ValueError:
        raise InputError(f"--values {spec}: write start:stop:step (e.g. 0.2:1.0:0.1) or a list (0.2,0.5,1)") from None
    if not vals:
        raise InputError(f"--values {spec}: no values")
    if any(not math.isfinite(v) for v in vals):
        raise InputError(f"--values {spec}: values must be finite numbers")
    return vals


def with_value(plan: Plan, param: str, value: float, model: str | None = None) -> Plan:
    """A copy of `plan` with `param` = value (for `model` only, when given and per-model)."""
    method = plan.method()
    spec = method.param(param)
    if spec is None:
        names = ", ".join(p.name for p in method.params)
        raise InputError(f"--param {param}: {method.name} has no parameter {param!r}; it takes: {names}")
    if param in method.ignores:
        from mergescope.merge.methods import REGISTRY

        users = [m.name for m in REGISTRY.values() if m.param(param) is not None and param not in m.ignores]
        raise InputError(
            f"--param {param}: {method.name} accepts `{param}` but ignores it (every value gives the same merge); "
            f"sweep another parameter, or use a method that uses it: {', '.join(users)}"
        )
    if spec.kind not in ("float", "int"):
        raise InputError(f"--param {param}: not a number ({spec.kind}); sweep a numeric parameter")
    d = plan.to_dict()
    v = int(value) if spec.kind == "int" else float(value)
    if not spec.per_model:
        if model is not None:
            raise InputError(f"--model {model}: `{param}` is a global parameter of {method.name}, not per model")
        d["parameters"] = {**(d.get("parameters") or {}), param: v}
    else:
        targets = [m for m in plan.input_models() if model is None or m == model]
        if model is not None and not targets:
            raise InputError(f"--model {model}: not one of the plan's models ({', '.join(plan.input_models())})")
        if "models" not in d:
            raise InputError("--param: sweeping a per-model parameter needs a `models:` plan (this one has slices)")
        for entry in d["models"]:
            if entry["model"] in targets:
                entry["parameters"] = {**(entry.get("parameters") or {}), param: v}
    out = Plan.from_dict(d, source=plan.source)
    out.validate(check_paths=False)
    return out


@dataclass
class SweepResult:
    param: str
    model: str | None
    values: list[float]
    scores: list[Mapping[str, Score]]  # per value: {text: Score}, on the selection split
    objective: Objective = MEAN
    outcome: object = None  # its outcome.Outcome on the report split, once a caller computed it

    def best(self, text: str | None = None) -> int:
        """Index of the best value (for one text, or by the objective over texts)."""

        def key(i):
            row = self.scores[i]
            return MEAN.loss({text: row[text]}) if text else self.objective.loss(row)

        return min(range(len(self.values)), key=key)

    @property
    def texts(self) -> list[str]:
        return list(self.scores[0])

    def to_dict(self) -> dict:
        return {
            "param": self.param,
            "model": self.model,
            "points": [
                {"value": v, **{t: s.value for t, s in row.items()}} for v, row in zip(self.values, self.scores)
            ],
            "best": {t: self.values[self.best(t)] for t in self.texts}
            | {self.objective.describe(): self.values[self.best()]},
        }


def sweep(
    plan: Plan,
    param: str,
    values: Sequence[float],
    score_plan: Callable[[Plan], Mapping[str, Score]],
    model: str | None = None,
    log: Callable[[float, Mapping[str, Score]], None] | None = None,
    objective: Objective = MEAN,
) -> SweepResult:
    """Score `plan` at every value; every variant is validated before the first is scored."""
    variants = [with_value(plan, param, v, model) for v in values]
    scores = []
    for v, p in zip(values, variants):
        scores.append(score_plan(p))
        if log:
            log(v, scores[-1])
    return SweepResult(param, model, list(values), scores, objective)
