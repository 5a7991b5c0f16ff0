"""The heatmap's metrics: how each is computed from an aggregate, its colour scale, and how to read it.

`reading` is what the cell detail says about good and bad values; the thresholds are the findings' own
(stats/findings.py), so the map, the detail and the verdicts agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mergescope.stats.findings import (
    DIFFERENT_BASE_COSINE,
    DRIFT_COSINE,
    DRIFT_RELATIVE_NORM,
    MAGNITUDE_ASYMMETRY_WARN,
    PAIR_SIGN_CONFLICT_WARN,
    SAR_NOTE,
)
from mergescope.tui.state.scales import Scale, conflict_scale, keep_fractions


@dataclass(frozen=True)
class Metric:
    id: str
    key: str  # the key that selects it
    label: str
    subject: str  # "model" | "pair" | "all"
    fn: Callable  # (agg, i, j) -> float
    pct: bool = False
    help: str = ""
    short: str = ""  # for narrow titles
    spectral: bool = False  # read from the report's spectral pass (`analyze --spectral`), on its aggregates
    scale: Scale | Callable = Scale()  # or (report, i, j) -> Scale, for references that depend on the set
    reading: str = ""  # good and bad values, for the cell detail

    @property
    def title(self) -> str:
        return self.short or self.label

    def scale_for(self, report, i: int = 0, j: int = 1) -> Scale:
        return self.scale(report, i, j) if callable(self.scale) else self.scale


def _all_conflict(trimmed: bool) -> Callable:
    def scale(report, i, j) -> Scale:
        what = f"unrelated deltas trimmed to d={report.density:g}" if trimmed else "unrelated deltas"
        return conflict_scale(keep_fractions(report, trimmed), what)

    return scale


def _pair_conflict(report, i, j) -> Scale:
    keep = keep_fractions(report, False)
    return conflict_scale([keep[i], keep[j]] if max(i, j) < len(keep) else [1.0, 1.0])


METRICS: tuple[Metric, ...] = (
    Metric(
        "norm",
        "1",
        "task-vector norm ‖τ‖",
        "model",
        lambda a, i, j: a.norm(i),
        help="sqrt(Σ‖τᵢ‖²) over the cell's tensors",
        short="‖τ‖",
        scale=Scale(lo=0.0, low_word="unchanged", high_word="moved most"),
        reading="how much the fine-tune changed here, in the weights' units: no good or bad value by itself; "
        "compare cells and models (the relative norm scales it by the base)",
    ),
    Metric(
        "relative_norm",
        "2",
        "relative norm ‖τ‖/‖θ₀‖",
        "model",
        lambda a, i, j: a.relative_norm(i),
        help="how far the fine-tune moved, relative to the base weights",
        short="rel. norm",
        scale=Scale(lo=0.0, good="low", low_word="near the base", high_word="moved far"),
        reading=f"good: small (LLM fine-tunes stay below 0.05 over the weights, the demo's 0.08-0.14); above "
        f"{DRIFT_RELATIVE_NORM:g} over the weights a fine-tune has drifted: lower its weight or trim it",
    ),
    Metric(
        "sign_conflict",
        "3",
        "sign conflict (all models)",
        "all",
        lambda a, i, j: a.sign_conflict,
        pct=True,
        help="coordinates where ≥2 task vectors are non-zero and disagree in sign",
        short="sign conflict",
        scale=_all_conflict(False),
        reading="good: below what unrelated deltas give (50% for two models, 94% for five dense ones: the "
        "legend's centre); at or above it the task vectors cancel here: TIES's sign election or lower weights help",
    ),
    Metric(
        "trimmed_sign_conflict",
        "4",
        "trimmed sign conflict (TIES trim)",
        "all",
        lambda a, i, j: a.trimmed_sign_conflict,
        pct=True,
        help="sign conflict after keeping each τᵢ's top-density magnitudes (at the analysis density)",
        short="trimmed conflict",
        scale=_all_conflict(True),
        reading="what a TIES merge at the analysis density still has to elect; good: below the legend's centre "
        "(unrelated deltas trimmed alike); above 50% in a cell the verdicts note it",
    ),
    Metric(
        "magnitude_asymmetry",
        "5",
        "magnitude asymmetry max/min ‖τ‖",
        "all",
        lambda a, i, j: a.magnitude_asymmetry,
        help="1 = equal norms; large = one model dominates an equal-weight merge",
        short="asymmetry",
        scale=Scale(1.0, 10.0, log=True, good="low", low_word="equal", high_word="one dominates"),
        reading=f"good: near 1 (the demo's domain fine-tunes 1.00-1.07); above {MAGNITUDE_ASYMMETRY_WARN:g}x one "
        "model dominates an equal-weight merge: scale its weight down or normalise",
    ),
    Metric(
        "cosine",
        "6",
        "pairwise cosine cos(τᵢ, τⱼ)",
        "pair",
        lambda a, i, j: a.cosine(i, j),
        help="alignment of two task vectors: > 0 reinforce, < 0 cancel, ≈ 0 independent",
        short="cosine",
        scale=Scale(
            -1.0, 1.0, centre=0.0, good="high", low_word="cancel", high_word="reinforce", reference="0 = unrelated"
        ),
        reading="> 0 the two reinforce each other here, ≈ 0 they are unrelated, < 0 they cancel (bad: TIES or a "
        "lower weight for one of them); on the demo higher cosines went with better merges",
    ),
    Metric(
        "topk_energy",
        "7",
        "top-20% energy",
        "model",
        lambda a, i, j: a.topk_energy(i),
        pct=True,
        help="share of ‖τᵢ‖² in its top 20% magnitudes: high = sparse, trims well",
        short="top-20% energy",
        scale=Scale(0.2, 1.0, good="high", low_word="spread", high_word="sparse", reference="65% = Gaussian"),
        reading="20% = every coordinate moved alike (a trim loses most), 65% = Gaussian, near 100% = a few "
        "coordinates hold the change (TIES/DARE trims keep it); it did not predict merge quality on the demo",
    ),
    Metric(
        "sign_conflict_pair",
        "8",
        "pairwise sign conflict",
        "pair",
        lambda a, i, j: a.sign_conflict_pair(i, j),
        pct=True,
        help="among coordinates where both τᵢ and τⱼ are non-zero, the share with opposite signs",
        short="sign conflict",
        scale=_pair_conflict,
        reading=f"good: below 50% (what unrelated deltas give); the verdicts warn above "
        f"{PAIR_SIGN_CONFLICT_WARN:.0%} over the whole model: use TIES or lower one model's weight",
    ),
    Metric(
        "magnitude_ratio",
        "9",
        "magnitude ratio ‖τᵢ‖/‖τⱼ‖",
        "pair",
        lambda a, i, j: a.magnitude_ratio(i, j),
        help="how much larger one task vector is than the other in this cell",
        short="norm ratio",
        scale=Scale(
            0.1,
            10.0,
            centre=1.0,
            log=True,
            good="centre",
            low_word="τᵢ smaller",
            high_word="τᵢ larger",
            reference="1 = equal",
        ),
        reading="good: near 1; far from it the larger task vector dominates this cell in an equal-weight merge "
        "(weigh it down here)",
    ),
    Metric(
        "cosine_to_base",
        "0",
        "cosine to base cos(θᵢ, θ₀)",
        "model",
        lambda a, i, j: a.cosine_to_base(i),
        help="1 = unchanged; fine-tunes of this base stay close to 1",
        short="cos to base",
        scale=Scale(0.0, 1.0, good="high", low_word="other base", high_word="unchanged"),
        reading=f"good: near 1 (fine-tunes of this base); below {DRIFT_COSINE:g} over the weights the model "
        f"drifted, below {DIFFERENT_BASE_COSINE:g} it was trained from another base",
    ),
    # the spectral pass: keys shift+1..4
    Metric(
        "spectral_energy",
        "exclamation_mark",
        "spectral energy (top-K share of ‖τᵢ‖²)",
        "model",
        lambda a, i, j: a.spectral_energy(i),
        pct=True,
        help="Σ_{j≤K} σⱼ² / ‖τᵢ‖²: high = the fine-tune's change is low-rank",
        short="spectral energy",
        spectral=True,
        scale=Scale(0.0, 1.0, low_word="full-rank", high_word="low-rank"),
        reading="high = K directions hold the change (low-rank; 100% when K reaches the matrix size); no good "
        "or bad value by itself: it did not predict merge quality on the demo",
    ),
    Metric(
        "subspace_overlap",
        "at",
        "subspace overlap of τᵢ, τⱼ",
        "pair",
        lambda a, i, j: a.subspace_overlap(i, j),
        help="(‖UᵢᵀUⱼ‖² + ‖VᵢᵀVⱼ‖²)/2K: 0 = orthogonal singular subspaces, 1 = the same",
        short="overlap",
        spectral=True,
        scale=Scale(0.0, 1.0, good="low", low_word="orthogonal", high_word="same"),
        reading="0 = the two change orthogonal directions (they add without interfering), 1 = the same ones; "
        "random directions give about K / width, so small matrices read high",
    ),
    Metric(
        "sti",
        "number_sign",
        "task singular interference (STI)",
        "all",
        lambda a, i, j: a.sti,
        help="‖(ÛᵀÛ−I) Σ̂ (V̂ᵀV̂−I)‖₁ / ‖Σ̂‖₁ over the models' top-K triplets: 0 = no interference",
        short="STI",
        spectral=True,
        scale=Scale(lo=0.0, good="low", low_word="none", high_word="interfere"),
        reading="0 = the models' top singular directions do not interfere; lower is better, with no upper "
        "bound: it grows with the number of models and with K relative to the width, so compare cells and "
        "plans of one set, not numbers across sets",
    ),
    Metric(
        "sar",
        "dollar_sign",
        "subspace alignment ratio (SAR)",
        "model",
        lambda a, i, j: a.sar(i),
        pct=True,
        help="‖Pτᵢ‖/‖τᵢ‖, P on the merged task vector's top singular vectors (95 % of its energy)",
        short="SAR",
        spectral=True,
        scale=Scale(0.0, 1.0, good="high", low_word="left out", high_word="kept"),
        reading=f"good: high; on the demo, merges whose members all kept ≥ 94% matched their specialists and "
        f"every set with a member below {SAR_NOTE:.0%} lost ≥ 0.08 bits/byte: lower the others' weights where "
        "they dominate",
    ),
)
METRIC_BY_ID = {m.id: m for m in METRICS}
