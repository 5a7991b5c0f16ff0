"""The candidate pipeline every search and every evaluation uses: what is scored, how, and the one
reduction of a row of scores ({text: Score}) to a number.

- `Scorer`: what is scored and how: texts with a backend, a user command, or lm-evaluation-harness
  tasks (tasks.py), applied to models or plans; `split()` gives the selection and report scorers of a
  search (texts cut, or each task's samples split).
- `score_plan`: merge a plan in memory (nothing written) and score the result, with a hook after a
  first slice of the texts so that a search can stop a hopeless candidate early.
- `Objective`: mean, worst text, or a weighted mean over named texts (a negative weight asks for that
  text to get worse); `loss` orients it so that lower is better for any kind of score.
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mergescope.io.errors import InputError
from mergescope.io.progress import Progress, ShouldStop
from mergescope.score.model import Model
from mergescope.score.result import Score
from mergescope.score.texts import REPORT_FRACTION, part, split_texts, utf8_cut

if TYPE_CHECKING:
    from mergescope.score.tasks import Tasks

Row = Mapping[str, Score]


# ---------------------------------------------------------------------------------------------- objective
@dataclass(frozen=True)
class Objective:
    """What a row of scores (one per text) is reduced to: `mean`, `max` (the worst text: the largest for
    lower-is-better scores) or `weights` (a weighted mean over named texts, others count 0; a negative
    weight rewards that text getting worse)."""

    kind: str = "mean"
    weights: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, spec: str | None) -> Objective:
        s = (spec or "mean").strip()
        if s in ("mean", "max"):
            return cls(s)
        if s.startswith("weights:"):
            pairs = []
            for item in [x for x in re.split(r"[,\s]+", s[len("weights:") :]) if x]:
                name, _, w = item.partition("=")
                try:
                    pairs.append((name, float(w)))
                except ValueError:
                    pairs = []
                    break
            if pairs and all(math.isfinite(w) for _, w in pairs) and any(w != 0 for _, w in pairs):
                return cls("weights", tuple(pairs))
        raise InputError(
            f"--objective {s}: use mean, max, or weights:TEXT=W,... (e.g. weights:code=2,prose=1; a negative "
            "weight, e.g. dialog=-1, asks for that text to get worse)"
        )

    def check(self, texts: Sequence[str]) -> None:
        unknown = [n for n, _ in self.weights if n not in texts]
        if unknown:
            raise InputError(
                f"--objective: {', '.join(unknown)} is not one of the texts ({', '.join(texts)}); name texts by file stem"
            )

    def reduce(self, values: Mapping, higher_is_better: bool = False):
        """The objective of {text: value}; values may be numpy arrays (one per bootstrap resample)."""
        if self.kind == "weights":
            w = dict(self.weights)
            norm = sum(abs(w.get(t, 0.0)) for t in values)
            if norm == 0:
                raise InputError(f"--objective {self.describe()}: none of its texts was scored")
            return sum(w.get(t, 0.0) * v for t, v in values.items()) / norm
        vals = list(values.values())
        if self.kind == "max":
            import numpy as np

            pick = np.minimum if higher_is_better else np.maximum
            out = vals[0]
            for v in vals[1:]:
                out = pick(out, v)
            return out
        return sum(vals) / len(vals)

    def value(self, row: Row) -> float:
        """The objective in the scores' own unit and direction."""
        hib = _higher(row)
        return float(self.reduce({t: s.value for t, s in row.items()}, hib))

    __call__ = value

    def loss(self, row: Row) -> float:
        """The objective oriented so that lower is better."""
        v = self.value(row)
        return -v if _higher(row) else v

    def reducer(self, row: Row) -> Callable:
        """reduce() bound to the row's direction (what stats.reduced / reduced_diff take)."""
        hib = _higher(row)
        return lambda values: self.reduce(values, hib)

    def describe(self) -> str:
        if self.kind == "weights":
            return "weights:" + ",".join(f"{n}={w:g}" for n, w in self.weights)
        return self.kind


def _higher(row: Row) -> bool:
    return bool(next(iter(row.values())).higher_is_better) if row else False


MEAN = Objective()


