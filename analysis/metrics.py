"""Streaming task-vector statistics (DESIGN §3) in one pass over the tensors.

Every metric is a ratio of additive sums (squared norms, dot products, coordinate counts), so the
pass keeps only raw sums per *site* (layer, group, module) and derives any grouping afterwards: per
cell (layer, group) for the JSON contract, per module role for the heatmap's module columns, and the
whole model. Each tensor of each model is read once; memory holds one tensor per model at a time.

Definitions that DESIGN leaves open, fixed here:
- magnitude trims keep |τ| ≥ the k-th largest magnitude, k = ⌊density·n⌋ per tensor (ties at the
  threshold are kept; k = 0 keeps nothing);
- `topk_energy` takes the top 20 % per tensor (as TIES trims) and sums the energies over the cell:
  Σ_t E_top(τ_t) / Σ_t ‖τ_t‖², with E_top counting exactly k magnitudes even when the threshold ties.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .naming import GROUPS, site_of

TOPK_FRACTION = 0.2
# Elements per chunk in the per-tensor passes: small enough that the several passes over one chunk
# run from cache, large enough to amortise the per-op overhead.
CHUNK = 1 << 20

Progress = Callable[[int, int, str], None]
ShouldStop = Callable[[], bool]


class AnalysisCancelled(Exception):
    """Raised when `should_stop()` returned True; nothing is cached."""


# ----------------------------------------------------------------------------------------------
# Raw sums per site
# ----------------------------------------------------------------------------------------------
_PER_MODEL = ("sq", "dot_base", "topk_energy", "nonzero", "nonfinite")
_PER_PAIR = ("dot", "pair_both", "pair_opp")
_SCALAR = ("numel", "base_sq", "multi_nz", "multi_conflict", "trim_multi_nz", "trim_multi_conflict")


@dataclass
class SiteStats:
    """Additive sums for one (layer, group, module) over the tensors that sit there."""

    layer: int | None
    group: str
    module: str
    n_models: int
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

    def __post_init__(self):
        n = self.n_models
        for k in ("sq", "dot_base", "topk_energy"):
            if getattr(self, k) is None:
                setattr(self, k, np.zeros(n, dtype=np.float64))
        for k in ("nonzero", "nonfinite"):
            if getattr(self, k) is None:
                setattr(self, k, np.zeros(n, dtype=np.int64))
        if self.dot is None:
            self.dot = np.zeros((n, n), dtype=np.float64)
        for k in ("pair_both", "pair_opp"):
            if getattr(self, k) is None:
                setattr(self, k, np.zeros((n, n), dtype=np.int64))

    @property
    def key(self) -> tuple[int | None, str, str]:
        return (self.layer, self.group, self.module)

    def add(self, other: SiteStats) -> None:
        self.tensors.extend(other.tensors)
        for k in _SCALAR:
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for k in _PER_MODEL + _PER_PAIR:
            getattr(self, k).__iadd__(getattr(other, k))

    def to_dict(self) -> dict:
        d = {"layer": self.layer, "group": self.group, "module": self.module, "tensors": list(self.tensors)}
        for k in _SCALAR:
            d[k] = getattr(self, k)
        for k in _PER_MODEL + _PER_PAIR:
            d[k] = getattr(self, k).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict, n_models: int) -> SiteStats:
        s = cls(d["layer"], d["group"], d["module"], n_models, tensors=list(d["tensors"]))
        for k in _SCALAR:
            setattr(s, k, type(getattr(s, k))(d[k]))
        for k in _PER_MODEL + _PER_PAIR:
            setattr(s, k, np.asarray(d[k], dtype=getattr(s, k).dtype))
        return s


def _div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


class Aggregate:
    """Metrics of a set of sites (a cell, a module column, or the whole model)."""

    def __init__(self, sites: Iterable[SiteStats], n_models: int):
        self.total = SiteStats(None, "", "", n_models)
        for s in sites:
            self.total.add(s)

    @property
    def tensors(self) -> list[str]:
        return self.total.tensors

    def norm(self, i: int) -> float:
        return math.sqrt(self.total.sq[i])

    @property
    def base_norm(self) -> float:
        return math.sqrt(self.total.base_sq)

    def relative_norm(self, i: int) -> float:
        return _div(self.norm(i), self.base_norm)

    def cosine(self, i: int, j: int) -> float:
        d = self.norm(i) * self.norm(j)
        return _div(self.total.dot[i, j] if i != j else self.total.sq[i], d)

    def cosine_to_base(self, i: int) -> float:
        """cos(θᵢ, θ₀) from ‖θᵢ‖² = ‖τᵢ‖² + 2⟨τᵢ,θ₀⟩ + ‖θ₀‖² and ⟨θᵢ,θ₀⟩ = ⟨τᵢ,θ₀⟩ + ‖θ₀‖²."""
        t = self.total
        ti_sq = t.sq[i] + 2 * t.dot_base[i] + t.base_sq
        if ti_sq <= 0 or t.base_sq <= 0:
            return 0.0
        return float((t.dot_base[i] + t.base_sq) / math.sqrt(ti_sq * t.base_sq))

    def sign_conflict_pair(self, i: int, j: int) -> float:
        return _div(self.total.pair_opp[i, j], self.total.pair_both[i, j])

    def magnitude_ratio(self, i: int, j: int) -> float:
        return _div(self.norm(i), self.norm(j)) if self.norm(j) else (math.inf if self.norm(i) else 0.0)

    @property
    def sign_conflict(self) -> float:
        return _div(self.total.multi_conflict, self.total.multi_nz)

    @property
    def trimmed_sign_conflict(self) -> float:
        return _div(self.total.trim_multi_conflict, self.total.trim_multi_nz)

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
        return _div(self.total.topk_energy[i], self.total.sq[i])


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------
def _layer_sort_key(layer: int | None, group: str) -> tuple:
    # embeddings first, blocks in order, then final norm / head / other
    if layer is None:
        return (0 if group == "embed" else 2, GROUPS.index(group) if group in GROUPS else 9, -1)
    return (1, layer, GROUPS.index(group) if group in GROUPS else 9)


@dataclass
class Report:
    """Everything one analysis found: raw sums per site, findings, and structural facts."""

    base: str
    models: list[str]
    density: float
    sites: list[SiteStats]
    findings: list = field(default_factory=list)  # list[compat.Finding]
    structure: dict = field(default_factory=dict)  # missing/shape/dtype facts gathered during the pass
    elapsed_s: float = 0.0
    bytes_read: int = 0

    @property
    def n(self) -> int:
        return len(self.models)

    # -- groupings --------------------------------------------------------------------------
    def cell_keys(self) -> list[tuple[int | None, str]]:
        keys = {(s.layer, s.group) for s in self.sites}
        return sorted(keys, key=lambda k: _layer_sort_key(*k))

    def cell(self, layer: int | None, group: str) -> Aggregate:
        return Aggregate((s for s in self.sites if s.layer == layer and s.group == group), self.n)

    def module_cell(self, layer: int | None, module: str) -> Aggregate:
        return Aggregate((s for s in self.sites if s.layer == layer and s.module == module), self.n)

    def rows(self) -> list[tuple[str, int | None, str | None]]:
        """Heatmap/table rows: (label, layer, group). Block rows have group None (all groups of the
        layer); embed sits first, final norm / head / other last."""
        out: list[tuple[str, int | None, str | None]] = []
        globals_ = sorted({s.group for s in self.sites if s.layer is None}, key=lambda g: _layer_sort_key(None, g))
        for g in globals_:
            if g == "embed":
                out.append(("embed", None, g))
        out.extend((f"L{layer}", layer, None) for layer in self.layers())
        out.extend((g, None, g) for g in globals_ if g != "embed")
        return out

    def row_cell(
        self, layer: int | None, group: str | None, *, module: str | None = None, column_group: str | None = None
    ) -> Aggregate:
        """Aggregate of one row (see `rows`), optionally restricted to one module or one group."""

        def keep(s: SiteStats) -> bool:
            if s.layer != layer or (group is not None and s.group != group):
                return False
            if module is not None and s.module != module:
                return False
            return column_group is None or s.group == column_group

        return Aggregate(filter(keep, self.sites), self.n)

    def whole(self) -> Aggregate:
        return Aggregate(self.sites, self.n)

    def layers(self) -> list[int]:
        return sorted({s.layer for s in self.sites if s.layer is not None})

    def modules(self) -> list[str]:
        """Module roles in a stable, readable order (attention, MLP, norms, then the rest)."""
        order = {g: i for i, g in enumerate(GROUPS)}
        seen: dict[str, tuple] = {}
        for idx, s in enumerate(self.sites):
            seen.setdefault(s.module, (order.get(s.group, 9), idx))
        return sorted(seen, key=lambda m: seen[m])

    # -- JSON (DESIGN §5) -------------------------------------------------------------------
    def to_json(self) -> dict:
        from .compat import weight_aggregate

        whole = self.whole()
        weights = weight_aggregate(self)
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
        out["structure"] = self.structure
        out["sites"] = [s.to_dict() for s in self.sites]
        out["elapsed_s"] = self.elapsed_s
        out["bytes_read"] = self.bytes_read
        return out

    @classmethod
    def from_json(cls, data: dict) -> Report:
        from .compat import Finding

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
        )


def _finite(x: float) -> float | None:
    """JSON has no Infinity: an infinite ratio (one model did not move) is written as null."""
    return x if math.isfinite(x) else None


# ----------------------------------------------------------------------------------------------
# The streaming pass
# ----------------------------------------------------------------------------------------------
def kth_largest_abs(x, k: int):
    """The k-th largest |x| (1-based) as a 0-d tensor: the merge methods' exact linear-time selection."""
    from .methods.sparsify import kth_largest

    return kth_largest(x.reshape(-1).abs(), k)[0]


