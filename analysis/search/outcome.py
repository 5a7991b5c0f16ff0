"""A search's final numbers, on the report split: the candidate it chose against a reference (the
starting plan, the best single ingredient), every candidate scored on text the search did not choose on,
with the paired interval of the objective's difference. Within noise is said as such, never as a gain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mergescope.score.candidate import Objective, Scorer, score_plan
from mergescope.score.result import Score
from mergescope.score.stats import Interval, reduced, reduced_diff, verdict

Row = Mapping[str, Score]


def split_label(scorer: Scorer, report_given: bool, fraction: float) -> str:
    """How the report split was made, as every table says it."""
    if scorer.command and "{text}" not in scorer.command:
        return "selection (the command reads no text: the same numbers chose)"
    if scorer.tasks is not None:
        return f"report ({fraction:.0%} of each task's samples, not used to choose)"
    if report_given:
        return "report (--report-text)"
    return f"report (last {fraction:.0%} of each text, not used to choose)"


@dataclass
class Outcome:
    split: str
    chosen: str
    reference: str
    rows: dict[str, Row] = field(default_factory=dict)  # label -> {text: Score}, on the report split
    objective: Objective = field(default_factory=Objective)
    diff: Interval | None = None  # objective(chosen) − objective(reference), paired
    verdict: str = "no interval"  # better | worse | within noise | no interval | same candidate

    def value(self, label: str) -> float:
        return self.objective.value(self.rows[label])

    def interval(self, label: str) -> Interval | None:
        row = self.rows[label]
        return reduced(row, self.objective.reducer(row))

    def summary(self) -> str:
        """One line: the verdict, with the numbers."""
        if self.verdict == "same candidate":
            return f"the search kept {self.reference}: nothing beat it"
        d = self.diff
        if d is None:
            return f"{self.chosen} {self.value(self.chosen):.4f} vs {self.reference} {self.value(self.reference):.4f} (no interval)"
        span = f"{d.value:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]"
        if self.verdict == "better":
            return f"{self.chosen} beats {self.reference} beyond noise: {span}"
        if self.verdict == "worse":
            return f"{self.chosen} is worse than {self.reference} on the report split: {span}; keep {self.reference}"
        return f"{self.chosen} is not better than {self.reference} beyond noise ({span}): not an improvement"

    def to_dict(self) -> dict:
        return {
            "split": self.split,
            "objective": self.objective.describe(),
            "chosen": self.chosen,
            "reference": self.reference,
            "scores": {
                lab: {
                    "objective": self.value(lab),
                    "interval95": (iv.to_dict() if (iv := self.interval(lab)) else None),
                    **{t: s.to_dict() for t, s in row.items()},
                }
                for lab, row in self.rows.items()
            },
            "difference": self.diff.to_dict() if self.diff else None,
            "verdict": self.verdict,
        }


def outcome(
    candidates: Mapping[str, object],
    chosen: str,
    reference: str,
    scorer: Scorer,
    objective: Objective,
    split: str,
) -> Outcome:
    """Score every candidate (label -> Plan, or a model path) with `scorer` (the report split) and compare
    `chosen` with `reference`. The same plan under two labels is scored once."""
    return outcomes(candidates, chosen, [reference], scorer, objective, split)[0]


def outcomes(
    candidates: Mapping[str, object],
    chosen: str,
    references: list[str],
    scorer: Scorer,
    objective: Objective,
    split: str,
) -> list[Outcome]:
    """`chosen` against each reference, every candidate scored once."""
    rows: dict[str, Row] = {}
    seen: dict[str, Row] = {}
    for label, cand in candidates.items():
        key = cand.to_yaml() if hasattr(cand, "to_yaml") else f"model:{cand}"
        if key not in seen:
            seen[key] = score_plan(cand, scorer, label=label) if hasattr(cand, "to_yaml") else scorer.model(cand)
        rows[label] = seen[key]
    out = []
    for reference in references:
        o = Outcome(split, chosen, reference, rows, objective)
        if rows[chosen] is rows[reference]:
            o.verdict = "same candidate"
        else:
            hib = bool(next(iter(rows[chosen].values())).higher_is_better)
            o.diff = reduced_diff(rows[chosen], rows[reference], objective.reducer(rows[chosen]))
            o.verdict = verdict(o.diff, hib)
        out.append(o)
    return out
