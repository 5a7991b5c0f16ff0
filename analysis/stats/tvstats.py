"""The per-tensor kernel of the analysis: all task-vector sums of one tensor, all models at once.

Chunked passes over the stored tensors (chunks sized to stay in cache; τ is recomputed from the
memory-mapped inputs in each pass rather than kept whole, so memory stays at a few chunks):

1. fill τ for every model; accumulate the Gram matrix of [θ₀, τ₁..τ_N] (norms, dot products, dots
   with the base) and a histogram of the top 16 bits of each |τ| (float bits of a non-negative
   float order like the floats);
2. radix select (selection.py): the histogram names the bucket holding the k-th largest |τ|; a
   histogram of the low 16 bits of that bucket's members gives the exact value, with any number of
   ties, never a sort;
3. encode each coordinate's (sign, kept-by-trim) across the N models as one base-6 integer and
   histogram it; every sign statistic (pairwise both/opposite, all-N conflict, trimmed conflict,
   non-zero counts) is a weighted sum over that small histogram. Top-20 % energy is a masked dot.

The C kernels usually skip pass 2 (`_two_passes`): pass 1 also counts each bucket's members equal to
its smallest value, which settles most thresholds (bfloat16 task vectors tie heavily); pass 3 sets
aside the few coordinates inside an open bucket. The torch path (any device) runs the three passes.

Sums of products are accumulated in float32 within blocks of 2048 elements and float64 across blocks.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch

from mergescope.stats.passes import (
    SET_ASIDE_MIN,
    TINY,
    TINY_BITS,
    CPasses,
    TorchPasses,
    cpu_backend,
)
from mergescope.stats.selection import float_bits, kth_in_bucket, radix_thresholds, settle_bucket
from mergescope.stats.sites import TOPK_FRACTION

_TINY_BUCKET = TINY_BITS >> 16
AMBIGUOUS_MAX = 0.2  # set-aside fraction (upper bound, summed over models) above which three passes run


@cache
def _decode(n_models: int):
    """For every base-6 code: per-model sign (-1/0/1) and trimmed sign."""
    codes = np.arange(6**n_models)
    states = np.stack([(codes // 6**i) % 6 for i in range(n_models)])  # [N, bins]
    sign = (states % 3) - 1
    kept = states // 3
    return sign, sign * kept


def _cuts(thr, k_trim: int, k_top: int, n: int, n_models: int) -> tuple[list[float], list[float]]:
    """(t_trim, t_top) per model: kept ⇔ |τ| ≥ t_trim, top-k energy over |τ| ≥ t_top."""
    # k_trim ≥ n keeps everything (ties with 0 are sign-neutral), k_trim ≤ 0 nothing
    trim = [0.0 if k_trim >= n else math.inf if k_trim <= 0 else thr[i][k_trim] for i in range(n_models)]
    t_trim = [max(t, TINY) for t in trim]
    # energy of |τ| ≥ the top-20 % threshold; inf (nothing) when k_top is 0 or n (handled by the caller)
    t_top = [max(thr[i][k_top], TINY) if 0 < k_top < n else math.inf for i in range(n_models)]
    return t_trim, t_top


def _three_passes(backend, n: int, ks: list[int], k_trim: int, k_top: int, n_models: int):
    """Pass 1 (Gram + high-bits histogram), the exact radix select (pass 2), pass 3."""
    Gd, hh, bad = backend.pass1(bool(ks))
    thr = radix_thresholds(hh, ks, backend.pass2) if ks else [{} for _ in range(n_models)]
    t_trim, t_top = _cuts(thr, k_trim, k_top, n, n_models)
    h, e_ge, c_ge = backend.pass3(t_trim, t_top)
    return Gd, bad, thr, t_trim, t_top, h, e_ge, c_ge


def _two_passes(backend, n: int, ks: list[int], k_trim: int, k_top: int, n_models: int):
    """The C kernels' route, usually two passes: pass 1 settles each threshold that is its bucket's
    smallest value (selection.settle_bucket; bfloat16 task vectors tie heavily at multiples of the
    base's ulp); one pass (tv_bracket) finalises every coordinate outside the open buckets and sets
    the others aside, which then give the exact k-th largest. Buckets too full to set aside get
    pass 2. Returns what `_three_passes` returns."""
    Gd, hh, bad = backend.pass1(bool(ks))
    thr: list[dict[int, float]] = [{} for _ in range(n_models)]
    open_: dict[tuple[int, int], int] = {}  # (model, k) -> bucket still to resolve
    share = 0.0
    for i in range(n_models):
        for k in ks:
            b, kth = settle_bucket(hh[i], backend.lo0[i], k)
            if b < _TINY_BUCKET:
                thr[i][k] = 0.0  # below TINY: the threshold is TINY and the top k hold all the energy
            elif kth is not None:
                thr[i][k] = kth[0]  # the k-th is the bucket's smallest value
            else:
                open_[i, k] = b
                share += int(hh[i, b] - backend.lo0[i, b]) / n
    if share > AMBIGUOUS_MAX:
        thr = radix_thresholds(hh, ks, backend.pass2, thr)
        open_ = {}

    def cut(i, k, fixed):
        if not 0 < k < n:
            return fixed, fixed
        if (i, k) in open_:
            return (open_[i, k] << 16) + 1, (open_[i, k] + 1) << 16
        bits = float_bits(max(thr[i][k], TINY))
        return bits, bits

    inf_bits = 0x7F800000
    tl, th = zip(*[cut(i, k_trim, TINY_BITS if k_trim >= n else inf_bits) for i in range(n_models)])
    pl, ph = zip(*[cut(i, k_top, inf_bits) for i in range(n_models)])
    cap = min(n, int(share * n * 1.2) + SET_ASIDE_MIN) if open_ else 0
    h, e_top, c_top, c_trim, idx = backend.bracket(tl, th, pl, ph, cap)
    if not open_:  # every threshold was known: that was plain pass 3
        return Gd, bad, thr, *_cuts(thr, k_trim, k_top, n, n_models), h, e_top, c_top
    T = backend.gather(idx)  # [N, m]: τ of the set-aside coordinates
    A = np.abs(T)
    Ab = A.view(np.uint32)
    for (i, k), b in open_.items():
        thr[i][k] = kth_in_bucket(Ab[i], b, k, int((c_trim if k == k_trim else c_top)[i]))
    t_trim, t_top = _cuts(thr, k_trim, k_top, n, n_models)
    kept = A >= np.asarray(t_trim, dtype=np.float32)[:, None]
    code = (np.sign(T).astype(np.int64) + 1 + 3 * kept) * (6 ** np.arange(n_models, dtype=np.int64))[:, None]
    h += np.bincount(code.sum(0), minlength=6**n_models)
    top = A >= np.asarray(t_top, dtype=np.float32)[:, None]
    A64 = A.astype(np.float64)
    e_ge = e_top + np.einsum("ij,ij->i", A64 * top, A64)
    c_ge = c_top + top.sum(1)
    return Gd, bad, thr, t_trim, t_top, h, e_ge, c_ge


def bucket_histograms(raw_base: torch.Tensor, raws: list[torch.Tensor], release=None):
    """Per model, the histogram of |θᵢ − θ₀| (float32) by float bits >> 16 and, per bucket, how many
    members equal its smallest value: (hist, lo0), both [N, 2**15]; None where the C kernels cannot
    run (no compiler, other dtypes, too many models) or a value is non-finite. The merge's exact
    magnitude thresholds start from these (selection.streamed_thresholds)."""
    raw_base = raw_base.reshape(-1)
    raws = [r.reshape(-1) for r in raws]
    dev = torch.device("cpu")
    if not raws or not CPasses.usable(raw_base, raws, dev):
        return None
    backend = cpu_backend(CPasses, raw_base, raws, raw_base.numel(), release)
    _, hist, bad = backend.pass1(True, gram=False)
    if any(bad):
        return None
    return hist, backend.lo0


def tensor_stats(
    raw_base: torch.Tensor, raws: list[torch.Tensor], density: float, st, device="cpu", release=None
) -> dict:
    """Add one tensor's sums (all models) to SiteStats `st`. Returns non-finite counts
    {"base": b, 0: m0, ...} when any were found (they are read as 0 for the statistics).
    `release(start, stop)`: drop the inputs' pages of that element range (large tensors are read in
    segments and released as the passes move on)."""
    dev = torch.device(device)
    n_models = len(raws)
    raw_base = raw_base.reshape(-1)
    raws = [r.reshape(-1) for r in raws]
    n = raw_base.numel()
    k_trim = int(math.floor(density * n)) if density < 1.0 else n
    k_top = int(math.floor(TOPK_FRACTION * n))
    ks = sorted({k for k in (k_trim, k_top) if 0 < k < n})
    cls = CPasses if CPasses.usable(raw_base, raws, dev) else TorchPasses
    if dev.type != "cpu":
        backend = TorchPasses(raw_base, raws, n, dev, release)
    else:
        backend = cpu_backend(cls, raw_base, raws, n, release)
    if cls is CPasses:
        Gd, bad, thr, t_trim, t_top, h, e_ge, c_ge = _two_passes(backend, n, ks, k_trim, k_top, n_models)
    else:
        Gd, bad, thr, t_trim, t_top, h, e_ge, c_ge = _three_passes(backend, n, ks, k_trim, k_top, n_models)
    nonfinite = {"base": bad[0], **{i: bad[i + 1] for i in range(n_models) if bad[i + 1]}} if any(bad) else {}

    st.numel += n
    st.base_sq += float(Gd[0, 0])
    for i in range(n_models):
        st.sq[i] += Gd[i + 1, i + 1]
        st.dot_base[i] += Gd[0, i + 1]
        for j in range(n_models):
            if i != j:
                st.dot[i, j] += Gd[i + 1, j + 1]
        st.nonfinite[i] += nonfinite.get(i, 0)

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
        if k_top >= n or (0 < k_top < n and thr[i][k_top] < TINY):
            st.topk_energy[i] += Gd[i + 1, i + 1]
        elif 0 < k_top < n:
            t = t_top[i]
            st.topk_energy[i] += float(e_ge[i]) - (int(c_ge[i]) - k_top) * float(t) ** 2
    return nonfinite