def _tensor_stats_pairwise(base, models, nm: str, density: float, st: SiteStats, dev) -> dict:
    """Fallback for more models than the sign-code histogram holds: pair by pair, whole tensors."""
    import torch

    bad: dict = {}
    base_t = base.get(nm).to(dev, dtype=torch.float32)
    if not bool(torch.isfinite(base_t).all()):
        bad["base"] = int((~torch.isfinite(base_t)).sum())
        base_t = torch.nan_to_num(base_t, nan=0.0, posinf=0.0, neginf=0.0)
    taus = [m.get(nm).to(dev, dtype=torch.float32) - base_t for m in models]
    before = st.nonfinite.copy()
    _tensor_stats(base_t, taus, density, st)
    for i in range(len(models)):
        if st.nonfinite[i] > before[i]:
            bad[i] = int(st.nonfinite[i] - before[i])
    return bad


def _tensor_stats(base_t, taus: list, density: float, st: SiteStats) -> None:
    """Add one tensor's contribution (all models) to `st`. `taus` are float32 task vectors."""
    import torch

    n_models = len(taus)
    numel = base_t.numel()
    st.numel += numel
    st.base_sq += float(torch.dot(base_t.reshape(-1), base_t.reshape(-1)))
    k_trim = int(math.floor(density * numel))
    k_top = int(math.floor(TOPK_FRACTION * numel))
    trim_thr: list = []
    for i, tau in enumerate(taus):
        flat = tau.reshape(-1)
        sq = float(torch.dot(flat, flat))
        if not math.isfinite(sq):
            bad = int((~torch.isfinite(flat)).sum())
            st.nonfinite[i] += bad
            flat = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)
            taus[i] = flat.view_as(tau)
            sq = float(torch.dot(flat, flat))
        st.sq[i] += sq
        st.dot_base[i] += float(torch.dot(flat, base_t.reshape(-1)))
        # top-20 % energy, exact k even when the threshold ties
        if k_top > 0 and sq > 0:
            thr = kth_largest_abs(flat, k_top)
            a = flat.abs()
            above = a > thr
            cnt = int(above.sum())
            st.topk_energy[i] += float((flat[above] ** 2).sum(dtype=torch.float64)) + (k_top - cnt) * float(thr) ** 2
        if density >= 1.0:
            trim_thr.append(None)
        elif k_trim <= 0:
            trim_thr.append(math.inf)
        else:
            trim_thr.append(float(kth_largest_abs(flat, k_trim)))
    for i in range(n_models):
        for j in range(i + 1, n_models):
            d = float(torch.dot(taus[i].reshape(-1), taus[j].reshape(-1)))
            st.dot[i, j] += d
            st.dot[j, i] += d
    # sign statistics, chunked so the passes over one chunk stay in cache
    flats = [t.reshape(-1) for t in taus]
    for start in range(0, numel, CHUNK):
        end = min(numel, start + CHUNK)
        signs = [torch.sign(f[start:end]).to(torch.int8) for f in flats]
        pos = torch.zeros(end - start, dtype=torch.int8)
        neg = torch.zeros(end - start, dtype=torch.int8)
        tpos = torch.zeros(end - start, dtype=torch.int8)
        tneg = torch.zeros(end - start, dtype=torch.int8)
        for i, s in enumerate(signs):
            st.nonzero[i] += int(torch.count_nonzero(s))
            pos += s > 0
            neg += s < 0
            thr = trim_thr[i]
            if thr is None:
                ts = s
            elif thr == math.inf:
                ts = None  # k = 0: the trim keeps nothing
            else:
                ts = s * (flats[i][start:end].abs() >= thr)
            if ts is not None:
                tpos += ts > 0
                tneg += ts < 0
            for j in range(i):
                prod = s * signs[j]
                both = int(torch.count_nonzero(prod))
                opp = int((prod < 0).sum())
                st.pair_both[i, j] += both
                st.pair_both[j, i] += both
                st.pair_opp[i, j] += opp
                st.pair_opp[j, i] += opp
        nz = pos + neg
        st.multi_nz += int((nz >= 2).sum())
        st.multi_conflict += int(((pos > 0) & (neg > 0)).sum())
        tnz = tpos + tneg
        st.trim_multi_nz += int((tnz >= 2).sum())
        st.trim_multi_conflict += int(((tpos > 0) & (tneg > 0)).sum())


