"""Streaming CPU kernels for the generalized task arithmetic family: task_arithmetic and TIES-style
magnitude trims (ties, or any GTA variant with `magnitude` sparsification and no rescale).

Same results, bit for bit, as `task_arithmetic.gta_merge` on float32 (see the tests), without
materialising anything tensor-sized except the output: the stored (e.g. bf16, memory-mapped) inputs
are read in cache-sized chunks and every intermediate lives in a few chunk buffers.

For one tensor of n elements and N models:

1. thresholds (magnitude trims only): the exact k-th largest |δᵢ| of each model, k = max(1,
   int(density·n)). Where the analysis' C kernel runs (float32/bf16 inputs, all finite), its pass 1
   histograms every |δᵢ| by the top 16 float bits and counts each bucket's members equal to its
   smallest value: a threshold among those ties (the usual case for bf16 task vectors) is then known
   with its counts; otherwise the rest of its bucket is the bracket. Without the kernel, a fixed-seed
   random sample of 2**14 elements (runs of 16 neighbours, so it touches few pages) brackets it (±8σ
   of the sample quantile; both ends are exact |δ| values). One chunked pass histograms the float
   bits of every |δᵢ| inside the bracket (bits of non-negative floats order like the floats, so each
   bin is ONE value) and counts those above it: that gives the threshold, how many are above it and
   how many equal it, exactly, with any number of ties. If the bracket misses (only for adversarial
   data) or is too wide in bits, that model falls back to `sparsify.kth_largest` on its full |δᵢ|.
   Small tensors use `kth_largest` directly.
2. one chunked pass: δᵢ = θᵢ − θ₀ (float32), trim (one `hardshrink`; ties at the threshold are kept
   lowest index first, a running budget per model carried across chunks), weights, sign election,
   consensus clamp, divisor, normalize, lambda, + θ₀, cast to the output dtype.

Sums over models are sequential adds, which is what torch.sum(dim=0) does for up to 4 models at
any length; for more models its order depends on the tensor length, so chunks could round
differently: more than MAX_MODELS models go to the general path. The executor gives a
`ctx.release(start, stop)` to drop the inputs' mapped pages behind each pass.

Every element goes through the same float32 operations in the same order as in `gta_merge` (and
mergekit 0.1.5 with `dtype: float32`): the chunking changes only which elements an op sees at once.
NaN task-vector entries are treated as in `sparsify` (never counted toward k, kept by the trim).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from ..tvstats import _select_bucket, bits_to_float, bucket_histograms, float_bits
from . import sparsify as sp
from ._util import global_params, model_params

CHUNK = 1 << 17  # elements per chunk: a handful of float32 chunk buffers stay in L2/L3
SAMPLE = 1 << 14  # sampled |delta| values (1024 runs of 16 neighbours); a wide bracket costs little:
_BLOCK = 16  # bins are cheap, elements are not
DIRECT_MAX = 1 << 20  # smaller tensors: exact selection on the full |delta| (cheap at this size)
RELEASE_BYTES = 8 << 20  # inputs' pages are released in steps of this many bytes (per input)
_SAMPLE_SEGMENTS = 8
MAX_BINS = 1 << 22  # widest bracket (in float bit steps) histogrammed directly (32 MB of counts)
_SEED = 0x6D657267
MAX_MODELS = 4  # sums over models: see _sum_rows


def supports(sparsification: str | None, gp: dict, dtype: torch.dtype, device, n_models: int = 1) -> bool:
    """Whether `stream_gta` handles this case (else use `gta_merge`)."""
    if torch.device(device).type != "cpu" or dtype != torch.float32 or not 1 <= n_models <= MAX_MODELS:
        return False
    if sparsification is None:
        return True
    return sparsification == "magnitude" and not bool(gp.get("rescale"))


def _delta_into(out: torch.Tensor, raw: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out = float32(raw) - b (b already float32)."""
    if raw.dtype == torch.float32:
        return torch.sub(raw, b, out=out)
    out.copy_(raw)
    return out.sub_(b)


class _Trim:
    """Exact magnitude-trim plan of one model: keep |d| > thr, plus the first `budget` |d| == thr."""

    __slots__ = ("mode", "thr", "below", "budget")

    def __init__(self, mode: str, thr: float = 0.0, budget: int = 0):
        self.mode = mode  # "all" | "none" | "ge" (keep |d| >= thr) | "gt_ties" (keep > thr + budget ties)
        self.thr = thr
        self.below = float(np.nextafter(np.float32(thr), np.float32(-np.inf))) if mode in ("ge", "gt_ties") else 0.0
        self.budget = budget


