"""Exact k-th largest selection, one implementation for the analysis (tvstats, scan), the trims
(methods/sparsify) and the streaming merge kernel (methods/gta_stream), so that every route agrees on
the threshold, its counts and its ties to the last bit.

Float bits of a non-negative float32 order like the floats, so a histogram of bits is a histogram of
values: the bin holding the k-th largest, how many lie above it (n_gt) and how many equal it (n_eq)
follow from counts alone, with any number of ties and without a sort.

- The analysis kernel histograms the top 16 bits of every |τ| (`select_bucket`, `settle_bucket`) and
  then the low 16 bits of the chosen buckets (`radix_thresholds`) or the few members set aside
  (`kth_in_bucket`).
- Large tensors elsewhere are bracketed first, by one sampled bracket: fixed-seed runs of neighbours
  (a memory-mapped input has few pages touched) give two exact values ±8σ around the sample
  quantile. Streamed, one chunked pass histograms the bits inside the bracket and counts those
  above it (memory bounded by the bracket's width, not its members). In memory, the members
  (both ends included, so a threshold tied with an end is found: bfloat16 task vectors tie heavily)
  are collected for `torch.kthvalue`, which works for any dtype, gives the ties' positions, and on
  continuous float32 data beats histogramming a wide bracket. A bracket that misses (adversarial
  data only) falls back to `torch.kthvalue` on the whole tensor: every route gives the same answer.

NaN never counts toward k: it ranks below every number (so it is never > or == the threshold). When
fewer than k numbers exist, the threshold is the smallest number and n_gt + n_eq < k (all NaN: NaN).
"""

from __future__ import annotations

import math

import numpy as np
import torch

DIRECT_MAX = 1 << 21  # in memory, up to this many elements: torch.kthvalue on the whole tensor
STREAM_DIRECT_MAX = 1 << 20  # streamed, up to this many: |δ| in memory (cheap at this size)
SAMPLE = 1 << 14  # streamed: sampled values; a wide bracket costs little there (bins are cheap)
_BLOCK = 16  # neighbours per run of the sample
MEMORY_SAMPLE = 1 << 18  # in memory a larger sample is cheap and narrows the bracket (fewer members)
_SAMPLE_SEGMENTS = 8
_SEED = 0x6D657267  # fixed: the sample only affects speed, never the result
MAX_BINS = 1 << 22  # widest bracket (in float bit steps) histogrammed (32 MB of counts)
CHUNK = 1 << 17  # elements per histogram chunk (stays in cache)


def bits_to_float(bits: int) -> float:
    """The float32 whose bit pattern is `bits` (non-negative floats order like their bits)."""
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def float_bits(x: float) -> int:
    """The bit pattern of float32(x) (x ≥ 0)."""
    return int(np.array([x], dtype=np.float32).view(np.uint32)[0])


def select_bucket(hist: np.ndarray, k: int) -> tuple[int, int]:
    """Bin b holding the k-th largest (1 ≤ k ≤ hist.sum(); bins ascend in value) and its rank j inside
    the bin from the top: hist[b + 1:].sum() == k - j, 1 ≤ j ≤ hist[b]."""
    from_top = np.cumsum(hist[::-1])  # from_top[t] = count in the t + 1 highest bins
    if not 1 <= k <= (from_top[-1] if from_top.size else 0):
        raise ValueError(f"k={k} outside 1..{int(from_top[-1]) if from_top.size else 0}")
    t = int(np.searchsorted(from_top, k))  # the fewest highest bins holding k
    return len(hist) - 1 - t, k - (int(from_top[t - 1]) if t else 0)


def settle_bucket(hist: np.ndarray, lo0: np.ndarray, k: int) -> tuple[int, tuple[float, int, int] | None]:
    """(b, kth) from a histogram of float bits >> 16 and, per bucket, how many members have low bits 0
    (the bucket's smallest value): kth = (thr, n_gt, n_eq) when the k-th largest is that smallest value
    (bfloat16 task vectors tie heavily there), else None (it lies strictly inside bucket b)."""
    b, j = select_bucket(hist, k)
    others = int(hist[b] - lo0[b])  # members above the bucket's smallest value
    if j > others:
        return b, (bits_to_float(b << 16), k - j + others, int(lo0[b]))
    return b, None


