"""Spectral interference of task vectors, opt-in (`mergescope analyze --spectral [--rank K]`).

Sign conflicts and cosines look at coordinates; merged task vectors also interfere along *directions*. Per
2-D attention/MLP matrix, each task vector Δᵢ gets its top-K singular triplets (Uᵢ, Σᵢ, Vᵢ), float32, and:

- spectral_energy[i] = Σⱼ σⱼ² / ‖Δᵢ‖²_F: how much of Δᵢ rank K holds;
- subspace_overlap[i,j] = (‖UᵢᵀUⱼ‖²_F + ‖VᵢᵀVⱼ‖²_F) / (2k), k = min(kᵢ, kⱼ) (= K unless a Δ has lower rank);
- sti = ‖(ÛᵀÛ − I) Σ̂ (V̂ᵀV̂ − I)‖₁ / ‖Σ̂‖₁ (‖·‖₁: sum of |entries|), Û = [U₁…U_N], V̂ likewise, Σ̂ =
  blockdiag(Σᵢ): task singular interference (Gargiulo et al., CVPR 2025), normalised to be scale-free;
- sar[i] = ‖PΔᵢ‖_F / ‖Δᵢ‖_F, P the projector on the top left singular vectors of the merged task vector
  M = Σᵢ cᵢΔᵢ (cᵢ = 1, or a plan's coefficients) holding 95 % of ‖M‖²_F (subspace alignment ratio,
  Marczak et al. 2025). P's rank is capped at K; `sar_capped` counts the matrices where K was not enough.

Choices, and why:
- randomized SVD (Halko, Martinsson & Tropp 2011): a Gaussian sketch of K + 32 columns, 2 power iterations,
  re-orthonormalised at every step (as accurate as K + 16 with 3, and 13 % faster); an exact SVD where
  min(m, n) ≤ 2(K + 32) costs no more. Against float64 at K = 64 on 2048² matrices: where σⱼ ∝ 1/j the
  energy is within 2e-5 and the subspace overlap with the exact one 0.997; σⱼ ∝ 1/√j: 2e-3 and 0.96; a flat
  spectrum (noise) has no well-defined top-K subspace, and its energy comes out ~1e-2 low;
- orthonormalisation by the eigendecomposition of the small Gram matrix (twice at the end), not Householder QR:
  as accurate here, and thin GEMMs do not stall on a loaded CPU as QR's many small parallel steps do;
- the sketch is seeded from Δ's content: identical task vectors get identical factors, different ones
  independent sketches (a shared sketch would correlate the estimated subspaces of flat spectra);
- triplets with σ ≤ 1e-5·σ₁ are numerically null and dropped (a rank-2 LoRA is compared on 2 directions);
- the diagonal blocks of ÛᵀÛ − I are 0 in exact arithmetic and set to 0, so rounding is not interference;
- embeddings and LM head are left out: their rows are tokens, not a map's outputs.

Sites keep additive sums (sites.py); energy and sar weigh matrices by ‖Δᵢ‖², overlap by ‖Δᵢ‖_F‖Δⱼ‖_F, sti by ‖Σ̂‖₁.
"""

from __future__ import annotations

import hashlib
import math
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mergescope.io.errors import InputError
from mergescope.io.naming import PROJECTION_GROUPS, site_of
from mergescope.io.progress import Cancelled, Progress, ShouldStop
from mergescope.stats.sites import Aggregation, SiteSet, Sums, div, site_sort_key

DEFAULT_RANK = 64
OVERSAMPLE = 32
POWER_ITERS = 2
SAR_ENERGY = 0.95
NULL_TOL = 1e-5  # σ ≤ NULL_TOL·σ₁: numerically null, not part of the subspace
SPECTRAL_GROUPS = PROJECTION_GROUPS
FORMAT = 1  # in the cache key: bump when a definition or a solver default changes

Weights = Callable[[str], "Sequence[float] | None"]  # tensor name -> per-model coefficients (None: all 1)


