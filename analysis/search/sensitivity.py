"""Sensitivity: which layer of which model helps or hurts which text, as the gradient of each text's bits
per byte with respect to every model's weight in every cell of the plan's table (one forward and one
backward pass per text). A negative gradient means more of that model there lowers the text's bits
per byte (helps); a positive one, that it hurts. To first order, an edit Δw of the table changes a
text's score by Σ gradient · Δw: `predicted` is what the plan editor shows beside the measured change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mergescope.io.progress import Progress, ShouldStop


@dataclass
class Sensitivity:
    names: list[str]  # the cells (fit.Problem names: weight.GROUP.BAND.mMODEL)
    start: list[float]  # the plan's values there
    value: dict[str, float] = field(default_factory=dict)  # text -> bits per byte at the plan
    grad: dict[str, list[float]] = field(default_factory=dict)  # text -> d bpb / d value, per cell

    def ranked(self, text: str, n: int = 5) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """(the n cells where more weight helps most, the n where it hurts most) for one text."""
        pairs = list(zip(self.names, self.grad[text]))
        helps = sorted((p for p in pairs if p[1] < 0), key=lambda p: p[1])[:n]
        hurts = sorted((p for p in pairs if p[1] > 0), key=lambda p: -p[1])[:n]
        return helps, hurts

    def predicted(self, values: Mapping[str, float]) -> dict[str, float]:
        """First-order change of each text's bits per byte when the cells take `values` (by name)."""
        delta = [values.get(nm, v) - v for nm, v in zip(self.names, self.start)]
        return {t: sum(g * d for g, d in zip(gs, delta)) for t, gs in self.grad.items()}

    def to_dict(self) -> dict:
        return {
            "cells": self.names,
            "start": self.start,
            "texts": {t: {"bits_per_byte": self.value[t], "gradient": self.grad[t]} for t in self.grad},
        }


def sensitivity(problem, progress: Progress | None = None, should_stop: ShouldStop | None = None) -> Sensitivity:
    """The gradient of every text of the problem at the plan's own values."""
    import torch

    start = torch.tensor(problem.start, dtype=torch.float32)
    out = Sensitivity(list(problem.names), list(problem.start))
    texts = list(problem.windows)
    for k, t in enumerate(texts):
        vals, g = problem.gradient(start, {t: 1.0}, should_stop)
        out.value[t] = vals[t]
        out.grad[t] = [float(x) for x in g]
        if progress is not None:
            progress(k + 1, len(texts), f"gradient of {t}")
    return out