def radix_thresholds(hh: np.ndarray, ks: list[int], pass2, thr=None) -> list[dict[int, float]]:
    """Per row of `hh` (float bits >> 16 histograms), the k-th largest for each k (those already in
    `thr` are kept). `pass2(buckets, slots, nslots)` histograms the low 16 bits of the members of the
    chosen buckets ([rows, width] bucket ids, -1 unused) into nslots rows."""
    n_rows = hh.shape[0]
    thr = thr if thr is not None else [{} for _ in range(n_rows)]
    wanted: dict[tuple[int, int], int] = {}  # (row, bucket) -> slot
    picks = []  # (row, k, slot, j)
    for i in range(n_rows):
        for k in ks:
            if k in thr[i]:
                continue
            b, j = select_bucket(hh[i], k)
            slot = wanted.setdefault((i, b), len(wanted))
            picks.append((i, k, slot, j))
    if not wanted:
        return thr
    width = max(sum(1 for (i2, _) in wanted if i2 == i) for i in range(n_rows))
    buckets = np.full((n_rows, width), -1, dtype=np.int32)
    slots = np.zeros((n_rows, width), dtype=np.int32)
    col = [0] * n_rows
    for (i, b), slot in wanted.items():
        buckets[i, col[i]], slots[i, col[i]] = b, slot
        col[i] += 1
    hl = pass2(buckets, slots, len(wanted))
    inv = {slot: key for key, slot in wanted.items()}
    for i, k, slot, j in picks:
        low, _ = select_bucket(hl[slot], j)
        thr[i][k] = bits_to_float((inv[slot][1] << 16) | low)
    return thr


def kth_in_bucket(bits: np.ndarray, b: int, k: int, above: int) -> float:
    """The k-th largest when it lies strictly above bucket b's smallest value, from the float bits of
    the candidates and `above`, how many values ≥ the next bucket are not among them."""
    lo, hi = (b << 16) + 1, (b + 1) << 16
    above += int((bits >= hi).sum())
    inside = bits[(bits >= lo) & (bits < hi)]
    pos = inside.size - (k - above)  # the (k - above)-th largest inside
    if not 0 <= pos < inside.size:
        raise AssertionError(f"threshold bucket miscounted (k={k}): {above} above, {inside.size} inside")
    return bits_to_float(int(np.partition(inside, pos)[pos]))


# ---------------------------------------------------------------- sampled brackets


