"""The per-tensor kernel of the analysis: all task-vector sums of one tensor, all models at once.

Three chunked passes over the stored tensors (chunks sized to stay in cache; τ is recomputed from the
memory-mapped inputs in each pass rather than kept whole, so memory stays at a few chunks):

1. fill τ for every model; accumulate the Gram matrix of [θ₀, τ₁..τ_N] (norms, dot products, dots
   with the base) and a histogram of the top 16 bits of each |τ| (float bits of a non-negative
   float order like the floats);
2. radix select: the histogram names the bucket holding the k-th largest |τ|; a histogram of the
   low 16 bits of that bucket's members gives the exact value. Exact with any number of ties, never
   a sort, two cheap passes;
3. encode each coordinate's (sign, kept-by-trim) across the N models as one base-6 integer and
   histogram it; every sign statistic (pairwise both/opposite, all-N conflict, trimmed conflict,
   non-zero counts) is a weighted sum over that small histogram. Top-20 % energy is a masked dot.

Sums of products are accumulated in float32 within a chunk and float64 across chunks.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

TOPK_FRACTION = 0.2
CHUNK_CPU = 1 << 18
CHUNK_GPU = 1 << 24
_TINY = float(np.finfo(np.float32).tiny)
MAX_HIST_MODELS = 7  # 6**7 code bins; more models use the pairwise fallback in metrics.py
_HI = 1 << 15  # |τ| bits >> 16 of a finite non-negative float32 is < 2**15


@lru_cache(maxsize=None)
def _decode(n_models: int):
    """For every base-6 code: per-model sign (-1/0/1) and trimmed sign."""
    codes = np.arange(6 ** n_models)
    states = np.stack([(codes // 6 ** i) % 6 for i in range(n_models)])  # [N, bins]
    sign = (states % 3) - 1
    kept = states // 3
    return sign, sign * kept


def _fill(raw_base, raws, s, e, M, clean):
    """M[0] = θ₀ chunk, M[i+1] = τᵢ chunk (float32). Returns non-finite counts when cleaning."""
    c = e - s
    b = M[0, :c]
    b.copy_(raw_base[s:e])
    bad = None
    if clean:
        bad = [int((~torch.isfinite(b)).sum())]
        torch.nan_to_num_(b, nan=0.0, posinf=0.0, neginf=0.0)
    for i, r in enumerate(raws):
        t = M[i + 1, :c]
        t.copy_(r[s:e])
        t.sub_(b)
        if clean:
            bad.append(int((~torch.isfinite(t)).sum()))
            torch.nan_to_num_(t, nan=0.0, posinf=0.0, neginf=0.0)
    return bad


def _select_bucket(hist: np.ndarray, k: int) -> tuple[int, int]:
    """Bucket b holding the k-th largest (1-based) and its rank j inside the bucket (from the top)."""
    above = np.cumsum(hist[::-1])[::-1]  # above[x] = Σ_{x' ≥ x} hist
    b = int(np.nonzero(above >= k)[0].max())
    above_b = int(above[b + 1]) if b + 1 < len(hist) else 0
    return b, k - above_b


def tensor_stats(raw_base: torch.Tensor, raws: list[torch.Tensor], density: float, st, device="cpu") -> dict:
    """Add one tensor's sums (all models) to SiteStats `st`. Returns non-finite counts
    {"base": b, 0: m0, ...} when any were found (they are zeroed for the statistics)."""
    dev = torch.device(device)
    n_models = len(raws)
    raw_base = raw_base.reshape(-1)
    raws = [r.reshape(-1) for r in raws]
    n = raw_base.numel()
    k_trim = int(math.floor(density * n)) if density < 1.0 else n
    k_top = int(math.floor(TOPK_FRACTION * n))
    ks = sorted({k for k in (k_trim, k_top) if 0 < k < n})
    chunk = CHUNK_CPU if dev.type == "cpu" else CHUNK_GPU
    chunk = min(chunk, max(n, 1))
    M = torch.empty((n_models + 1, chunk), dtype=torch.float32, device=dev)
    if dev.type != "cpu" and raw_base.device != dev:
        raw_base = raw_base.to(dev, non_blocking=True)
        raws = [r.to(dev, non_blocking=True) for r in raws]

    offs = (torch.arange(n_models, device=dev, dtype=torch.int32) * _HI)[:, None]
    nonfinite: dict = {}
    # ---- pass 1: Gram + high-bits histogram ----------------------------------------------------
    for attempt in range(2):
        clean = attempt == 1
        G = torch.zeros((n_models + 1, n_models + 1), dtype=torch.float64, device=dev)
        hist_hi = torch.zeros(n_models * _HI, dtype=torch.int64, device=dev)
        bad_tot = None
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            bad = _fill(raw_base, raws, s, e, M, clean)
            if bad is not None:
                bad_tot = bad if bad_tot is None else [x + y for x, y in zip(bad_tot, bad)]
            Mc = M[:, : e - s]
            G += (Mc @ Mc.T).double()
            if ks:
                key = Mc[1:].abs().view(torch.int32).bitwise_right_shift_(16).add_(offs)
                hist_hi += torch.bincount(key.view(-1), minlength=n_models * _HI)
        if bool(torch.isfinite(G).all()) or clean:
            break
    if bad_tot is not None:
        nonfinite = {"base": bad_tot[0], **{i: bad_tot[i + 1] for i in range(n_models) if bad_tot[i + 1]}}

    # ---- pass 2: exact thresholds by radix select on the low 16 bits -----------------------------
    thr: list[dict[int, float]] = [{} for _ in range(n_models)]
    if ks:
        hh = hist_hi.cpu().numpy().reshape(n_models, _HI)
        wanted = {}  # (model, bucket) -> slot
        picks = []  # (model, k, slot, j)
        for i in range(n_models):
            for k in ks:
                b, j = _select_bucket(hh[i], k)
                slot = wanted.setdefault((i, b), len(wanted))
                picks.append((i, k, slot, j))
        buckets = torch.full((n_models, 2), -1, dtype=torch.int32, device=dev)
        slots = torch.zeros((n_models, 2), dtype=torch.int32, device=dev)
        col = [0] * n_models
        for (i, b), slot in wanted.items():
            buckets[i, col[i]] = b
            slots[i, col[i]] = slot
            col[i] += 1
        hist_lo = torch.zeros(len(wanted) << 16, dtype=torch.int64, device=dev)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            _fill(raw_base, raws, s, e, M, bool(nonfinite))
            bits = M[1:, : e - s].abs().view(torch.int32)
            hi = bits >> 16
            for c in range(max(col)):
                sel = hi == buckets[:, c : c + 1]
                lo = (bits & 0xFFFF) + (slots[:, c : c + 1] << 16)
                hist_lo += torch.bincount(lo[sel], minlength=len(wanted) << 16)
        hl = hist_lo.cpu().numpy().reshape(len(wanted), 1 << 16)
        inv = {slot: key for key, slot in wanted.items()}
        for i, k, slot, j in picks:
            low, _ = _select_bucket(hl[slot], j)
            bits_val = (inv[slot][1] << 16) | low
            thr[i][k] = float(np.array([bits_val], dtype=np.int32).view(np.float32)[0])

    Gd = G.cpu().numpy()
    st.numel += n
    st.base_sq += float(Gd[0, 0])
    for i in range(n_models):
        st.sq[i] += Gd[i + 1, i + 1]
        st.dot_base[i] += Gd[0, i + 1]
        for j in range(n_models):
            if i != j:
                st.dot[i, j] += Gd[i + 1, j + 1]
        st.nonfinite[i] += nonfinite.get(i, 0)

    # ---- pass 2: sign codes + top-k energy -------------------------------------------------------
    def trim_thr(i):
        if k_trim >= n:
            return 0.0  # keep everything (ties with 0 are sign-neutral)
        if k_trim <= 0:
            return math.inf
        return thr[i][k_trim]

    t_trim = [max(trim_thr(i), _TINY) for i in range(n_models)]
    t_top = [thr[i].get(k_top) if 0 < k_top < n else (0.0 if k_top >= n else None) for i in range(n_models)]
    bins = 6 ** n_models
    hist = torch.zeros(bins, dtype=torch.int64, device=dev)
    offset = float(sum(6 ** i for i in range(n_models)))
    pw = torch.tensor([float(6 ** i) for i in range(n_models)], device=dev)[:, None]
    trim_t = torch.tensor(t_trim, dtype=torch.float32, device=dev)[:, None]
    has_top = [t is not None and t > 0 for t in t_top]
    shared_top = all(not h or t_top[i] == t_trim[i] for i, h in enumerate(has_top))
    top_t = torch.tensor([t if h else math.inf for t, h in zip(t_top, has_top)], dtype=torch.float32, device=dev)[:, None]
    e_ge_t = torch.zeros(n_models, dtype=torch.float64, device=dev)
    c_ge_t = torch.zeros(n_models, dtype=torch.int64, device=dev)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        _fill(raw_base, raws, s, e, M, bool(nonfinite))
        T = M[1:, : e - s]
        A = T.abs()
        kept = A >= trim_t
        m = kept if shared_top else A >= top_t
        if not shared_top:
            c_ge_t += m.sum(1)
        w = torch.where(m, A, 0.0)
        e_ge_t += torch.einsum("ij,ij->i", w, w).double()
        code = torch.sign(T).add_(kept, alpha=3.0).mul_(pw).sum(0).add_(offset)
        hist += torch.bincount(code.to(torch.int32), minlength=bins)
    e_ge = e_ge_t.cpu().numpy()
    c_ge = c_ge_t.cpu().numpy()
    h = hist.cpu().numpy()
    sign, tsign = _decode(n_models)
    nz = sign != 0
    for i in range(n_models):
        st.nonzero[i] += int(h[nz[i]].sum())
        if has_top[i] and shared_top:
            c_ge[i] = int(h[tsign[i] != 0].sum())
    for i in range(n_models):
        for j in range(i + 1, n_models):
            both = int(h[nz[i] & nz[j]].sum())
            opp = int(h[(sign[i] * sign[j]) < 0].sum())
            st.pair_both[i, j] += both
            st.pair_both[j, i] += both
            st.pair_opp[i, j] += opp
            st.pair_opp[j, i] += opp
    pos, neg = (sign > 0).sum(0), (sign < 0).sum(0)
    st.multi_nz += int(h[(pos + neg) >= 2].sum())
    st.multi_conflict += int(h[(pos > 0) & (neg > 0)].sum())
    tpos, tneg = (tsign > 0).sum(0), (tsign < 0).sum(0)
    st.trim_multi_nz += int(h[(tpos + tneg) >= 2].sum())
    st.trim_multi_conflict += int(h[(tpos > 0) & (tneg > 0)].sum())
    # top-k energy: Σ_{a ≥ thr} a² minus the surplus of ties at the threshold
    for i in range(n_models):
        if 0 < k_top < n and t_top[i] is not None:
            if t_top[i] <= 0:  # the k-th largest is 0: the top k hold all the energy
                st.topk_energy[i] += Gd[i + 1, i + 1]
            else:
                st.topk_energy[i] += e_ge[i] - (c_ge[i] - k_top) * t_top[i] ** 2
        elif k_top >= n:
            st.topk_energy[i] += Gd[i + 1, i + 1]
    return nonfinite