def _orth(y):
    """An orthonormal basis of y's columns (to float32 rounding after a second call): y·V·Λ^-½ from the
    eigendecomposition of yᵀy. Tiny eigenvalues are clamped, never divided by."""
    import torch

    w, v = torch.linalg.eigh((y.T @ y).double())
    w = w.clamp_min(float(w[-1]) * 1e-12 + 1e-300)
    return y @ (v / w.sqrt()).to(y.dtype)


def top_svd(a, k: int, *, oversample: int = OVERSAMPLE, niter: int = POWER_ITERS, seed: int = 0, exact_max=None):
    """(U [m, k'], S [k'] descending, V [n, k']) of `a`'s top k' = min(k, m, n) singular triplets.
    Randomized unless min(m, n) ≤ `exact_max` (default 2(k + oversample)), where the exact SVD is as cheap."""
    import torch

    m, n = a.shape
    k = min(k, m, n)
    width = min(k + oversample, m, n)
    if min(m, n) <= (2 * width if exact_max is None else exact_max):
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        return u[:, :k], s[:k], vh[:k].T
    g = torch.Generator(device=a.device).manual_seed(seed)
    q = _orth(a @ torch.randn(n, width, generator=g, device=a.device, dtype=a.dtype))
    for _ in range(niter):
        q = _orth(a @ _orth(a.T @ q))  # the power steps need a basis of the span: one pass
    q = _orth(q)  # Qᵀa needs Q orthonormal: a second pass
    ub, s, vh = torch.linalg.svd(q.T @ a, full_matrices=False)
    return q @ ub[:, :k], s[:k], vh[:k].T


def _seed(name: str, t, sq: float) -> int:
    """A sketch seed from the matrix's content (its sum and energy) and name."""
    packed = struct.pack("<dd", float(t.sum()), sq)
    return int.from_bytes(hashlib.blake2b(name.encode() + packed, digest_size=8).digest(), "little") >> 1


def _energy(t) -> float:
    import torch

    return float(torch.linalg.vector_norm(t).double() ** 2)  # float32, cascade-summed: no float64 copy


def matrix_site(deltas: Sequence, *, rank=DEFAULT_RANK, coeffs=None, name="", site=None, **solver) -> SpectralSite:
    """Add one matrix's terms to `site` (a new one by default) and return it. `deltas`: one float [m, n]
    task vector per model (None or zeros: unchanged); `coeffs`: the merged task vector's weights (None:
    all 1); `solver`: top_svd's oversample, niter, exact_max."""
    import torch

    n = len(deltas)
    st = site if site is not None else SpectralSite(None, "", "", n)
    st.matrices.append(name)
    sqs = [_energy(d) if d is not None else 0.0 for d in deltas]
    facts: list = [None] * n
    for i, d in enumerate(deltas):
        if sqs[i] <= 0:
            continue
        u, s, v = top_svd(d, rank, seed=_seed(name, d, sqs[i]), **solver)
        keep = int((s > NULL_TOL * s[0]).sum())
        facts[i] = (u[:, :keep], s[:keep], v[:, :keep])
        st.sq[i] += sqs[i]
        st.top_sq[i] += min(float((s[:keep].double() ** 2).sum()), sqs[i])
        st.rank[i] += keep
    live = [i for i in range(n) if facts[i] is not None]
    if live:
        _interference(st, [facts[i] for i in live], live, sqs)
    c = [1.0] * n if coeffs is None else [float(x) for x in coeffs]
    terms = [i for i in live if c[i] != 0]
    if not terms:
        return st
    if len(terms) == 1:  # M = c·Δᵢ: Δᵢ's own factors
        i = terms[0]
        um, sm, msq = facts[i][0], facts[i][1] * abs(c[i]), c[i] ** 2 * sqs[i]
    else:
        merged = deltas[terms[0]] * c[terms[0]]
        for i in terms[1:]:
            merged.add_(deltas[i], alpha=c[i])
        msq = _energy(merged)
        if msq <= 0:
            return st  # the task vectors cancel: no merged subspace to project on
        um, sm, _ = top_svd(merged, rank, seed=_seed(name, merged, msq), **solver)
        del merged
        keep = int((sm > NULL_TOL * sm[0]).sum())
        um, sm = um[:, :keep], sm[:keep]
    cum = torch.cumsum(sm.double() ** 2, 0)
    reached = torch.nonzero(cum >= (SAR_ENERGY - 1e-6) * msq)
    r = int(reached[0]) + 1 if len(reached) else len(sm)
    kept = min(float(cum[r - 1]), msq)
    st.merged, st.merged_sq, st.merged_kept = st.merged + 1, st.merged_sq + msq, st.merged_kept + kept
    st.sar_rank, st.sar_capped = st.sar_rank + r, st.sar_capped + (0 if len(reached) else 1)
    for i in live:
        st.proj_sq[i] += min(_energy(um[:, :r].T @ deltas[i]), sqs[i])
    return st


