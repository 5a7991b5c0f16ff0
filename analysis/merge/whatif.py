"""What a plan will do, predicted from an analysis Report without reading a tensor.

Every method this tool runs is, to first order, `θ₀ + Σᵢ cᵢ·τᵢ` per tensor: the *effective
coefficient* cᵢ of model i folds its weight with the method's normalisation and λ. The Report keeps,
per site (layer, group, module), the Gram matrix of the task vectors (Σ⟨τᵢ,τⱼ⟩, Σ‖τᵢ‖²) and Σ‖θ₀‖²,
so for any coefficients the merged task vector's norm is exact:

    ‖Σᵢ cᵢτᵢ‖² = Σᵢⱼ cᵢcⱼ⟨τᵢ,τⱼ⟩          (summed over the sites of a cell)

What is exact and what is not (the UI says the same):
- linear (normalize), task_arithmetic, dare_linear/della_linear *in expectation* (their random drop is
  rescaled to be unbiased when `rescale` is on): the merged task vector's norm is exact (for DARE: of the
  expected merge);
- ties / dare_ties / breadcrumbs* / della: trimming and sign election are not modelled; the numbers
  are those of the same weights without them. The interference they remove is shown by the *measured*
  trimmed sign conflict, which the analysis measures at one density (its `density`); a plan at another
  density needs a re-analysis at that density for an exact figure;
- slerp / nuslerp: linearised (slerp ≈ lerp for small angles between task vectors); model_stock: its
  interpolation ratio from the measured mean pairwise cosine of the site (mergekit computes it per
  tensor); passthrough: the scale.

Per cell (a set of sites) a `CellPrediction` gives: the merged task vector relative to the base
(`merged_relative_norm`), the *retained mass* ‖Σcᵢτᵢ‖ / Σᵢ‖cᵢτᵢ‖ (1 = the contributions add up,
lower = they cancel), each model's *share* ‖cᵢτᵢ‖ / Σⱼ‖cⱼτⱼ‖, the mean effective coefficient and raw
weight per model, and the measured trimmed sign conflict.

UI-free: imports numpy and analysis modules only (never textual).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mergescope.merge.methods.base import CoefficientInputs


def _method(name: str):
    from mergescope.merge.methods import REGISTRY

    return REGISTRY.get(name)


def conflict_is_trimmed(method: str) -> bool:
    """Whether the interference `method` leaves is the trimmed sign conflict (it trims by magnitude)."""
    m = _method(method)
    return m is not None and m.trim.by_magnitude


def method_note(method: str) -> str:
    """One line saying how far to trust the prediction for `method` (from its registry traits)."""
    from mergescope.merge.methods.base import Linear, Trim

    m = _method(method)
    if m is None or m.coefficients is None:
        return f"{method}: not modelled"
    if m.trim is Trim.NONE and not m.elects_signs and m.linear in (Linear.TASK_SUM, Linear.WEIGHTED_MEAN):
        return f"{method}: exact (a weighted sum of task vectors)"
    if m.trim in (Trim.RANDOM, Trim.MAGNITUDE_RANDOM) and not m.elects_signs:
        return f"{method}: exact in expectation (random drop, rescaled); trimming noise not shown"
    if m.trim is Trim.IMPORTANCE_OUTLIERS:
        return f"{method}: the whole task vector; its outlier mask (|δ|·KL > median + 1.5·IQR) is not modelled"
    if m.linear is Linear.ENERGY_SHARES:
        return f"{method}: weights from the measured ‖τ‖² per site; variance selection and sign election not modelled"
    if m.trim is not Trim.NONE or m.elects_signs:
        return f"{method}: trim/drop and sign election not modelled — see the measured trimmed sign conflict"
    return {
        Linear.INTERPOLATION: f"{method}: linearised (≈ lerp for small angles)",
        Linear.WEIGHT_SHARES: f"{method}: linearised (≈ lerp for small angles)",
        Linear.STOCK_RATIO: f"{method}: ratio from the measured mean pairwise cosine per site",
        Linear.SCALE: f"{method}: the model's tensors, scaled",
        Linear.EQUAL_MEAN: f"{method}: linearised (≈ the plain mean of the inputs for small angles)",
        Linear.CLIPPED: f"{method}: upper bound — the whole task vector; its entries beyond ±t are cut (not modelled)",
        Linear.OVERLAP_MEAN: f"{method}: the mean of the task vectors; entries one model alone moves keep it whole",
        Linear.SUBSPACE: f"{method}: the task sum × alpha; its per-matrix subspaces and rescaled spectrum not modelled",
    }.get(m.linear, f"{method}: not modelled")


@dataclass
class SiteCoefficients:
    """Per report model: effective coefficient cᵢ, raw weight wᵢ and density dᵢ (nan when unset)."""

    coeff: np.ndarray
    weight: np.ndarray
    density: np.ndarray


def coefficients(
    method: str,
    params: dict,
    model_params: Sequence[dict | None],
    *,
    base_param: dict | None = None,
    cosine: float | None = None,
    energy: Sequence[float] | None = None,
) -> SiteCoefficients:
    """Effective coefficients for one tensor, by the method's own linearisation (its registry entry's
    `coefficients`). `model_params[i]` holds model i's per-model parameters, or None when model i is not
    in the plan (coefficient 0); parameters left out take the method's defaults. `base_param`: the base's
    own per-model parameters when the method takes the base as a plain input (linear). `cosine`: the mean
    pairwise task-vector cosine (model_stock). `energy`: each model's mean square task-vector entry at the
    site (sce)."""
    return _coefficients(_method(method), params, model_params, base_param, cosine, energy)[0]


def _coefficients(m, params, model_params, base_param, cosine, energy) -> tuple[SiteCoefficients, bool]:
    """(the coefficients, whether they read the site's measurements); `cosine` and `energy` may be
    callables, computed only when the method reads them."""
    n = len(model_params)
    present = np.array([mp is not None for mp in model_params], dtype=bool)
    if m is None or m.coefficients is None:
        return SiteCoefficients(np.zeros(n), np.zeros(n), np.full(n, math.nan)), False
    mps = [None if mp is None else m.complete_model(mp, params, i) for i, mp in enumerate(model_params)]
    base = None if base_param is None else m.complete_model(base_param, params)
    inputs = CoefficientInputs(m.complete_globals(params), mps, base, cosine, energy)
    c, w = m.coefficients(inputs)
    dens = np.array([math.nan if (mp or {}).get("density") is None else mp["density"] for mp in mps], dtype=np.float64)
    return SiteCoefficients(np.where(present, c, 0.0), np.where(present, w, 0.0), dens), inputs.measured


@dataclass
class CellPrediction:
    merged_norm: float
    merged_relative_norm: float
    retained: float  # ‖Σcτ‖ / Σ‖cτ‖ (nan when nothing moves)
    share: np.ndarray  # per model
    coeff: np.ndarray  # numel-weighted mean effective coefficient per model
    weight: np.ndarray  # numel-weighted mean raw weight per model
    density: np.ndarray  # numel-weighted mean density per model (nan when unset)
    trimmed_sign_conflict: float  # measured, at `measured_density`
    measured_density: float
    numel: int = 0
    sign_conflict: float = 0.0  # measured, untrimmed (same models as the trimmed one)
    conflict_trimmed: bool = False  # which of the two `conflict` is

    @property
    def conflict(self) -> float:
        """The interference this method leaves: trimmed sign conflict for magnitude-trimming methods,
        the untrimmed one otherwise."""
        return self.trimmed_sign_conflict if self.conflict_trimmed else self.sign_conflict


@dataclass
class WhatIf:
    """Predictions for one plan over one report. `site_coeffs[(layer, group, module)]`."""

    report: object
    method: str
    site_coeffs: dict
    note: str = ""
    conflict_report: object = None  # a report re-measured at the plan's density (optional)
    warnings: list[str] = field(default_factory=list)

    def _site_terms(self, s):
        """Per-site additive terms, computed once: (cᵀGc, c²·‖τ‖², ‖θ₀‖², c·n, w·n, d·n, n where d is set)."""
        cache = self.__dict__.setdefault("_terms", {})
        t = cache.get(s.key)
        if t is None:
            sc = self.site_coeffs.get(s.key)
            if sc is None:
                t = cache[s.key] = False
                return t
            c = sc.coeff
            gram = s.dot.copy()
            np.fill_diagonal(gram, s.sq)
            ok = ~np.isnan(sc.density)
            t = cache[s.key] = (
                float(c @ gram @ c),
                c * c * s.sq,
                s.base_sq,
                c * s.numel,
                sc.weight * s.numel,
                np.where(ok, np.nan_to_num(sc.density) * s.numel, 0.0),
                ok * float(s.numel),
                s.numel,
            )
        return t

    def _conflict_sites(self) -> dict:
        rep = self.conflict_report if self.conflict_report is not None else self.report
        idx = self.__dict__.get("_conf_idx")
        if idx is None:
            idx = self.__dict__["_conf_idx"] = {s.key: s for s in rep.sites}
        return idx

    def cell(self, sites: Iterable) -> CellPrediction:
        n = self.report.n
        merged_sq = 0.0
        base_sq = 0.0
        contrib_sq = np.zeros(n)
        coeff_sum = np.zeros(n)
        weight_sum = np.zeros(n)
        dens_sum = np.zeros(n)
        dens_cnt = np.zeros(n)
        numel = 0
        keys = []
        for s in sites:
            keys.append(s.key)
            t = self._site_terms(s)
            if not t:
                continue
            merged_sq += t[0]
            contrib_sq += t[1]
            base_sq += t[2]
            coeff_sum += t[3]
            weight_sum += t[4]
            dens_sum += t[5]
            dens_cnt += t[6]
            numel += t[7]
        merged = math.sqrt(max(merged_sq, 0.0))
        contrib = np.sqrt(contrib_sq)
        total = float(contrib.sum())
        share = contrib / total if total > 0 else np.zeros(n)
        retained = merged / total if total > 0 else math.nan
        tsc, dens, sc = self._trimmed(keys)
        with np.errstate(invalid="ignore", divide="ignore"):
            density = np.where(dens_cnt > 0, dens_sum / np.maximum(dens_cnt, 1), np.nan)
        return CellPrediction(
            merged_norm=merged,
            merged_relative_norm=merged / math.sqrt(base_sq) if base_sq > 0 else 0.0,
            retained=retained,
            share=share,
            coeff=coeff_sum / numel if numel else np.zeros(n),
            weight=weight_sum / numel if numel else np.zeros(n),
            density=density,
            trimmed_sign_conflict=tsc,
            measured_density=dens,
            numel=numel,
            sign_conflict=sc,
            conflict_trimmed=conflict_is_trimmed(self.method),
        )

    def _trimmed(self, keys) -> tuple[float, float, float]:
        """(trimmed sign conflict, its density, untrimmed sign conflict), measured."""
        rep = self.conflict_report if self.conflict_report is not None else self.report
        idx = self._conflict_sites()
        nz = conf = mnz = mconf = 0
        for k in keys:
            s = idx.get(k)
            if s is not None:
                nz += s.trim_multi_nz
                conf += s.trim_multi_conflict
                mnz += s.multi_nz
                mconf += s.multi_conflict
        return (conf / nz if nz else 0.0), rep.density, (mconf / mnz if mnz else 0.0)


def plan_models_to_report(plan, report) -> dict[str, int]:
    """Plan model reference -> index in report.models (by resolved path, then by the string)."""

    def key(p) -> str:
        try:
            return str(Path(p).expanduser().resolve())
        except OSError:
            return str(p)

    index = {key(m): i for i, m in enumerate(report.models)}
    out = {}
    for ref in plan.referenced_models():
        k = key(plan.model_path(ref)) if hasattr(plan, "model_path") else key(ref)
        if k in index:
            out[ref] = index[k]
        elif ref in report.models:
            out[ref] = report.models.index(ref)
    return out


def is_base(plan, report) -> Callable[[str], bool]:
    try:
        base = str(Path(report.base).expanduser().resolve())
    except OSError:
        base = report.base

    def check(ref: str) -> bool:
        try:
            return str(Path(plan.model_path(ref)).expanduser().resolve()) == base
        except OSError:
            return ref == report.base

    return check


def from_plan(report, plan, *, conflict_report=None) -> WhatIf:
    """Resolve the plan's parameters at one tensor of every site of the report and build a WhatIf.

    Raises the plan's InputError when it cannot be resolved (e.g. a required weight matches nothing)."""
    method = plan.merge_method
    m = _method(method)
    n_layers = len(report.layers())
    to_idx = plan_models_to_report(plan, report)
    base_check = is_base(plan, report)
    warnings = []
    refs = plan.input_models() if hasattr(plan, "input_models") else []
    unknown = [r for r in refs if r not in to_idx and not base_check(r)]
    if unknown:
        warnings.append(f"not in this analysis (ignored by the prediction): {', '.join(unknown)}")
    note = method_note(method)
    if getattr(plan, "slices", None) is not None:
        note = f"{method}: slices plan — predicted per output layer as if layer i came from layer i"
    site_coeffs = {}
    cache: dict[tuple, SiteCoefficients] = {}
    for s in report.sites:
        name = s.tensors[0] if s.tensors else None
        if name is None:
            continue
        res = plan.resolve(name, num_layers=max(n_layers, 1))
        mps: list[dict | None] = [None] * report.n
        base_param = None
        for ref, mp in res.model_params.items():
            if ref in to_idx:
                mps[to_idx[ref]] = mp
            elif base_check(ref):
                base_param = mp
        key = (_freeze(res.params), tuple(_freeze(mp) for mp in mps), _freeze(base_param))
        sc = cache.get(key)
        if sc is None:
            sc, measured = _coefficients(
                m, res.params, mps, base_param, lambda s=s, mps=mps: _mean_cosine(s, mps), lambda s=s: _energy(s)
            )
            if not measured:  # the same parameters give the same coefficients at every site
                cache[key] = sc
        site_coeffs[s.key] = sc
    return WhatIf(report, method, site_coeffs, note=note, conflict_report=conflict_report, warnings=warnings)


def _mean_cosine(site, mps: Sequence[dict | None]) -> float:
    """The mean pairwise cosine of the task vectors of the plan's models at a site (0 without a pair)."""
    live = [i for i, mp in enumerate(mps) if mp is not None]
    vals = [
        site.dot[a, b] / math.sqrt(site.sq[a] * site.sq[b])
        for a in live
        for b in live
        if a < b and site.sq[a] > 0 and site.sq[b] > 0
    ]
    return float(np.mean(vals)) if vals else 0.0


def _energy(site) -> np.ndarray:
    """Each model's mean square task-vector entry at a site."""
    return np.asarray(site.sq, dtype=np.float64) / max(int(site.numel), 1)


def _freeze(d):
    if d is None:
        return None
    return tuple(sorted((k, v if not isinstance(v, (list, dict)) else repr(v)) for k, v in d.items()))


def uniform_density(plan_whatif: WhatIf) -> float | None:
    """The single density every included model uses everywhere, or None when it varies / is unset."""
    vals = set()
    for sc in plan_whatif.site_coeffs.values():
        for c, d in zip(sc.coeff, sc.density):
            if c != 0 and not math.isnan(d):
                vals.add(round(float(d), 6))
    return vals.pop() if len(vals) == 1 else None