def _plan_from(thr: float, n_gt: int, n_eq: int, k: int) -> _Trim:
    if n_gt + n_eq == k:
        return _Trim("ge", thr)
    return _Trim("gt_ties", thr, k - n_gt)


@lru_cache(maxsize=8)
def _sample_index(n: int) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    """A fixed-seed random sample of positions, sorted (sequential reads of the memory map), and its
    segments (sample slice, element range) so the pages can be released as the gather moves on."""
    g = torch.Generator().manual_seed(_SEED)
    if n >= 4 * SAMPLE:  # runs of _BLOCK neighbours: a few pages touched instead of every page
        starts = torch.sort(torch.randint(n - _BLOCK + 1, (SAMPLE // _BLOCK,), generator=g)).values
        idx = (starts.view(-1, 1) + torch.arange(_BLOCK)).view(-1)
    else:
        idx = torch.sort(torch.randint(n, (SAMPLE,), generator=g)).values
    segs = []
    bounds = [n * j // _SAMPLE_SEGMENTS for j in range(_SAMPLE_SEGMENTS + 1)]
    cuts = torch.searchsorted(idx, torch.tensor(bounds)).tolist()
    for j in range(_SAMPLE_SEGMENTS):
        segs.append((cuts[j], cuts[j + 1], bounds[j], bounds[j + 1]))
    return idx, segs


def _gather(raw: torch.Tensor, idx, segs, release) -> torch.Tensor:
    """float32 raw[idx], segment by segment, releasing each element range once read."""
    out = torch.empty(idx.numel(), dtype=torch.float32)
    for a, b, lo, hi in segs:
        out[a:b] = raw[idx[a:b]]
        if release is not None:
            release(lo, hi)
    return out


def _sample_bracket(a: torch.Tensor, n: int, k: int):
    """(lo, hi): exact |delta| values of the sample `a` bracketing the k-th largest (±8 sigma of
    the sample quantile), or None when the sample cannot bracket it."""
    if bool(torch.isnan(a).any()):
        return None
    p = k / n
    rank = p * SAMPLE  # expected descending rank of the threshold inside the sample
    margin = 8.0 * math.sqrt(SAMPLE * p * (1 - p)) + 16  # 8 sigma: the runs are not independent
    r_hi = int(math.floor(rank - margin))
    r_lo = int(math.ceil(rank + margin))
    if r_hi < 1 or r_lo > SAMPLE:
        return None
    lo = float(torch.kthvalue(a, SAMPLE - r_lo + 1).values)
    hi = float(torch.kthvalue(a, SAMPLE - r_hi + 1).values)
    return lo, hi


def _bucket_brackets(raw_base, raws, ks, plans, release) -> dict[int, tuple[int, int]] | None:
    """The analysis kernel's pass 1 (tvstats.bucket_histograms) names the float-bits bucket holding
    each k-th largest |δ|: when it falls among the members equal to the bucket's smallest value (bf16
    task vectors tie heavily), the plan is final; otherwise the rest of the bucket is the bracket.
    Fills `plans`, returns the brackets, or None when the kernel cannot run here."""
    todo = [i for i, p in enumerate(plans) if p is None]
    got = bucket_histograms(raw_base, [raws[i] for i in todo], release) if todo else None
    if got is None:
        return None
    hist, lo0 = got
    brackets = {}
    for row, i in enumerate(todo):
        k = ks[i]
        b, j = _select_bucket(hist[row], k)
        others = int(hist[row, b] - lo0[row, b])  # members above the bucket's smallest value
        if j > others:
            plans[i] = _plan_from(bits_to_float(b << 16), k - j + others, int(lo0[row, b]), k)
        else:
            brackets[i] = ((b << 16) + 1, ((b + 1) << 16) - 1)
    return brackets


def _thresholds(raw_base: torch.Tensor, raws: list[torch.Tensor], ks: list[int | None], release=None) -> list[_Trim]:
    """Exact trim plans; `ks[i]` None means keep everything, 0 means drop everything."""
    n = raw_base.numel()
    plans: list[_Trim | None] = [None] * len(raws)
    for i, k in enumerate(ks):
        if k is None or k >= n:
            plans[i] = _Trim("all")
        elif k <= 0:
            plans[i] = _Trim("none")
    brackets = _bucket_brackets(raw_base, raws, ks, plans, release) if n > DIRECT_MAX else None
    sampled = brackets is None
    brackets = brackets or {}
    base_s = idx = None
    for i, k in enumerate(ks):
        if plans[i] is not None or i in brackets:
            continue
        if sampled and n > DIRECT_MAX:
            if base_s is None:
                idx, segs = _sample_index(n)
                base_s = _gather(raw_base, idx, segs, release)
            sample = _gather(raws[i], idx, segs, release).sub_(base_s).abs_()
            br = _sample_bracket(sample, n, k)
            if br is not None:
                lo_b, hi_b = float_bits(br[0]), float_bits(br[1])
                if 0 <= hi_b - lo_b <= MAX_BINS:
                    brackets[i] = (lo_b, hi_b)
    full = [i for i, p in enumerate(plans) if p is None and i not in brackets]
    if brackets:
        hists = _bracket_hists(raw_base, raws, brackets, release)
        for i, (lo_b, hi_b) in brackets.items():
            r = hi_b - lo_b
            h = hists[i]  # bins: 0 below lo, 1 + j == lo_bits + j, r + 2 above hi
            above_hi = int(h[r + 2])
            k = ks[i]
            ge_lo = above_hi + int(h[1 : r + 2].sum())
            if not (above_hi < k <= ge_lo):
                full.append(i)
                continue
            nz = np.flatnonzero(h[1 : r + 2])[::-1]  # occupied bins, from hi down to lo
            band = h[1 : r + 2][nz]
            cum = above_hi + np.cumsum(band)
            j = int(np.searchsorted(cum, k))  # first position where the running count reaches k
            n_eq = int(band[j])
            n_gt = int(cum[j]) - n_eq
            thr_bits = lo_b + int(nz[j])
            thr = bits_to_float(thr_bits)
            plans[i] = _plan_from(thr, n_gt, n_eq, k)
    for i in full:
        b = raw_base.reshape(-1).to(torch.float32)
        a = _delta_into(torch.empty(n, dtype=torch.float32), raws[i].reshape(-1), b).abs_()
        del b
        thr, n_gt, n_eq, _ = sp.kth_largest(a, ks[i])
        plans[i] = _plan_from(float(thr), n_gt, n_eq, ks[i])
    return plans  # type: ignore[return-value]


def _bracket_hists(raw_base, raws, brackets: dict, release=None) -> dict[int, np.ndarray]:
    """Per bracketed model: counts of |delta| by float bits, bin 0 below lo, 1 + j for bits lo + j,
    the last bin above hi. `index_add_` into a persistent accumulator (bincount would allocate and
    zero its output for every chunk)."""
    n = raw_base.numel()
    chunk = min(n, CHUNK)
    b = torch.empty(chunk, dtype=torch.float32)
    d = torch.empty(chunk, dtype=torch.float32)
    key = torch.empty(chunk, dtype=torch.int32)
    ones = torch.ones(chunk, dtype=torch.int64)
    hists = {i: torch.zeros(hi - lo + 3, dtype=torch.int64) for i, (lo, hi) in brackets.items()}
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        c = e - s
        bc = b[:c]
        bc.copy_(raw_base[s:e])
        for i, (lo_b, hi_b) in brackets.items():
            dc = _delta_into(d[:c], raws[i][s:e], bc).abs_()
            torch.nan_to_num_(dc, nan=0.0, posinf=math.inf)  # NaN never counts toward k (as in sparsify)
            kc = key[:c]
            torch.sub(dc.view(torch.int32), lo_b - 1, out=kc)
            kc.clamp_(0, hi_b - lo_b + 2)
            hists[i].index_add_(0, kc, ones[:c])
        if release is not None:
            release(s, e)
    return {i: h.numpy() for i, h in hists.items()}


def _trim_chunk(d: torch.Tensor, plan: _Trim, scratch_f: torch.Tensor) -> None:
    mode = plan.mode
    if mode == "all":
        return
    if mode == "none":
        d.zero_()
        return
    if mode == "ge" or plan.budget > 0 and mode == "gt_ties":
        if mode == "gt_ties":
            eq = torch.abs(d, out=scratch_f).eq_(plan.thr)
            cnt = int(eq.sum())
            if cnt > plan.budget:
                pos = eq.nonzero().squeeze(1)[plan.budget :]
                torch.ops.aten.hardshrink.out(d, plan.below, out=d)
                d.index_fill_(0, pos, 0.0)
                plan.budget = 0
                return
            plan.budget -= cnt
        torch.ops.aten.hardshrink.out(d, plan.below, out=d)
        return
    torch.ops.aten.hardshrink.out(d, plan.thr, out=d)  # budget spent: only |d| > thr


def _sum_rows(D: torch.Tensor, out: torch.Tensor) -> None:
    """out = D[0] + D[1] + ... in that order: what torch.sum(D, dim=0) computes for N <= MAX_MODELS
    rows whatever the row length (for more rows its order depends on the length, so chunking
    would change results; `supports` sends those to the general path)."""
    if D.shape[0] == 1:
        out.copy_(D[0])
        return
    torch.add(D[0], D[1], out=out)
    for i in range(2, D.shape[0]):
        out.add_(D[i])


def stream_gta(
    raw_base: torch.Tensor,
    raws: list[torch.Tensor],
    model_params_: list[dict] | None,
    params: dict | None,
    *,
    specs,
    name: str,
    sparsification: str | None,
    consensus: bool,
    out_dtype: torch.dtype,
    ctx=None,
) -> torch.Tensor:
    """The merged tensor in `out_dtype` (float32 arithmetic) from the stored inputs (any float dtype)."""
    shape = raw_base.shape
    n = raw_base.numel()
    rb = raw_base.reshape(-1)
    rs = [r.reshape(-1) for r in raws]
    n_models = len(rs)
    gp = global_params(specs, params, ctx, name) if ctx is not None else global_params(specs, params, _Ctx(), name)
    mps = model_params(specs, model_params_, n_models, params, ctx or _Ctx(), name)
    work = torch.float32
    wvec = torch.tensor([float(mp["weight"]) for mp in mps], dtype=work)
    weights = wvec.tolist()
    lam = float(gp["lambda"])
    out = torch.empty(n, dtype=out_dtype)
    if n == 0:
        return out.view(shape)
    release = _batched(getattr(ctx, "release", None), n, raw_base.element_size())
    if n_models == 0:
        return out.copy_(rb).view(shape)

    if sparsification == "magnitude":
        ks = []
        for mp in mps:
            density = float(mp["density"])
            ks.append(None if density >= 1 else (0 if density <= 0 else max(1, int(density * n))))
        plans = _thresholds(rb, rs, ks, release)
    else:
        plans = [_Trim("all")] * n_models
    trims = [p for p in plans if p.mode != "all"]

    chunk = min(n, CHUNK)
    B = torch.empty(chunk, dtype=work)
    D = torch.empty((n_models, chunk), dtype=work)
    acc = torch.empty(chunk, dtype=work)
    T = torch.empty(chunk, dtype=work)
    scaled = any(w != 1.0 for w in weights)
    wcol = wvec.view(-1, 1)
    normalize = bool(gp["normalize"])
    divisor_all = None
    if not consensus and normalize:
        from .task_arithmetic import weight_sum

        divisor_all = weight_sum(wvec, len(shape))
        if abs(float(divisor_all)) < 1e-8:
            divisor_all = None
    big = torch.finfo(work).max
    all_pos = all(w > 0 for w in weights)
    wmin = min(weights) if weights else 1.0
    U = torch.empty(chunk, dtype=work) if consensus else None
    L = torch.empty(chunk, dtype=work) if consensus else None

    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        c = e - s
        b = B[:c]
        b.copy_(rb[s:e])
        Dc = D[:, :c]
        for i in range(n_models):
            d = _delta_into(Dc[i], rs[i][s:e], b)
            if trims:
                _trim_chunk(d, plans[i], T[:c])
        if scaled:
            Dc.mul_(wcol)
        o = acc[:c]
        _sum_rows(Dc, o)
        if not consensus:
            if divisor_all is not None:
                o.div_(divisor_all)
        else:
            upper, lower = U[:c], L[:c]
            torch.ge(o, 0, out=upper)
            upper.mul_(big)
            torch.sub(upper, big, out=lower)
            Dc.clamp_(min=lower, max=upper)
            _sum_rows(Dc, o)
            if normalize:
                Dc.ne_(0)
                Dc.mul_(wcol)
                div = T[:c]
                _sum_rows(Dc, div)
                if all_pos:
                    div.clamp_min_(wmin)
                else:
                    div.masked_fill_(div == 0, 1)
                o.div_(div)
        if lam != 1:
            o.mul_(lam)
        o.add_(b)
        out[s:e].copy_(o)
        if release is not None:
            release(s, e)
    if release is not None:
        release.flush()
    return out.view(shape)


class _batched:
    """Forward release(start, stop) calls for contiguous ranges in steps of >= RELEASE_BYTES."""

    def __new__(cls, release, n: int, itemsize: int):
        if release is None or n * itemsize < RELEASE_BYTES:
            return None
        return super().__new__(cls)

    def __init__(self, release, n: int, itemsize: int):
        self.release = release
        self.step = max(1, RELEASE_BYTES // itemsize)
        self.start = 0
        self.stop = 0

    def __call__(self, start: int, stop: int) -> None:
        if start != self.stop:  # a new sweep (next pass, or a sample segment)
            self.flush()
            self.start = start
        self.stop = stop
        if self.stop - self.start >= self.step:
            self.flush()

    def flush(self) -> None:
        if self.stop > self.start:
            self.release(self.start, self.stop)
        self.start = self.stop


class _Ctx:
    tensor_name = ""