def _interference(st: SpectralSite, facts: list, live: list[int], sqs: list[float]) -> None:
    """Pairwise overlaps and the STI terms of one matrix from its task vectors' factors."""
    import torch

    ks = [f[1].numel() for f in facts]
    offs = np.concatenate([[0], np.cumsum(ks)]).tolist()
    gu, gv = torch.cat([f[0] for f in facts], 1), torch.cat([f[2] for f in facts], 1)
    gu, gv = (gu.T @ gu).double(), (gv.T @ gv).double()
    for a in range(len(facts)):  # ÛᵀÛ − I: its diagonal blocks UᵢᵀUᵢ − I are exactly 0
        blk = slice(offs[a], offs[a + 1])
        gu[blk, blk] = gv[blk, blk] = 0.0
    s = torch.cat([f[1] for f in facts]).double()
    st.sti_num += float(((gu * s) @ gv).abs().sum())
    st.sti_den += float(s.sum())
    for a in range(len(facts)):
        for b in range(a + 1, len(facts)):
            ra, rb = slice(offs[a], offs[a + 1]), slice(offs[b], offs[b + 1])
            o = float(gu[ra, rb].square().sum() + gv[ra, rb].square().sum()) / (2 * min(ks[a], ks[b]))
            i, j = live[a], live[b]
            w = math.sqrt(sqs[i] * sqs[j])
            for x, y in ((i, j), (j, i)):
                st.overlap_w[x, y] += w * o
                st.pair_w[x, y] += w


# -- sums per site, aggregates -----------------------------------------------------------------


@dataclass
class SpectralSite(Sums):
    """Additive spectral sums for one (layer, group, module) over its matrices."""

    SCALARS = ("sti_num", "sti_den", "merged", "merged_sq", "merged_kept", "sar_rank", "sar_capped")
    PER_MODEL = ("sq", "top_sq", "proj_sq", "rank")
    PER_PAIR = ("overlap_w", "pair_w")
    INTS = ("rank",)
    NAMES = "matrices"

    matrices: list[str] = field(default_factory=list)
    sti_num: float = 0.0  # Σ ‖(ÛᵀÛ − I) Σ̂ (V̂ᵀV̂ − I)‖₁
    sti_den: float = 0.0  # Σ ‖Σ̂‖₁
    merged: int = 0  # matrices whose merged task vector is not 0
    merged_sq: float = 0.0  # Σ ‖M‖²
    merged_kept: float = 0.0  # Σ ‖PM‖² (≥ 95 % of ‖M‖² unless capped)
    sar_rank: int = 0  # Σ rank of P
    sar_capped: int = 0  # matrices where K triplets held < 95 % of ‖M‖²
    sq: np.ndarray = None  # [N] Σ ‖Δᵢ‖²
    top_sq: np.ndarray = None  # [N] Σ top-K σ²
    proj_sq: np.ndarray = None  # [N] Σ ‖PΔᵢ‖²
    rank: np.ndarray = None  # [N] Σ kᵢ (triplets kept)
    overlap_w: np.ndarray = None  # [N, N] Σ ‖Δᵢ‖‖Δⱼ‖·overlap
    pair_w: np.ndarray = None  # [N, N] Σ ‖Δᵢ‖‖Δⱼ‖


