"""Streaming CPU kernels for the generalized task arithmetic family: task_arithmetic and TIES-style
magnitude trims (ties, or any GTA variant with `magnitude` sparsification and no rescale).

Same results, bit for bit, as `task_arithmetic.gta_merge` on float32 (see the tests), without
materialising anything tensor-sized except the output: the stored (e.g. bf16, memory-mapped) inputs
are read in cache-sized chunks and every intermediate lives in a few chunk buffers.

For one tensor of n elements and N models:

1. thresholds (magnitude trims only): the exact k-th largest |δᵢ| of each model, k = max(1,
   int(density·n)), with how many are above it and how many equal it, from
   `selection.streamed_thresholds` (chunked reads; the analysis' C kernel pass 1 names the bucket
   where it runs: float32/bf16 inputs, all finite). The same numbers `gta_merge`'s trim uses.
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

import numpy as np
import torch

from mergescope.merge.methods._util import Inputs, weight_sum
from mergescope.stats.selection import streamed_thresholds
from mergescope.stats.tvstats import bucket_histograms

CHUNK = 1 << 17  # elements per chunk: a handful of float32 chunk buffers stay in L2/L3
RELEASE_BYTES = 8 << 20  # inputs' pages are released in steps of this many bytes (per input)
MAX_MODELS = 4  # sums over models: see _sum_rows


def supports(sparsification: str | None, gp: dict, dtype: torch.dtype, device, n_models: int = 1) -> bool:
    """Whether `stream_gta` handles this case (else use `gta_merge`)."""
    if torch.device(device).type != "cpu" or dtype != torch.float32 or not 1 <= n_models <= MAX_MODELS:
        return False
    if sparsification is None:
        return True
    return sparsification == "magnitude" and not gp["rescale"]


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


def _thresholds(raw_base: torch.Tensor, raws: list[torch.Tensor], ks: list[int | None], release=None) -> list[_Trim]:
    """Exact trim plans; `ks[i]` None means keep everything, 0 means drop everything."""
    n = raw_base.numel()
    sel = [k if k is not None and 0 < k < n else None for k in ks]
    found = streamed_thresholds(raw_base, raws, sel, release, bucket_histograms)
    plans = []
    for k, f in zip(ks, found):
        if f is not None:
            plans.append(_plan_from(*f, k))
        else:
            plans.append(_Trim("all") if k is None or k >= n else _Trim("none"))
    return plans


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


def stream_gta(inp: Inputs, out_dtype: torch.dtype, *, sparsification: str | None, consensus: bool) -> torch.Tensor:
    """The merged tensor in `out_dtype` (float32 arithmetic) from the stored inputs (any float dtype):
    `inp` is the method's `Inputs` over the stored tensors, its parameters complete."""
    raw_base = inp.base
    shape = raw_base.shape
    n = raw_base.numel()
    rb = raw_base.reshape(-1)
    rs = [r.reshape(-1) for r in inp.models]
    n_models = len(rs)
    gp, mps = inp.params, inp.model_params
    work = torch.float32
    wvec = torch.tensor(inp.values("weight"), dtype=work)
    weights = wvec.tolist()
    lam = gp["lambda"]
    out = torch.empty(n, dtype=out_dtype)
    if n == 0:
        return out.view(shape)
    release = _batched(inp.ctx.release, n, raw_base.element_size())
    if n_models == 0:
        return out.copy_(rb).view(shape)

    if sparsification == "magnitude":
        ks = []
        for mp in mps:
            density = mp["density"]
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
    normalize = gp["normalize"]
    divisor_all = None
    if not consensus and normalize:
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
