"""Exact selection (mergescope.stats.selection) against a float64 sort, on every route: direct, sampled
bracket in memory, streamed (analysis-kernel buckets or sample, bracket histograms, fallbacks), the
analysis kernel's radix select and set-aside, tensors read in segments. Ties, NaN/Inf, fp16/bf16/fp32."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergescope.stats import passes, tvstats
from mergescope.stats import selection as sel

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
NAN = float("nan")


def ref_kth(x, k: int):
    """(thr, n_gt, n_eq) by sorting in float64: NaN never counts; fewer than k numbers: the smallest."""
    x = np.asarray(torch.as_tensor(x).double().numpy())
    nums = np.sort(x[~np.isnan(x)])[::-1]
    thr = nums[min(k, nums.size) - 1] if nums.size else math.nan
    return float(thr), int((x > thr).sum()), int((x == thr).sum())


def check_kth(a: torch.Tensor, k: int):
    thr, n_gt, n_eq, eq_idx = sel.kth_largest(a, k)
    assert thr.dtype == a.dtype and thr.dim() == 0
    want = ref_kth(a, k)
    got = (float(thr), n_gt, n_eq)
    assert got == want or (math.isnan(want[0]) and math.isnan(got[0]) and got[1:] == want[1:]), (k, got, want)
    if eq_idx is not None:
        assert torch.equal(eq_idx, (a == thr).nonzero().squeeze(1))
    return eq_idx is not None  # True: the bracketed route answered


@pytest.fixture
def small(monkeypatch):
    """Thresholds small enough that the bracketed and streamed routes run on small tensors (the
    streamed sample keeps its size: drawn with replacement, it brackets tightly enough to histogram)."""
    for name, value in (("DIRECT_MAX", 64), ("STREAM_DIRECT_MAX", 64), ("MEMORY_SAMPLE", 1024)):
        monkeypatch.setattr(sel, name, value)
    monkeypatch.setattr(sel, "CHUNK", 97)  # many histogram chunks


def _ties(n: int, seed: int, levels: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (n,), generator=g).float() * 0.25


# ---------------------------------------------------------------- bit histograms


def test_bits_round_trip():
    for x in (0.0, 1e-45, 1.17549435e-38, 0.1, 1.0, 3.4028235e38, math.inf):
        assert sel.bits_to_float(sel.float_bits(x)) == np.float32(x)
    xs = np.float32([0.0, 1e-45, 1e-20, 0.5, 1.0, 2.0, 1e30, math.inf])
    assert [sel.float_bits(x) for x in xs] == sorted(sel.float_bits(x) for x in xs)  # bits order like floats


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=12), st.data())
def test_select_bucket_property(counts, data):
    hist = np.asarray(counts, dtype=np.int64)
    total = int(hist.sum())
    if total == 0:
        with pytest.raises(ValueError):
            sel.select_bucket(hist, 1)
        return
    k = data.draw(st.sampled_from(sorted({1, total, data.draw(st.integers(1, total))})))
    values = np.repeat(np.arange(hist.size), hist)[::-1]  # descending
    b, j = sel.select_bucket(hist, k)
    assert b == values[k - 1] and int(hist[b + 1 :].sum()) == k - j and 1 <= j <= hist[b]
    for bad in (0, total + 1):
        with pytest.raises(ValueError):
            sel.select_bucket(hist, bad)


def _bucket_hists(a: np.ndarray):
    """Float bits >> 16 histogram and, per bucket, members with low bits 0 (the analysis kernel's pass 1)."""
    bits = a.astype(np.float32).view(np.uint32)
    hist = np.bincount(bits >> 16, minlength=1 << 15)
    lo0 = np.bincount((bits >> 16)[(bits & 0xFFFF) == 0], minlength=1 << 15)
    return hist, lo0


@pytest.mark.parametrize("seed", range(4))
def test_settle_bucket_and_kth_in_bucket(seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(3000, generator=g) * 1e-3).to(torch.bfloat16).float()  # bf16 values: low bits 0
    x[:1500] = x[:1500] + torch.randn(1500, generator=g) * 1e-6  # half of them inside buckets
    a = x.abs().numpy()
    hist, lo0 = _bucket_hists(a)
    bits = a.view(np.uint32)
    settled = opened = 0
    for k in (1, 2, 10, 600, 1500, 2999, 3000):
        thr, n_gt, n_eq = ref_kth(a, k)
        b, kth = sel.settle_bucket(hist, lo0, k)
        assert b == sel.float_bits(thr) >> 16
        if kth is not None:
            settled += 1
            assert kth == (thr, n_gt, n_eq)
        else:
            opened += 1
            assert sel.float_bits(thr) & 0xFFFF != 0
            rest = bits[bits < (b << 16) + 1]  # what a set-aside pass keeps besides the bucket
            keep = bits[(bits >= (b << 16) + 1) & (bits < (b + 1) << 16)]
            n_above = int((bits >= (b + 1) << 16).sum())
            assert sel.kth_in_bucket(np.concatenate([keep, rest]), b, k, n_above) == thr
    assert settled and opened


def test_radix_thresholds_pass2():
    x = np.abs(np.random.default_rng(0).standard_normal((2, 5000)).astype(np.float32))
    x[1, :2000] = 0.5  # ties at the threshold
    hh = np.stack([_bucket_hists(r)[0] for r in x])

    def pass2(buckets, slots, nslots):
        out = np.zeros((nslots, 1 << 16), dtype=np.int64)
        for i in range(buckets.shape[0]):
            bits = x[i].view(np.uint32)
            for b, s in zip(buckets[i], slots[i]):
                if b >= 0:
                    out[s] += np.bincount(bits[(bits >> 16) == b] & 0xFFFF, minlength=1 << 16)
        return out

    ks = [1, 1000, 2500, 5000]
    thr = sel.radix_thresholds(hh, ks, pass2, [{}, {1: -1.0}])
    assert thr[1][1] == -1.0  # already known: kept
    for i in range(2):
        for k in ks[int(i == 1) :]:
            assert thr[i][k] == ref_kth(x[i], k)[0]


# ---------------------------------------------------------------- in memory


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bracketed", [False, True])
def test_kth_largest_ties_and_ends(dtype, bracketed, request):
    if bracketed:
        request.getfixturevalue("small")
    n = 3000
    for a in (_ties(n, 1), torch.full((n,), 0.75), torch.randn(n, generator=torch.Generator().manual_seed(2)).abs()):
        a = a.to(dtype)
        for k in (1, 2, n // 5, n // 2, n - 1, n):
            check_kth(a, k)
        for bad in (0, n + 1):
            with pytest.raises(ValueError):
                sel.kth_largest(a, bad)
    if bracketed:  # the bracket answers the middle ranks, ties straddling the threshold included
        a = _ties(n, 3).to(dtype)
        thr, n_gt, n_eq, eq_idx = sel.kth_largest(a, n // 2)
        assert eq_idx is not None and n_gt < n // 2 < n_gt + n_eq


@pytest.mark.parametrize("bracketed", [False, True])
def test_kth_largest_nan_inf(bracketed, request):
    if bracketed:
        request.getfixturevalue("small")
    n = 2000
    a = _ties(n, 4)
    a[::7] = NAN  # NaN never counts toward k
    a[3] = a[11] = math.inf  # inf is the largest
    m = int((~torch.isnan(a)).sum())
    for k in (1, 2, 3, n // 3, m - 1, m, m + 1, n):
        check_kth(a, k)
    thr, n_gt, n_eq, _ = sel.kth_largest(a, n)  # fewer than k numbers: the smallest, counts < k
    assert float(thr) == 0.0 and n_gt + n_eq == m < n
    thr, n_gt, n_eq, _ = sel.kth_largest(torch.full((n,), NAN), 5)
    assert math.isnan(float(thr)) and n_gt == n_eq == 0


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.integers(65, 1500),
    st.sampled_from(DTYPES + [torch.float64]),
    st.sampled_from(["ties", "normal", "nan"]),
    st.integers(0, 2**16),
    st.floats(0.0, 1.0),
)
def test_kth_largest_property(small, n, dtype, kind, seed, q):
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":
        a = _ties(n, seed, levels=1 + seed % 9)
    else:
        a = torch.randn(n, generator=g).abs()
        if kind == "nan":
            a[torch.rand(n, generator=g) < 0.1] = NAN
            a[0] = math.inf
    a = a.to(dtype)
    check_kth(a, max(1, min(n, round(q * n))))


def test_kth_largest_bracket_misses_fall_back(small, monkeypatch):
    a = torch.arange(3000, dtype=torch.float32)
    for br in ((0.0, 10.0), (2990.0, 2999.0)):  # all of the top k above it / fewer than k inside it
        monkeypatch.setattr(sel, "_sample_bracket", lambda *args, br=br: br)
        thr, n_gt, n_eq, eq_idx = sel.kth_largest(a, 1000)
        assert (float(thr), n_gt, n_eq, eq_idx) == (2000.0, 999, 1, None)


def test_tie_picks():
    a = torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0])
    assert sel.tie_picks(a, 1.0, 2).tolist() == [0, 2]
    assert sel.tie_picks(a, 1.0, 2, "high").tolist() == [2, 4]
    assert sel.tie_picks(a, 1.0, 9, "high").tolist() == [0, 2, 4]  # fewer exist: all
    assert sel.tie_picks(a, 1.0, 1, "low", torch.tensor([2, 4])).tolist() == [2]


# ---------------------------------------------------------------- streamed


def _family(n: int, dtype, seed: int, n_models: int = 3):
    g = torch.Generator().manual_seed(seed)
    base = (0.02 * torch.randn(n, generator=g)).to(dtype)
    models = [(base.float() + 3e-4 * (i + 1) * torch.randn(n, generator=g)).to(dtype) for i in range(n_models)]
    return base, models


def _ref_streamed(base, raws, ks):
    out = []
    for r, k in zip(raws, ks):
        out.append(None if k is None else ref_kth((r.float() - base.float()).abs(), k))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", [True, False])
def test_streamed_thresholds(small, monkeypatch, dtype, kernel):
    if kernel and not passes.CPasses.usable(torch.zeros(1), [torch.zeros(1)], torch.device("cpu")):
        pytest.skip("no C kernels")
    monkeypatch.setattr(passes, "SEGMENT", 1000)  # the kernel reads the tensor in segments
    routes = {"sample": 0, "hist": 0}

    def counted(key, fn):
        def wrapped(*a):
            routes[key] += 1
            return fn(*a)

        return wrapped

    monkeypatch.setattr(sel, "_sample_bracket", counted("sample", sel._sample_bracket))
    monkeypatch.setattr(sel, "_bracket_hists", counted("hist", sel._bracket_hists))
    n = 4000
    base, models = _family(n, dtype, 7)
    models.append(base.clone())  # all |δ| = 0: every k ties
    hists = tvstats.bucket_histograms if kernel else None
    released = []
    for ks in ([1, n // 5, n // 2, n], [n // 5, None, 3 * n // 4, 7], [None, None, None, None]):
        got = sel.streamed_thresholds(base, models, ks, lambda s, e: released.append((s, e)), hists)
        assert got == _ref_streamed(base, models, ks), ks
    assert routes["hist"] > 0 or (kernel and dtype == torch.bfloat16)  # bf16: every bucket settled
    assert (routes["sample"] > 0) == (not kernel or dtype == torch.float16)  # no kernel for fp16
    assert released and all(0 <= s < e <= n for s, e in released)
    with pytest.raises(ValueError):
        sel.streamed_thresholds(base, models[:1], [0])


def test_streamed_thresholds_nan_inf_and_misses(small, monkeypatch):
    n = 4000
    base, models = _family(n, torch.float32, 8, n_models=2)
    models[0][::13] = NAN  # the kernel refuses non-finite values: the sample route
    models[0][5] = math.inf
    models[1][3000:] = base[3000:]  # a quarter of |δ| is 0
    ks = [n // 5, 7 * n // 8]
    want = _ref_streamed(base, models, ks)
    assert sel.streamed_thresholds(base, models, ks, None, tvstats.bucket_histograms) == want
    # brackets that miss (too high, too low, too wide) fall back to the whole |δ|
    for br in ((1.0, 2.0), (0.0, 0.0), (0.0, 1.0)):
        monkeypatch.setattr(sel, "_sample_bracket", lambda *a, br=br: br)
        assert sel.streamed_thresholds(base, models, ks) == want


# ---------------------------------------------------------------- the analysis kernel


@pytest.mark.parametrize("c, ambiguous", [(True, tvstats.AMBIGUOUS_MAX), (True, -1.0), (False, None)])
def test_analysis_thresholds_segmented(monkeypatch, c, ambiguous):
    """The C route (set-aside members, or pass 2 with AMBIGUOUS_MAX < 0) and the torch route."""
    if c and not passes.CPasses.usable(torch.zeros(1), [torch.zeros(1)], torch.device("cpu")):
        pytest.skip("no C kernels")
    monkeypatch.setattr(passes, "SEGMENT", 700)
    if ambiguous is not None:
        monkeypatch.setattr(tvstats, "AMBIGUOUS_MAX", ambiguous)
    n = 3000
    base, models = _family(n, torch.bfloat16, 9, n_models=2)
    models[1] = (base.float() + torch.randn(n, generator=torch.Generator().manual_seed(1)) * 1e-3).to(torch.bfloat16)
    models[1][:200] = base[:200]  # zeros
    cls = passes.CPasses if c else passes.TorchPasses
    backend = passes.cpu_backend(cls, base, models, n, None)
    k_trim, k_top = n // 5, n // 3
    ks = [k_trim, k_top]
    route = tvstats._two_passes if c else tvstats._three_passes
    thr = route(backend, n, ks, k_trim, k_top, 2)[2]
    for i, m in enumerate(models):
        for k in ks:
            assert max(thr[i][k], passes.TINY) == max(ref_kth((m.float() - base.float()).abs(), k)[0], passes.TINY)