class SpectralAggregate(Aggregation):
    """Spectral metrics of a set of sites (a cell, a module column, a row, the whole model)."""

    SUMS = SpectralSite

    @property
    def matrices(self) -> int:
        return len(self.total.matrices)

    def spectral_energy(self, i: int) -> float:
        return div(self.total.top_sq[i], self.total.sq[i])

    def sar(self, i: int) -> float:
        return math.sqrt(div(self.total.proj_sq[i], self.total.sq[i]))

    def subspace_overlap(self, i: int, j: int) -> float:
        if i == j:
            return 1.0 if self.total.sq[i] > 0 else 0.0
        return div(self.total.overlap_w[i, j], self.total.pair_w[i, j])

    @property
    def sti(self) -> float:
        return div(self.total.sti_num, self.total.sti_den)

    @property
    def merged_energy(self) -> float:
        """Share of the merged task vector's energy P holds (0.95 unless capped at K)."""
        return div(self.total.merged_kept, self.total.merged_sq)

    @property
    def sar_rank(self) -> float:
        """Mean rank of P over the matrices."""
        return div(self.total.sar_rank, self.total.merged)

    @property
    def sar_capped(self) -> float:
        """Fraction of the matrices where K triplets held < 95 % of the merged energy."""
        return div(self.total.sar_capped, self.total.merged)

    def values(self) -> dict:
        """Every metric as plain numbers: per model lists, the pair matrix, scalars."""
        r = range(self.total.n_models)
        return {
            "spectral_energy": [self.spectral_energy(i) for i in r],
            "sar": [self.sar(i) for i in r],
            "subspace_overlap": [[self.subspace_overlap(i, j) for j in r] for i in r],
            **_group_values(self),
        }


@dataclass
class SpectralResult(SiteSet):
    """The spectral pass over one base + models at rank K (`Report.spectral`)."""

    models: list[str]
    rank: int
    sites: list[SpectralSite]
    oversample: int = OVERSAMPLE
    power_iters: int = POWER_ITERS
    sar_energy: float = SAR_ENERGY
    weights: str | None = None  # what weighted the merged task vector: None = the plain sum
    elapsed_s: float = 0.0
    bytes_read: int = 0
    from_cache: bool = False  # not written to JSON

    AGGREGATE = SpectralAggregate

    def cells(self) -> dict[tuple[int | None, str], dict]:
        """{(layer, group): SpectralAggregate.values()} for every cell with matrices."""
        return {key: self.cell(*key).values() for key in self.cell_keys()}

    # -- JSON (README, section JSON) ----------------------------------------------------------------
    def to_json(self) -> dict:
        whole = self.whole()
        n, names = self.n, self.models
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        out = {
            "rank": self.rank,
            "oversample": self.oversample,
            "power_iters": self.power_iters,
            "sar_energy": self.sar_energy,
            "weights": self.weights,
            "groups": list(SPECTRAL_GROUPS),
            "matrices": whole.matrices,
            "model_summary": [
                {"model": m, "spectral_energy": whole.spectral_energy(i), "sar": whole.sar(i)}
                for i, m in enumerate(names)
            ],
            "pairs": [
                {"a": names[i], "b": names[j], "subspace_overlap": whole.subspace_overlap(i, j)} for i, j in pairs
            ],
            "summary": _group_values(whole),
            "cells": [],
            "pair_cells": [],
            "group_cells": [],
        }
        for layer, group in self.cell_keys():
            agg = self.cell(layer, group)
            where = {"layer": layer, "group": group}
            for i, m in enumerate(names):
                out["cells"].append({**where, "model": m, "spectral_energy": agg.spectral_energy(i), "sar": agg.sar(i)})
            for i, j in pairs:
                out["pair_cells"].append(
                    {**where, "a": names[i], "b": names[j], "subspace_overlap": agg.subspace_overlap(i, j)}
                )
            out["group_cells"].append({**where, **_group_values(agg)})
        out["sites"] = [s.to_dict() for s in self.sites]
        out["elapsed_s"] = self.elapsed_s
        out["bytes_read"] = self.bytes_read
        return out

    @classmethod
    def from_json(cls, data: dict, models: Sequence[str] | None = None) -> SpectralResult:
        names = list(models) if models is not None else [m["model"] for m in data["model_summary"]]
        sites = [SpectralSite.from_dict(s, len(names)) for s in data["sites"]]
        res = cls(names, int(data["rank"]), sites, int(data["oversample"]), int(data["power_iters"]))
        res.sar_energy, res.weights = float(data["sar_energy"]), data["weights"]
        res.elapsed_s, res.bytes_read = float(data["elapsed_s"]), int(data["bytes_read"])
        return res


