"""The part the task vectors share: their mean c and the residuals rᵢ = τᵢ − c, from the report's sums.

A base that differs from the models' true base by an offset o (a sibling checkpoint: "v1" vs "v2" of one
model) adds o to every task vector, τᵢ = o + fᵢ, so the models share a large part whatever their tasks.
Runs of one recipe (soup ingredients) share one too: the task. Both readings need the same numbers, all
ratios of the Gram sums the analysis keeps per site (no new pass):

    ‖c‖² = (1/N²) Σᵢⱼ ⟨τᵢ,τⱼ⟩        ⟨τᵢ,c⟩ = (1/N) Σⱼ ⟨τᵢ,τⱼ⟩        mean ‖rᵢ‖² = (1/N) Σᵢ ‖τᵢ‖² − ‖c‖²

What tells the readings apart is the residuals' *profile*: the energy per coordinate of c and of the
residuals per cell (layer, group; norm gains left out: a handful of coordinates each, they start at 1 in
every model), correlated in log scale across cells. Where the models' own tasks differ, the residuals are
task-like and spread over the cells as c does (a shared offset looks like one more fine-tune); soup
residuals are seed noise, spread otherwise (on the trained families their share is low in the LM head,
where runs of one task agree most, and high in the embeddings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _gram(total) -> np.ndarray:
    g = np.array(total.dot, dtype=np.float64)
    np.fill_diagonal(g, total.sq)
    return g


@dataclass(frozen=True)
class SharedPart:
    """The common component of the models `idx` (report indices), whole model and per cell."""

    idx: tuple[int, ...]
    pair_cosine: dict  # (i, j) -> cosine of the task vectors
    pair_sign_conflict: dict  # (i, j) -> share of opposite signs where both moved
    common_ratio: float  # ‖c‖ / mean ‖τᵢ‖
    explained: dict  # i -> cos²(τᵢ, c): the share of ‖τᵢ‖² along c
    profile_corr: float  # corr across non-norm cells of log(‖c‖²/n) and log(mean ‖rᵢ‖²/n); nan with < 3
    common_relative_norm: float  # ‖c‖ / ‖θ₀‖

    @property
    def mean_cosine(self) -> float:
        return float(np.mean(list(self.pair_cosine.values()))) if self.pair_cosine else 0.0

    @property
    def mean_sign_conflict(self) -> float:
        return float(np.mean(list(self.pair_sign_conflict.values()))) if self.pair_sign_conflict else 0.0


def _common(g: np.ndarray) -> tuple[float, float]:
    """(‖c‖², mean ‖rᵢ‖²) of a Gram matrix."""
    n = len(g)
    c_sq = float(g.sum()) / (n * n)
    return c_sq, max(float(np.trace(g)) / n - c_sq, 0.0)


def shared_part(report, idx) -> SharedPart | None:
    """The shared part of models `idx` (at least two, each moved); None otherwise."""
    idx = tuple(idx)
    whole = report.whole()
    if len(idx) < 2 or any(whole.total.sq[i] <= 0 for i in idx):
        return None
    sel = np.ix_(idx, idx)
    g = _gram(whole.total)[sel]
    n = len(idx)
    c_sq, _ = _common(g)
    norms = np.sqrt(np.diag(g))
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    cos = {(idx[a], idx[b]): float(g[a, b] / (norms[a] * norms[b])) for a, b in pairs}
    sc = {(idx[a], idx[b]): whole.sign_conflict_pair(idx[a], idx[b]) for a, b in pairs}
    dots_c = g.sum(1) / n  # ⟨τᵢ, c⟩
    explained = {idx[a]: float(dots_c[a] ** 2 / (g[a, a] * c_sq)) if c_sq > 0 else 0.0 for a in range(n)}
    lc, lr = [], []
    for layer, group in report.cell_keys():
        t = report.cell(layer, group).total
        cg = _gram(t)[sel]
        csq, rsq = _common(cg)
        if group != "norm" and t.numel and csq > 0 and rsq > 0:
            lc.append(math.log(csq / t.numel))
            lr.append(math.log(rsq / t.numel))
    corr = float(np.corrcoef(lc, lr)[0, 1]) if len(lc) >= 3 and np.std(lc) > 0 and np.std(lr) > 0 else math.nan
    return SharedPart(
        idx=idx,
        pair_cosine=cos,
        pair_sign_conflict=sc,
        common_ratio=math.sqrt(c_sq) / float(norms.mean()),
        explained=explained,
        profile_corr=corr,
        common_relative_norm=math.sqrt(c_sq / whole.total.base_sq) if whole.total.base_sq > 0 else 0.0,
    )