# ---------------------------------------------------------------------------------------------- scorer
@dataclass
class Scorer:
    """One way of scoring, applied to models or plans: the texts plus the backend or command, or
    lm-evaluation-harness tasks (`tasks`, from tasks.load_tasks)."""

    texts: Mapping[str, bytes]
    text_paths: Mapping[str, Path] = field(default_factory=dict)
    backend: str = "auto"
    device: str = "cpu"
    context: int | None = None
    stride: int | None = None
    command: str | None = None
    higher_is_better: bool = False
    timeout: float | None = None
    seed: int | None = None
    progress: Progress | None = None
    should_stop: ShouldStop | None = None
    tasks: Tasks | None = None

    def models(self, models: Sequence[Model | str]) -> dict[str, dict[str, Score]]:
        from mergescope.score.backends import command_scores, score_models

        if self.tasks is not None:
            from mergescope.score.tasks import task_scores

            return task_scores(
                models, self.tasks, device=self.device, progress=self.progress, should_stop=self.should_stop
            )
        if self.command:
            return command_scores(
                models,
                self.command,
                texts=self.text_paths,
                higher_is_better=self.higher_is_better,
                progress=self.progress,
                timeout=self.timeout,
            )
        return score_models(
            models,
            self.texts,
            backend=self.backend,
            device=self.device,
            context=self.context,
            stride=self.stride,
            progress=self.progress,
            should_stop=self.should_stop,
        )

    def model(self, ref: Model | str) -> dict[str, Score]:
        return next(iter(self.models([ref]).values()))

    def plan(self, plan, label: str = "plan") -> dict[str, Score]:
        return score_plan(plan, self, label=label)

    @property
    def text_names(self) -> list[str]:
        """The names of the scores a candidate gets: the texts, the tasks, or `score` for a command without
        {text}."""
        if self.tasks is not None:
            return self.tasks.names
        if self.command and "{text}" not in self.command:
            return ["score"]
        return list(self.texts or self.text_paths)

    def with_texts(self, texts: Mapping[str, bytes]) -> Scorer:
        """The same scoring on other texts (a command's {text} gets them as files)."""
        paths = _as_files(texts) if self.command and "{text}" in self.command else {}
        return dataclasses.replace(self, texts=dict(texts), text_paths=paths)

    def split(self, report: Mapping[str, bytes] | None = None, fraction: float = REPORT_FRACTION):
        """(selection, report) scorers: every text cut (its last `fraction` reports), or the texts whole
        for selection and `report` for reporting; tasks: a fixed `fraction` of each task's samples
        reports. A command that reads no text scores one thing for both."""
        if self.tasks is not None:
            if report:
                raise InputError("--report-text: with --task the report split is a share of each task's samples")
            sel, rep = self.tasks.split(fraction)
            return dataclasses.replace(self, tasks=sel), dataclasses.replace(self, tasks=rep)
        if self.command and "{text}" not in self.command:
            return self, self
        sel, rep = split_texts(self.texts, report, fraction)
        return self.with_texts(sel), self.with_texts(rep)

    def first_slice(self, fraction: float, min_bytes: int) -> Scorer | None:
        """The scorer on the first `fraction` of every text (of every task's samples), or None where that
        saves nothing (commands, short texts)."""
        if self.tasks is not None:
            first = self.tasks.first(fraction)
            return dataclasses.replace(self, tasks=first) if first is not None else None
        if self.command or not self.texts:
            return None
        texts = {t: part(d, 0, utf8_cut(d, max(min_bytes, int(len(d) * fraction)))) for t, d in self.texts.items()}
        if all(len(texts[t]) >= len(d) for t, d in self.texts.items()):
            return None
        return dataclasses.replace(self, texts=texts, text_paths={})


_TEMP: list[str] = []


def _as_files(texts: Mapping[str, bytes]) -> dict[str, Path]:
    """Texts written to a temporary folder (removed at exit), for a command that reads files."""
    if not _TEMP:
        atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in _TEMP])
    d = tempfile.mkdtemp(prefix="mergescope-texts-")
    _TEMP.append(d)
    out = {}
    for name, data in texts.items():
        p = Path(d) / f"{name}.txt"
        p.write_bytes(bytes(data))
        out[name] = p
    return out


# ---------------------------------------------------------------------------------------------- plans
def score_plan(
    plan,
    scorer: Scorer,
    *,
    label: str = "plan",
    first: Scorer | None = None,
    after_first: Callable[[Row], None] | None = None,
) -> dict[str, Score]:
    """Merge `plan` in memory and score the result. With `first` (e.g. scorer.first_slice(...)), the merge
    is scored there first and `after_first(row)` is called, which may raise to stop the candidate."""
    from mergescope.merge.run import merge_in_memory

    merged = merge_in_memory(
        plan, device=scorer.device, seed=scorer.seed, progress=scorer.progress, should_stop=scorer.should_stop
    )
    model = Model(label, merged.tensors, merged.config, merged.tokenizer_dir)
    if first is not None and after_first is not None:
        after_first(first.model(model))
    return scorer.model(model)