def _group_values(agg: SpectralAggregate) -> dict:
    keys = ("sti", "merged_energy", "sar_rank", "sar_capped", "matrices")
    return {k: getattr(agg, k) for k in keys}


# -- the pass ----------------------------------------------------------------------------------
def spectral_matrices(base, models: Sequence) -> list[str]:
    """The 2-D float attention/MLP tensors every model has in the base's shape, in checkpoint order."""
    out = []
    for nm in base.names():
        info = base.info(nm)
        if not info.is_float or len(info.shape) != 2 or site_of(nm).group not in SPECTRAL_GROUPS:
            continue
        if all(nm in m and tuple(m.info(nm).shape) == tuple(info.shape) for m in models):
            out.append(nm)
    return out


def analyze_spectral(
    base,
    models: Sequence,
    *,
    rank: int = DEFAULT_RANK,
    device: str = "cpu",
    weights: Weights | None = None,
    weights_label: str | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    oversample: int = OVERSAMPLE,
    niter: int = POWER_ITERS,
) -> SpectralResult:
    """One pass over the matrices of base + models (open checkpoints), one matrix in memory at a time:
    the base's float32 copy, then N float32 task vectors (and the merged one), pages released once read."""
    import torch

    if rank < 1:
        raise InputError(f"--rank {rank}: must be at least 1 (the top-K singular directions; 64 is typical)")
    t0 = time.perf_counter()
    names = spectral_matrices(base, models)
    size = {nm: base.info(nm).nbytes + sum(m.info(nm).nbytes for m in models) for nm in names}
    total, done = sum(size.values()), 0
    dev = torch.device(device)
    sites: dict[tuple, SpectralSite] = {}
    for ti, nm in enumerate(names):
        if should_stop is not None and should_stop():
            raise Cancelled()
        where = site_of(nm)
        key = (where.layer, where.group, where.module)
        st = sites.get(key) or sites.setdefault(key, SpectralSite(*key, len(models)))
        b = torch.nan_to_num_(base.get(nm).to(dev, torch.float32, copy=True), nan=0.0, posinf=0.0, neginf=0.0)
        deltas = []
        for m in models:
            d = m.get(nm).to(dev, torch.float32, copy=True)
            d.sub_(b)
            deltas.append(torch.nan_to_num_(d, nan=0.0, posinf=0.0, neginf=0.0))
            m.release(nm)
        del b
        base.release(nm)
        coeffs = weights(nm) if weights is not None else None
        matrix_site(deltas, rank=rank, coeffs=coeffs, name=nm, site=st, oversample=oversample, niter=niter)
        del deltas
        done += size[nm]
        if progress is not None:
            progress(done, total, f"spectral {ti + 1}/{len(names)} {nm}")
    return SpectralResult(
        models=[m.label for m in models],
        rank=rank,
        sites=sorted(sites.values(), key=site_sort_key),
        oversample=oversample,
        power_iters=niter,
        weights=weights_label if weights is not None else None,
        elapsed_s=time.perf_counter() - t0,
        bytes_read=done,
    )
