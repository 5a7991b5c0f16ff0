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

from .metrics import TOPK_FRACTION  # one definition, beside the metric docs

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


class _TorchPasses:
    """The three passes with torch ops on chunks (any device, any float dtype)."""

    def __init__(self, raw_base, raws, n, dev):
        self.dev, self.n, self.N = dev, n, len(raws)
        if dev.type != "cpu" and raw_base.device != dev:
            raw_base = raw_base.to(dev, non_blocking=True)
            raws = [r.to(dev, non_blocking=True) for r in raws]
        self.base, self.raws = raw_base, raws
        self.chunk = min(CHUNK_CPU if dev.type == "cpu" else CHUNK_GPU, max(n, 1))
        self.M = torch.empty((self.N + 1, self.chunk), dtype=torch.float32, device=dev)
        self.clean = False

    def _chunks(self):
        for s in range(0, self.n, self.chunk):
            e = min(self.n, s + self.chunk)
            bad = _fill(self.base, self.raws, s, e, self.M, self.clean)
            yield self.M[:, : e - s], bad

    def pass1(self, want_hist: bool):
        N, dev = self.N, self.dev
        offs = (torch.arange(N, device=dev, dtype=torch.int32) * _HI)[:, None]
        for attempt in range(2):
            self.clean = attempt == 1
            G = torch.zeros((N + 1, N + 1), dtype=torch.float64, device=dev)
            hist = torch.zeros(N * _HI, dtype=torch.int64, device=dev) if want_hist else None
            bad_tot = [0] * (N + 1)
            for Mc, bad in self._chunks():
                if bad is not None:
                    bad_tot = [x + y for x, y in zip(bad_tot, bad)]
                G += (Mc @ Mc.T).double()
                if want_hist:
                    key = Mc[1:].abs().view(torch.int32).bitwise_right_shift_(16).add_(offs)
                    hist += torch.bincount(key.view(-1), minlength=N * _HI)
            if self.clean or bool(torch.isfinite(G).all()):
                break
        hh = hist.cpu().numpy().reshape(N, _HI) if want_hist else None
        return G.cpu().numpy(), hh, bad_tot

    def pass2(self, buckets: np.ndarray, slots: np.ndarray, nslots: int) -> np.ndarray:
        dev = self.dev
        bk = torch.from_numpy(buckets).to(dev)
        sl = torch.from_numpy(slots).to(dev)
        hist = torch.zeros(nslots << 16, dtype=torch.int64, device=dev)
        for Mc, _ in self._chunks():
            bits = Mc[1:].abs().view(torch.int32)
            hi = bits >> 16
            for c in range(buckets.shape[1]):
                sel = hi == bk[:, c : c + 1]
                lo = (bits & 0xFFFF) + (sl[:, c : c + 1] << 16)
                hist += torch.bincount(lo[sel], minlength=nslots << 16)
        return hist.cpu().numpy().reshape(nslots, 1 << 16)

    def pass3(self, t_trim: list[float], t_top: list[float]):
        N, dev = self.N, self.dev
        bins = 6 ** N
        hist = torch.zeros(bins, dtype=torch.int64, device=dev)
        offset = float(sum(6 ** i for i in range(N)))
        pw = torch.tensor([float(6 ** i) for i in range(N)], device=dev)[:, None]
        trim_t = torch.tensor(t_trim, dtype=torch.float32, device=dev)[:, None]
        top_t = torch.tensor(t_top, dtype=torch.float32, device=dev)[:, None]
        shared = t_trim == t_top
        e_ge = torch.zeros(N, dtype=torch.float64, device=dev)
        c_ge = torch.zeros(N, dtype=torch.int64, device=dev)
        for Mc, _ in self._chunks():
            T = Mc[1:]
            A = T.abs()
            kept = A >= trim_t
            m = kept if shared else A >= top_t
            c_ge += m.sum(1)
            w = torch.where(m, A, 0.0)
            e_ge += torch.einsum("ij,ij->i", w, w).double()
            code = torch.sign(T).add_(kept, alpha=3.0).mul_(pw).sum(0).add_(offset)
            hist += torch.bincount(code.to(torch.int32), minlength=bins)
        return hist.cpu().numpy(), e_ge.cpu().numpy(), c_ge.cpu().numpy()


_C_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


