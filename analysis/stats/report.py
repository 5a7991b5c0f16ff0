"""The analysis' data model: raw sums per site, their aggregates, findings, and the JSON contract.

Every metric is a ratio of additive sums (squared norms, dot products, coordinate counts), so the
analysis keeps only raw sums per *site* (layer, group, module) and derives any grouping afterwards:
per cell (layer, group) for the JSON contract, per module role for the heatmap's module columns, and
the whole model. Everyone imports this module; it imports nothing heavier than numpy.

Definitions the metric table leaves open, fixed here:
- magnitude trims keep |τ| ≥ the k-th largest magnitude, k = ⌊density·n⌋ per tensor (ties at the
  threshold are kept; k = 0 keeps nothing);
- `topk_energy` takes the top 20 % per tensor (as TIES trims) and sums the energies over the cell:
  Σ_t E_top(τ_t) / Σ_t ‖τ_t‖², with E_top counting exactly k magnitudes even when the threshold ties.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from mergescope.io.naming import GROUPS, PROJECTION_GROUPS
from mergescope.stats.sites import Aggregation, SiteSet, Sums, div, layer_sort_key
from mergescope.stats.spectral import SpectralResult

DEFAULT_DENSITY = 0.2  # the TIES trim density the analysis measures at unless told otherwise
SEVERITIES = ("error", "warning", "info")
# The projection matrices: where independent inits are uncorrelated, so where a different base shows.
# A model's relative norm and cosine to base, wherever one number per model is shown (the verdicts, the
# summary tables, the model card), are taken over these (`Report.weights()`).
WEIGHT_GROUPS = PROJECTION_GROUPS
MATRICES = "attention + MLP matrices"


@dataclass(frozen=True)
class Finding:
    """A merge-readiness verdict: what was seen, with numbers, and what to do."""

    severity: str  # error | warning | info
    code: str
    model: str | None
    message: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Finding:
        return cls(d["severity"], d["code"], d.get("model"), d["message"])


# ----------------------------------------------------------------------------------------------
# Raw sums per site
# ----------------------------------------------------------------------------------------------
@dataclass
class SiteStats(Sums):
    """Additive sums for one (layer, group, module) over the tensors that sit there."""

    SCALARS = ("numel", "base_sq", "multi_nz", "multi_conflict", "trim_multi_nz", "trim_multi_conflict")
    PER_MODEL = ("sq", "dot_base", "topk_energy", "nonzero", "nonfinite")
    PER_PAIR = ("dot", "pair_both", "pair_opp")
    INTS = ("nonzero", "nonfinite", "pair_both", "pair_opp")

    tensors: list[str] = field(default_factory=list)
    numel: int = 0
    base_sq: float = 0.0
    multi_nz: int = 0
    multi_conflict: int = 0
    trim_multi_nz: int = 0
    trim_multi_conflict: int = 0
    sq: np.ndarray = None  # [N] Σ‖τᵢ‖²
    dot_base: np.ndarray = None  # [N] Σ⟨τᵢ, θ₀⟩
    topk_energy: np.ndarray = None  # [N] Σ top-20 % energy
    nonzero: np.ndarray = None  # [N] coordinates with τᵢ ≠ 0
    nonfinite: np.ndarray = None  # [N] NaN/Inf coordinates in θᵢ
    dot: np.ndarray = None  # [N, N] Σ⟨τᵢ, τⱼ⟩
    pair_both: np.ndarray = None  # [N, N] coordinates with τᵢ ≠ 0 and τⱼ ≠ 0
    pair_opp: np.ndarray = None  # [N, N] ... with opposite signs


class Aggregate(Aggregation):
    """Metrics of a set of sites (a cell, a module column, or the whole model)."""

    SUMS = SiteStats

    @property
    def tensors(self) -> list[str]:
        return self.total.tensors

    def norm(self, i: int) -> float:
        return math.sqrt(self.total.sq[i])

    @property
    def base_norm(self) -> float:
        return math.sqrt(self.total.base_sq)

    def relative_norm(self, i: int) -> float:
        return div(self.norm(i), self.base_norm)

    def cosine(self, i: int, j: int) -> float:
        d = self.norm(i) * self.norm(j)
        return div(self.total.dot[i, j] if i != j else self.total.sq[i], d)

    def cosine_to_base(self, i: int) -> float:
        """cos(θᵢ, θ₀) from ‖θᵢ‖² = ‖τᵢ‖² + 2⟨τᵢ,θ₀⟩ + ‖θ₀‖² and ⟨θᵢ,θ₀⟩ = ⟨τᵢ,θ₀⟩ + ‖θ₀‖²."""
        t = self.total
        ti_sq = t.sq[i] + 2 * t.dot_base[i] + t.base_sq
        if ti_sq <= 0 or t.base_sq <= 0:
            return 0.0
        return float((t.dot_base[i] + t.base_sq) / math.sqrt(ti_sq * t.base_sq))

    def sign_conflict_pair(self, i: int, j: int) -> float:
        return div(self.total.pair_opp[i, j], self.total.pair_both[i, j])

    def magnitude_ratio(self, i: int, j: int) -> float:
        return div(self.norm(i), self.norm(j)) if self.norm(j) else (math.inf if self.norm(i) else 0.0)

    @property
    def sign_conflict(self) -> float:
        return div(self.total.multi_conflict, self.total.multi_nz)

    @property
    def trimmed_sign_conflict(self) -> float:
        return div(self.total.trim_multi_conflict, self.total.trim_multi_nz)

    @property
    def magnitude_asymmetry(self) -> float:
        norms = [self.norm(i) for i in range(self.total.n_models)]
        if not norms:
            return 0.0
        lo, hi = min(norms), max(norms)
        if lo == 0:
            return math.inf if hi > 0 else 0.0
        return hi / lo

    def topk_energy(self, i: int) -> float:
        return div(self.total.topk_energy[i], self.total.sq[i])


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------
@dataclass
class Report(SiteSet):
    """Everything one analysis found: raw sums per site, findings, and structural facts."""

    base: str
    models: list[str]
    density: float
    sites: list[SiteStats]
    findings: list[Finding] = field(default_factory=list)
    structure: dict = field(default_factory=dict)  # missing/shape/dtype facts gathered during the pass
    elapsed_s: float = 0.0
    bytes_read: int = 0
    spectral: SpectralResult | None = None  # `analyze(spectral=K)` only (spectral.py); JSON key "spectral"

    AGGREGATE = Aggregate

    # -- groupings (the rest: SiteSet) ------------------------------------------------------
    def rows(self) -> list[tuple[str, int | None, str | None]]:
        """Heatmap/table rows: (label, layer, group). Block rows have group None (all groups of the
        layer); embed sits first, final norm / head / other last."""
        out: list[tuple[str, int | None, str | None]] = []
        globals_ = sorted({s.group for s in self.sites if s.layer is None}, key=lambda g: layer_sort_key(None, g))
        for g in globals_:
            if g == "embed":
                out.append(("embed", None, g))
        out.extend((f"L{layer}", layer, None) for layer in self.layers())
        out.extend((g, None, g) for g in globals_ if g != "embed")
        return out

    def weights(self) -> Aggregate:
        """The projection matrices (attention + MLP); all non-norm tensors when a model has none."""
        sites = [s for s in self.sites if s.group in WEIGHT_GROUPS]
        if not sites:
            sites = [s for s in self.sites if s.group != "norm"] or self.sites
        return Aggregate(sites, self.n)

    def weights_scope(self) -> str:
        """What `weights()` covers, in words, for every place that shows its numbers."""
        if any(s.group in WEIGHT_GROUPS for s in self.sites):
            return MATRICES
        return "tensors (norms left out)" if any(s.group != "norm" for s in self.sites) else "tensors"

    def modules(self) -> list[str]:
        """Module roles in a stable, readable order (attention, MLP, norms, then the rest)."""
        order = {g: i for i, g in enumerate(GROUPS)}
        seen: dict[str, tuple] = {}
        for idx, s in enumerate(self.sites):
            seen.setdefault(s.module, (order.get(s.group, 9), idx))
        return sorted(seen, key=lambda m: seen[m])

    def only(self, indices: list[int]) -> Report:
        """The report of just these models (in this order), without findings (recompute them with
        `findings.findings_for`). Per-model and per-pair sums are sliced; the sign conflicts over all
        models (`multi_*`) and the spectral pass mix every model, so the subset has none."""
        idx = np.asarray(indices, dtype=np.int64)
        sites = []
        for s in self.sites:
            t = SiteStats(s.layer, s.group, s.module, len(idx), tensors=list(s.tensors), numel=s.numel)
            t.base_sq = s.base_sq
            for k in SiteStats.PER_MODEL:
                setattr(t, k, getattr(s, k)[idx].copy())
            for k in SiteStats.PER_PAIR:
                setattr(t, k, getattr(s, k)[np.ix_(idx, idx)].copy())
            sites.append(t)
        return Report(
            self.base,
            [self.models[i] for i in indices],
            self.density,
            sites,
            structure=self.structure,
            elapsed_s=self.elapsed_s,
            bytes_read=self.bytes_read,
        )

    # -- JSON (the contract in the README, section JSON) -------------------------------------------------------------------
    def to_json(self) -> dict:
        whole = self.whole()
        weights = self.weights()
        out = {
            "base": self.base,
            "models": list(self.models),
            "density": self.density,
            "findings": [f.to_dict() for f in self.findings],
            "model_summary": [
                {
                    "model": m,
                    "relative_norm": whole.relative_norm(i),
                    "cosine_to_base": whole.cosine_to_base(i),
                    "norm": whole.norm(i),
                    "topk_energy": whole.topk_energy(i),
                    "weight_relative_norm": weights.relative_norm(i),
                    "weight_cosine_to_base": weights.cosine_to_base(i),
                }
                for i, m in enumerate(self.models)
            ],
            "pairs": [
                {
                    "a": self.models[i],
                    "b": self.models[j],
                    "cosine": whole.cosine(i, j),
                    "sign_conflict": whole.sign_conflict_pair(i, j),
                    "magnitude_ratio": _finite(whole.magnitude_ratio(i, j)),
                }
                for i in range(self.n)
                for j in range(i + 1, self.n)
            ],
            "cells": [],
            "pair_cells": [],
            "group_cells": [],
        }
        for layer, group in self.cell_keys():
            agg = self.cell(layer, group)
            for i, m in enumerate(self.models):
                out["cells"].append(
                    {
                        "layer": layer,
                        "group": group,
                        "model": m,
                        "norm": agg.norm(i),
                        "relative_norm": agg.relative_norm(i),
                        "topk_energy": agg.topk_energy(i),
                    }
                )
            for i in range(self.n):
                for j in range(i + 1, self.n):
                    out["pair_cells"].append(
                        {
                            "layer": layer,
                            "group": group,
                            "a": self.models[i],
                            "b": self.models[j],
                            "cosine": agg.cosine(i, j),
                            "sign_conflict": agg.sign_conflict_pair(i, j),
                            "magnitude_ratio": _finite(agg.magnitude_ratio(i, j)),
                        }
                    )
            out["group_cells"].append(
                {
                    "layer": layer,
                    "group": group,
                    "sign_conflict": agg.sign_conflict,
                    "trimmed_sign_conflict": agg.trimmed_sign_conflict,
                    "magnitude_asymmetry": _finite(agg.magnitude_asymmetry),
                }
            )
        out["spectral"] = self.spectral.to_json() if self.spectral is not None else None
        out["structure"] = self.structure
        out["sites"] = [s.to_dict() for s in self.sites]
        out["elapsed_s"] = self.elapsed_s
        out["bytes_read"] = self.bytes_read
        return out

    @classmethod
    def from_json(cls, data: dict) -> Report:
        n = len(data["models"])
        return cls(
            base=data["base"],
            models=list(data["models"]),
            density=float(data["density"]),
            sites=[SiteStats.from_dict(s, n) for s in data["sites"]],
            findings=[Finding.from_dict(f) for f in data.get("findings", [])],
            structure=data.get("structure", {}),
            elapsed_s=data.get("elapsed_s", 0.0),
            bytes_read=data.get("bytes_read", 0),
            spectral=SpectralResult.from_json(data["spectral"], data["models"]) if data.get("spectral") else None,
        )


def _finite(x: float) -> float | None:
    """JSON has no Infinity: an infinite ratio (one model did not move) is written as null."""
    return x if math.isfinite(x) else None