def analyze_checkpoints(
    base,
    models: Sequence,
    *,
    density: float = 0.2,
    device: str = "cpu",
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> Report:
    """One streaming pass over base + fine-tunes. Returns a Report (findings filled by compat)."""
    import torch

    from .tvstats import MAX_HIST_MODELS, tensor_stats

    if not 0.0 <= density <= 1.0:
        from .errors import InputError

        raise InputError(f"--density {density}: must be between 0 and 1 (TIES trims to this fraction; 0.2 is typical)")
    t0 = time.perf_counter()
    n = len(models)
    sites: dict[tuple, SiteStats] = {}
    structure = {"missing": {}, "extra": {}, "shape_mismatch": {}, "dtypes": {}, "base_dtypes": {}}
    names = [nm for nm in base.names() if base.info(nm).dtype.is_floating_point]
    for m in models:
        mnames = set(m.names())
        structure["missing"][m.label] = [nm for nm in base.names() if nm not in mnames]
        bset = set(base.names())
        structure["extra"][m.label] = sorted(nm for nm in mnames if nm not in bset)
        structure["shape_mismatch"][m.label] = [
            [nm, list(base.info(nm).shape), list(m.info(nm).shape)]
            for nm in base.names()
            if nm in mnames and tuple(base.info(nm).shape) != tuple(m.info(nm).shape)
        ]
        structure["dtypes"][m.label] = _dtype_counts(m)
    structure["base_dtypes"] = _dtype_counts(base)
    skip = {nm for m in models for nm, *_ in structure["shape_mismatch"][m.label]}
    usable = [nm for nm in names if nm not in skip and all(nm in m for m in models)]
    total_bytes = sum(base.info(nm).nbytes + sum(m.info(nm).nbytes for m in models) for nm in usable)
    done = 0
    dev = torch.device(device)
    for ti, nm in enumerate(usable):
        if should_stop is not None and should_stop():
            raise AnalysisCancelled()
        site = site_of(nm)
        st = sites.get((site.layer, site.group, site.module))
        if st is None:
            st = sites[(site.layer, site.group, site.module)] = SiteStats(site.layer, site.group, site.module, n)
        st.tensors.append(nm)
        if n <= MAX_HIST_MODELS:

            def release(start, stop, nm=nm):
                for ck in (base, *models):
                    ck.release_range(nm, start, stop)

            bad = tensor_stats(base.get(nm), [m.get(nm) for m in models], density, st, dev, release)
        else:
            bad = _tensor_stats_pairwise(base, models, nm, density, st, dev)
        if bad.get("base"):
            structure.setdefault("base_nonfinite", {})[nm] = bad["base"]
        for i in range(n):
            if bad.get(i):
                label = models[i].label
                structure.setdefault("nonfinite", {})[label] = structure.get("nonfinite", {}).get(label, 0) + bad[i]
                structure.setdefault("nonfinite_where", {}).setdefault(label, nm)
        base.release(nm)
        for m in models:
            m.release(nm)
        done += base.info(nm).nbytes + sum(m.info(nm).nbytes for m in models)
        if progress is not None:
            progress(done, total_bytes, f"{ti + 1}/{len(usable)} {nm}")
    report = Report(
        base=base.label,
        models=[m.label for m in models],
        density=density,
        sites=sorted(sites.values(), key=lambda s: (_layer_sort_key(s.layer, s.group), s.module)),
        structure=structure,
    )
    report.elapsed_s = time.perf_counter() - t0
    report.bytes_read = done
    return report


def _dtype_counts(ck) -> dict[str, int]:
    out: dict[str, int] = {}
    for info in ck.infos():
        out[info.dtype_name] = out.get(info.dtype_name, 0) + 1
    return out
