"""Messages the workers post (thread-safe) and the app handles on its own thread.

Workers never touch widgets: they post these. Progress messages coalesce (`can_replace`), so a fast
stream of updates costs one repaint per frame, not one per tensor.
"""

from __future__ import annotations

from textual.message import Message


class Progress(Message):
    """Progress of a long job (`kind`: "analysis", "spectral", "merge", "evaluate", ...); `rate`: whether a
    rate per second means something (bytes, tokens), or the count is of phases."""

    def __init__(self, kind: str, done: float, total: int, label: str, elapsed: float, rate: bool = True) -> None:
        super().__init__()
        self.kind = kind
        self.done = done
        self.total = total
        self.label = label
        self.elapsed = elapsed
        self.rate = rate

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, Progress) and message.kind == self.kind


class AnalysisDone(Message):
    def __init__(self, report, base: str, models: list[str], purpose: str = "main") -> None:
        super().__init__()
        self.report = report
        self.base = base
        self.models = models
        self.purpose = purpose  # "main": the report the views show; "whatif": re-measured at the plan's density


class SpectralDone(Message):
    """The spectral pass of the open set (`report` holds it and its findings), run for `metric_id`."""

    def __init__(self, report, metric_id: str) -> None:
        super().__init__()
        self.report = report
        self.metric_id = metric_id


class MergeDone(Message):
    def __init__(self, result, output_dir: str, plan) -> None:
        super().__init__()
        self.result = result
        self.output_dir = output_dir
        self.plan = plan


class WhatIfReady(Message):
    """Predictions for the current plan: `preds[r][c]` per cell of the group grid."""

    def __init__(self, preds, whatif, generation: int) -> None:
        super().__init__()
        self.preds = preds
        self.whatif = whatif
        self.generation = generation


class EvalPartial(Message):
    """An Evaluate job's result so far: the sweep's points or the soup's steps, as they happen."""

    def __init__(self, job, partial) -> None:
        super().__init__()
        self.job, self.partial = job, partial


class EvalDone(Message):
    def __init__(self, job, result, seconds: float) -> None:
        super().__init__()
        self.job, self.result, self.seconds = job, result, seconds


class SensitivityDone(Message):
    """A sensitivity pass of the plan being edited (`smap`: state/sensitivity_map.py), for `report`'s set."""

    def __init__(self, smap, report) -> None:
        super().__init__()
        self.smap, self.report = smap, report