def _sample_index(n: int, size: int) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    """`size` fixed-seed random positions, sorted (sequential reads of a memory map), and their
    segments (sample slice, element range) so the pages can be released as the gather moves on."""
    g = torch.Generator().manual_seed(_SEED)
    if n >= 4 * size:  # runs of _BLOCK neighbours: a few pages touched instead of every page
        starts = np.sort(torch.randint(n - _BLOCK + 1, (size // _BLOCK,), generator=g).numpy())
        idx = torch.from_numpy((starts[:, None] + np.arange(_BLOCK)).reshape(-1))
    else:
        idx = torch.from_numpy(np.sort(torch.randint(n, (size,), generator=g).numpy()))
    bounds = [n * j // _SAMPLE_SEGMENTS for j in range(_SAMPLE_SEGMENTS + 1)]
    cuts = torch.searchsorted(idx, torch.tensor(bounds)).tolist()
    segs = [(cuts[j], cuts[j + 1], bounds[j], bounds[j + 1]) for j in range(_SAMPLE_SEGMENTS)]
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
    """(lo, hi): exact values of the sample `a` bracketing the k-th largest of n (±8σ of the sample
    quantile), or None when the sample cannot bracket it (or holds a NaN)."""
    if bool(torch.isnan(a).any()):
        return None
    size = a.numel()
    p = k / n
    rank = p * size  # expected descending rank of the threshold inside the sample
    margin = 8.0 * math.sqrt(size * p * (1 - p)) + 16  # 8σ: the runs are not independent
    r_hi = int(math.floor(rank - margin))
    r_lo = int(math.ceil(rank + margin))
    if r_hi < 1 or r_lo > size:
        return None
    lo = float(torch.kthvalue(a, size - r_lo + 1).values)
    hi = float(torch.kthvalue(a, size - r_hi + 1).values)
    return lo, hi


def _bits_bracket(br) -> tuple[int, int] | None:
    """The bracket in float bits, or None when it is too wide to histogram."""
    if br is None:
        return None
    lo_b, hi_b = float_bits(br[0]), float_bits(br[1])
    return (lo_b, hi_b) if 0 <= hi_b - lo_b <= MAX_BINS else None


def _hist_add(h: torch.Tensor, dc: torch.Tensor, lo_b: int, hi_b: int, key: torch.Tensor, ones: torch.Tensor):
    """Add the float32 values `dc` (overwritten) to h: bin 0 below lo (NaN too), 1 + j for bits lo + j,
    the last bin above hi. `index_add_` into a persistent accumulator (bincount would allocate and
    zero its output for every chunk)."""
    torch.nan_to_num_(dc, nan=-1.0, posinf=math.inf)  # NaN never counts toward k
    kc = key[: dc.numel()]
    torch.clamp(dc.view(torch.int32), lo_b - 1, hi_b + 1, out=kc)  # negative floats: below
    kc.sub_(lo_b - 1)
    h.index_add_(0, kc, ones[: dc.numel()])


def _resolve(h: np.ndarray, lo_b: int, k: int) -> tuple[float, int, int] | None:
    """(thr, n_gt, n_eq) from a bracket histogram (see _hist_add), None when k falls outside it."""
    b, j = select_bucket(h, k)
    if b == 0 or b == len(h) - 1:
        return None
    return bits_to_float(lo_b + b - 1), k - j, int(h[b])


# ---------------------------------------------------------------- in memory


def _empty(key, shape, dtype, device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


def kth_largest(a: torch.Tensor, k: int, scratch=None):
    """Exact k-th largest of 1-D `a` (any float dtype and device; 1 ≤ k ≤ n; k = n: the smallest number).

    Returns (thr, n_gt, n_eq, eq_idx): thr as a 0-dim tensor of a's dtype, n_gt = #(a > thr),
    n_eq = #(a == thr) (n_gt < k ≤ n_gt + n_eq unless NaN leaves fewer than k numbers), and the
    ascending positions of the elements == thr when they came for free (else None). `scratch(key,
    shape, dtype, device)` lends the two tensor-sized bool buffers (default: fresh ones)."""
    n = a.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k={k} outside 1..{n}")
    if n > DIRECT_MAX and a.device.type == "cpu":
        res = _kth_bracketed(a, k, scratch or _empty)
        if res is not None:
            return res
    return (*_kth_direct(a, k), None)


def _kth_direct(a: torch.Tensor, k: int) -> tuple[torch.Tensor, int, int]:
    n = a.numel()
    thr = torch.kthvalue(a, n - k + 1).values
    n_gt = int(torch.count_nonzero(a > thr))
    n_eq = int(torch.count_nonzero(a == thr))
    if n_gt < k <= n_gt + n_eq:
        return thr, n_gt, n_eq
    # kthvalue ranks NaN above every number: count them out
    m = n - int(torch.count_nonzero(torch.isnan(a)))
    thr = torch.kthvalue(a, max(1, m - k + 1)).values
    return thr, int(torch.count_nonzero(a > thr)), int(torch.count_nonzero(a == thr))


def _kth_bracketed(a: torch.Tensor, k: int, scratch):
    """The sampled bracket in memory: count the elements above it, collect those inside it (both ends
    included, so a threshold tied with an end is found) and run kthvalue on those. None: it missed."""
    n = a.numel()
    idx, _ = _sample_index(n, MEMORY_SAMPLE)
    br = _sample_bracket(a[idx], n, k)
    if br is None:
        return None
    lo, hi = br
    above = scratch("sel.above", n, torch.bool, a.device)
    band = scratch("sel.band", n, torch.bool, a.device)
    torch.gt(a, hi, out=above)
    c_hi = int(torch.count_nonzero(above))
    if c_hi >= k:
        return None
    torch.ge(a, lo, out=band)
    band.logical_xor_(above)  # lo <= a <= hi (above is a subset of a >= lo; NaN in neither)
    pos = band.nonzero().squeeze(1)
    cand = a[pos]
    if c_hi + cand.numel() < k:
        return None
    thr = torch.kthvalue(cand, cand.numel() - (k - c_hi) + 1).values
    is_eq = cand == thr
    return thr, c_hi + int(torch.count_nonzero(cand > thr)), int(torch.count_nonzero(is_eq)), pos[is_eq]


def tie_picks(a: torch.Tensor, thr, need: int, prefer: str = "low", eq_idx=None) -> torch.Tensor:
    """Ascending positions of the `need` elements of `a` equal to `thr` that a top-k keeps: the lowest
    indices (`prefer="low"`) or the highest ("high"); all of them when fewer exist. `eq_idx`: the
    positions of all of them, when `kth_largest` gave them."""
    if eq_idx is None:
        eq_idx = (a == thr).nonzero().squeeze(1)
    return eq_idx[:need] if prefer == "low" else eq_idx[max(0, eq_idx.numel() - need) :]


# ---------------------------------------------------------------- streamed


def streamed_thresholds(
    raw_base: torch.Tensor, raws: list[torch.Tensor], ks: list[int | None], release=None, bucket_hists=None
) -> list[tuple[float, int, int] | None]:
    """Per model, (thr, n_gt, n_eq) of |θᵢ − θ₀| (float32) for k = ks[i] (None: skipped; else 1 ≤ k ≤ n),
    from the stored 1-D inputs (any float dtype, e.g. memory-mapped bf16) read in chunks: nothing
    tensor-sized is allocated for large tensors. `bucket_hists(raw_base, raws, release)` (the
    analysis kernel's pass 1, tvstats.bucket_histograms) gives (hist, lo0) or None where it cannot
    run; its buckets replace the sample. `release(start, stop)` drops input pages once read."""
    n = raw_base.numel()
    out: list[tuple[float, int, int] | None] = [None] * len(raws)
    for k in ks:
        if k is not None and not 1 <= k <= n:
            raise ValueError(f"k={k} outside 1..{n}")
    big = n > STREAM_DIRECT_MAX
    brackets = _bucket_brackets(bucket_hists, raw_base, raws, ks, out, release) if big else None
    sampled = brackets is None
    brackets = brackets or {}
    base_s = None
    for i, k in enumerate(ks):
        if k is None or out[i] is not None or i in brackets or not (sampled and big):
            continue
        if base_s is None:
            idx, segs = _sample_index(n, SAMPLE)
            base_s = _gather(raw_base, idx, segs, release)
        sample = _gather(raws[i], idx, segs, release).sub_(base_s).abs_()
        bits = _bits_bracket(_sample_bracket(sample, n, k))
        if bits is not None:
            brackets[i] = bits
    full = [i for i, k in enumerate(ks) if k is not None and out[i] is None and i not in brackets]
    if brackets:
        hists = _bracket_hists(raw_base, raws, brackets, release)
        for i, (lo_b, _) in brackets.items():
            out[i] = _resolve(hists[i], lo_b, ks[i])
            if out[i] is None:
                full.append(i)
    for i in full:
        b = raw_base.reshape(-1).to(torch.float32)
        a = torch.empty(n, dtype=torch.float32).copy_(raws[i].reshape(-1)).sub_(b).abs_()
        del b
        thr, n_gt, n_eq, _ = kth_largest(a, ks[i])  # the sample missed (or the tensor is small)
        out[i] = (float(thr), n_gt, n_eq)
    return out


def _bucket_brackets(bucket_hists, raw_base, raws, ks, out, release) -> dict[int, tuple[int, int]] | None:
    """From the analysis kernel's buckets: fills `out` where the k-th largest |δ| is its bucket's
    smallest value, returns the other buckets as brackets, or None when the kernel cannot run here."""
    todo = [i for i, k in enumerate(ks) if k is not None and out[i] is None]
    got = bucket_hists(raw_base, [raws[i] for i in todo], release) if todo and bucket_hists is not None else None
    if got is None:
        return None
    hist, lo0 = got
    brackets = {}
    for row, i in enumerate(todo):
        b, kth = settle_bucket(hist[row], lo0[row], ks[i])
        if kth is not None:
            out[i] = kth
        else:
            brackets[i] = ((b << 16) + 1, ((b + 1) << 16) - 1)
    return brackets


def _bracket_hists(raw_base, raws, brackets: dict, release=None) -> dict[int, np.ndarray]:
    """Per bracketed model, the bracket histogram of |δ| (see _hist_add), in one chunked pass."""
    n = raw_base.numel()
    chunk = min(n, CHUNK)
    b = torch.empty(chunk, dtype=torch.float32)
    d = torch.empty(chunk, dtype=torch.float32)
    key = torch.empty(chunk, dtype=torch.int32)
    ones = torch.ones(chunk, dtype=torch.int64)
    hists = {i: torch.zeros(hi - lo + 3, dtype=torch.int64) for i, (lo, hi) in brackets.items()}
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        bc = b[: e - s]
        bc.copy_(raw_base[s:e])
        for i, (lo_b, hi_b) in brackets.items():
            dc = d[: e - s]
            if raws[i].dtype == torch.float32:
                torch.sub(raws[i][s:e], bc, out=dc)
            else:
                dc.copy_(raws[i][s:e]).sub_(bc)
            _hist_add(hists[i], dc.abs_(), lo_b, hi_b, key, ones)
        if release is not None:
            release(s, e)
    return {i: h.numpy() for i, h in hists.items()}
