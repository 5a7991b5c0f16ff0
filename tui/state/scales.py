"""Colour scales of the heatmaps: where a number sits between the palette's ends, and which end is good.

A view scaled to its own min and max paints its smallest value dark and its largest bright whatever they
are (a 40 % sign conflict, below the 50 % unrelated deltas give, came out bright). So fractions use fixed
ends, metrics with a natural reference are centred on it (the palette's neutral middle: a sign conflict
on what unrelated deltas give, a cosine on 0, a norm ratio on 1), and only unbounded numbers (norms,
coefficients) scale to the data. Every scale says which end is good, for the legend.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    lo: float | None = None  # the low end; None: the data's min
    hi: float | None = None  # the high end; None: the data's max
    centre: float | None = None  # diverging: the palette's neutral middle sits here
    log: bool = False  # positions on a log scale (ratios)
    good: str = ""  # "low" | "high" | "centre" | "": the good end, said in the legend
    low_word: str = ""  # what the low end means, e.g. "agree"
    high_word: str = ""
    reference: str = ""  # what the centre means, e.g. "50% = unrelated deltas"

    @property
    def diverging(self) -> bool:
        return self.centre is not None

    @property
    def flipped(self) -> bool:
        """Diverging palettes run bad → good: flipped when the good end is the low one."""
        return self.diverging and self.good == "low"

    def ends(self, values: Iterable[float]) -> tuple[float, float]:
        """(lo, hi) for these values: the fixed ends, else the data's (around the centre, symmetric)."""
        vals = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not self.log)]
        lo = self.lo if self.lo is not None else (min(vals) if vals else 0.0)
        hi = self.hi if self.hi is not None else (max(vals) if vals else 0.0)
        if self.centre is not None and (self.lo is None or self.hi is None):
            c = self.centre
            m = max(abs(lo - c), abs(hi - c)) or 1.0
            lo, hi = (c - m if self.lo is None else lo), (c + m if self.hi is None else hi)
        return lo, hi

    def position(self, v: float, lo: float, hi: float) -> float:
        """Where v sits, 0 (low end) … 1 (high end), clamped; a diverging scale puts its centre at 0.5."""
        if math.isinf(v):
            return 1.0 if v > 0 else 0.0
        f = _log if self.log else float
        x, a, b = f(v), f(lo), f(hi)
        if self.centre is not None:
            c = f(self.centre)
            t = 0.5 * (x - a) / (c - a) if x < c and c > a else (0.5 + 0.5 * (x - c) / (b - c) if b > c else 0.5)
        else:
            t = (x - a) / (b - a) if b > a else 0.5
        return max(0.0, min(1.0, t))


def _log(x: float) -> float:
    return math.log10(x) if x > 0 else -12.0


DATA = Scale()


def independent_conflict(keep: Sequence[float]) -> float:
    """The sign conflict unrelated deltas give: model i's coordinate is non-zero with probability keep[i],
    with a random sign; among coordinates where at least two are non-zero, the share whose signs are not all
    equal (two dense models: 50 %; five: 94 %)."""
    dist = [1.0]  # P(k models non-zero)
    for p in keep:
        p = min(1.0, max(0.0, p))
        nxt = [0.0] * (len(dist) + 1)
        for k, q in enumerate(dist):
            nxt[k] += q * (1 - p)
            nxt[k + 1] += q * p
        dist = nxt
    two = sum(dist[2:])
    if two <= 0:
        return 0.5
    return sum(q * (1 - 2.0 ** (1 - k)) for k, q in enumerate(dist) if k >= 2) / two


def conflict_scale(keep: Sequence[float], what: str = "unrelated deltas") -> Scale:
    ref = independent_conflict(keep)
    return Scale(
        0.0, 1.0, centre=ref, good="low", low_word="agree", high_word="conflict", reference=f"{ref:.0%} = {what}"
    )


def keep_fractions(report, trimmed: bool) -> list[float]:
    """Per model, the share of coordinates that are non-zero (after the TIES trim at the report's density)."""
    total = report.whole().total
    out = []
    for i in range(report.n):
        nz = float(total.nonzero[i]) / total.numel if total.numel else 1.0
        out.append(min(nz, report.density) if trimmed else nz)
    return out