class _CPasses:
    """The same passes in the fused C kernels (CPU, float32/bfloat16 contiguous inputs)."""

    @staticmethod
    def usable(raw_base, raws, dev) -> bool:
        from .kernels import lib

        if dev.type != "cpu" or len(raws) > MAX_HIST_MODELS:
            return False
        ts = [raw_base, *raws]
        if not all(t.dtype in _C_DTYPES and t.is_contiguous() and t.device.type == "cpu" for t in ts):
            return False
        return lib() is not None

    def __init__(self, raw_base, raws, n, dev):
        import ctypes

        from .kernels import lib

        self.lib, self.n, self.N = lib(), n, len(raws)
        self.keep = [raw_base, *raws]  # keep the buffers alive while C reads them
        self.args = (ctypes.c_void_p(raw_base.data_ptr()), _C_DTYPES[raw_base.dtype],
                     (ctypes.c_void_p * self.N)(*[r.data_ptr() for r in raws]),
                     (ctypes.c_int * self.N)(*[_C_DTYPES[r.dtype] for r in raws]), self.N, n)

    @staticmethod
    def _p(a: np.ndarray):
        import ctypes

        return a.ctypes.data_as(ctypes.c_void_p)

    def pass1(self, want_hist: bool):
        G = np.zeros((self.N + 1, self.N + 1), dtype=np.float64)
        hist = np.zeros((self.N, _HI), dtype=np.int64)
        bad = np.zeros(self.N + 1, dtype=np.int64)
        self.lib.tv_pass1(*self.args, self._p(G), self._p(hist), self._p(bad), int(want_hist))
        return G, (hist if want_hist else None), [int(x) for x in bad]

    def pass2(self, buckets: np.ndarray, slots: np.ndarray, nslots: int) -> np.ndarray:
        b2 = np.full((self.N, 2), -1, dtype=np.int32)
        s2 = np.zeros((self.N, 2), dtype=np.int32)
        b2[:, : buckets.shape[1]] = buckets
        s2[:, : slots.shape[1]] = slots
        hist = np.zeros((nslots, 1 << 16), dtype=np.int64)
        self.lib.tv_pass2(*self.args, self._p(b2), self._p(s2), nslots, self._p(hist))
        return hist

    def pass3(self, t_trim: list[float], t_top: list[float]):
        hist = np.zeros(6 ** self.N, dtype=np.int64)
        e_ge = np.zeros(self.N, dtype=np.float64)
        c_ge = np.zeros(self.N, dtype=np.int64)
        tt = np.asarray(t_trim, dtype=np.float32)
        tp = np.asarray(t_top, dtype=np.float32)
        self.lib.tv_pass3(*self.args, self._p(tt), self._p(tp), self._p(hist), self._p(e_ge), self._p(c_ge))
        return hist, e_ge, c_ge


def tensor_stats(raw_base: torch.Tensor, raws: list[torch.Tensor], density: float, st, device="cpu") -> dict:
    """Add one tensor's sums (all models) to SiteStats `st`. Returns non-finite counts
    {"base": b, 0: m0, ...} when any were found (they are read as 0 for the statistics)."""
    dev = torch.device(device)
    n_models = len(raws)
    raw_base = raw_base.reshape(-1)
    raws = [r.reshape(-1) for r in raws]
    n = raw_base.numel()
    k_trim = int(math.floor(density * n)) if density < 1.0 else n
    k_top = int(math.floor(TOPK_FRACTION * n))
    ks = sorted({k for k in (k_trim, k_top) if 0 < k < n})
    backend = (_CPasses if _CPasses.usable(raw_base, raws, dev) else _TorchPasses)(raw_base, raws, n, dev)

    # ---- pass 1: Gram + high-bits histogram ----------------------------------------------------
    Gd, hh, bad = backend.pass1(bool(ks))
    nonfinite = {"base": bad[0], **{i: bad[i + 1] for i in range(n_models) if bad[i + 1]}} if any(bad) else {}

    # ---- pass 2: exact thresholds by radix select on the low 16 bits -----------------------------
    thr: list[dict[int, float]] = [{} for _ in range(n_models)]
    if ks:
        wanted: dict[tuple[int, int], int] = {}  # (model, bucket) -> slot
        picks = []  # (model, k, slot, j)
        for i in range(n_models):
            for k in ks:
                b, j = _select_bucket(hh[i], k)
                slot = wanted.setdefault((i, b), len(wanted))
                picks.append((i, k, slot, j))
        width = max(sum(1 for (i2, _) in wanted if i2 == i) for i in range(n_models))
        buckets = np.full((n_models, width), -1, dtype=np.int32)
        slots = np.zeros((n_models, width), dtype=np.int32)
        col = [0] * n_models
        for (i, b), slot in wanted.items():
            buckets[i, col[i]], slots[i, col[i]] = b, slot
            col[i] += 1
        hl = backend.pass2(buckets, slots, len(wanted))
        inv = {slot: key for key, slot in wanted.items()}
        for i, k, slot, j in picks:
            low, _ = _select_bucket(hl[slot], j)
            bits_val = (inv[slot][1] << 16) | low
            thr[i][k] = float(np.array([bits_val], dtype=np.int32).view(np.float32)[0])

    st.numel += n
    st.base_sq += float(Gd[0, 0])
    for i in range(n_models):
        st.sq[i] += Gd[i + 1, i + 1]
        st.dot_base[i] += Gd[0, i + 1]
        for j in range(n_models):
            if i != j:
                st.dot[i, j] += Gd[i + 1, j + 1]
        st.nonfinite[i] += nonfinite.get(i, 0)

    # ---- pass 3: sign codes + top-k energy -------------------------------------------------------
    def trim_thr(i):
        if k_trim >= n:
            return 0.0  # keep everything (ties with 0 are sign-neutral)
        if k_trim <= 0:
            return math.inf
        return thr[i][k_trim]

    t_trim = [max(trim_thr(i), _TINY) for i in range(n_models)]
    # energy of |τ| ≥ the top-20 % threshold; inf (nothing) when k_top is 0 or n (handled below)
    t_top = [max(thr[i][k_top], _TINY) if 0 < k_top < n else math.inf for i in range(n_models)]
    h, e_ge, c_ge = backend.pass3(t_trim, t_top)
    sign, tsign = _decode(n_models)
    nz = sign != 0
    for i in range(n_models):
        st.nonzero[i] += int(h[nz[i]].sum())
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
    # top-k energy: Σ_{a ≥ thr} a² minus the surplus of ties at the threshold; when the k-th largest
    # is 0 (or k = n) the top k hold all the energy
    for i in range(n_models):
        if k_top >= n or (0 < k_top < n and thr[i][k_top] <= 0):
            st.topk_energy[i] += Gd[i + 1, i + 1]
        elif 0 < k_top < n:
            t = t_top[i]
            st.topk_energy[i] += float(e_ge[i]) - (int(c_ge[i]) - k_top) * float(t) ** 2
    return nonfinite
