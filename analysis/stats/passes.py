"""The chunked passes over one tensor that tvstats.py drives: in torch (any device), or in the C kernel
(kernels/tvstats.c) on the CPU. Both fill τ from the stored inputs chunk by chunk, accumulate the Gram
matrix and the |τ| bit histograms (pass 1), the histograms inside open buckets (pass 2) and the per-
coordinate sign codes (pass 3)."""

from __future__ import annotations

import numpy as np
import torch

CHUNK_CPU = 1 << 18
CHUNK_GPU = 1 << 24
SEGMENT = 1 << 24  # larger tensors are read in segments whose pages are released after each pass
TINY = float(np.finfo(np.float32).tiny)
MAX_HIST_MODELS = 7  # 6**7 code bins; more models use the pairwise fallback in metrics.py
HI = 1 << 15  # |τ| bits >> 16 of a finite non-negative float32 is < 2**15
TINY_BITS = 0x00800000  # float bits of TINY: thresholds are never below it
SET_ASIDE_MIN = 65536  # room for this many set-aside indices at least


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


GRAM_BLOCK = 2048  # sums of products: float32 within a block of this many elements, float64 across


def _gram(Mc: torch.Tensor) -> torch.Tensor:
    """Mc @ Mc.T in float64, with float32 products summed per GRAM_BLOCK columns (like the C kernel):
    a plain float32 matmul over a whole chunk loses ~1e-4 relative precision."""
    R, c = Mc.shape
    whole = c - c % GRAM_BLOCK
    G = torch.zeros((R, R), dtype=torch.float64, device=Mc.device)
    if whole:
        Mb = Mc[:, :whole].reshape(R, -1, GRAM_BLOCK).transpose(0, 1)  # [blocks, R, B]
        G += torch.bmm(Mb, Mb.transpose(1, 2)).double().sum(0)
    if whole < c:
        rest = Mc[:, whole:]
        G += (rest @ rest.T).double()
    return G


def _row_sq_sums(W: torch.Tensor) -> torch.Tensor:
    """Σ_j W[i, j]² per row in float64, float32 within blocks (see _gram)."""
    N, c = W.shape
    whole = c - c % GRAM_BLOCK
    out = torch.zeros(N, dtype=torch.float64, device=W.device)
    if whole:
        Wb = W[:, :whole].reshape(N, -1, GRAM_BLOCK)
        out += (Wb * Wb).sum(-1).double().sum(-1)
    if whole < c:
        out += (W[:, whole:] * W[:, whole:]).sum(-1).double()
    return out


def _to_device(ts: list[torch.Tensor], dev, release=None) -> list[torch.Tensor]:
    """Copy to `dev` SEGMENT elements at a time, releasing each segment's host pages once copied,
    so the host holds at most a segment of each input at a time."""
    out = [torch.empty(t.shape, dtype=t.dtype, device=dev) for t in ts]
    n = ts[0].numel()
    for s in range(0, n, SEGMENT):
        e = min(n, s + SEGMENT)
        for o, t in zip(out, ts):
            o[s:e].copy_(t[s:e])
        if release is not None:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            release(s, e)
    return out


class Segmented:
    """The CPU passes over a large tensor, SEGMENT elements at a time: every result is a sum over
    coordinates, so segments add up; each segment's pages are released after each pass (`release`),
    so resident memory stays at one segment per input instead of the whole tensor."""

    def __init__(self, cls, raw_base, raws, n, dev, release):
        self.N, self.n, self.release = len(raws), n, release
        self.bounds = [(s, min(n, s + SEGMENT)) for s in range(0, n, SEGMENT)]
        self.parts = [cls(raw_base[s:e], [r[s:e] for r in raws], e - s, dev) for s, e in self.bounds]

    def _each(self, fn):
        out = []
        for (s, e), part in zip(self.bounds, self.parts):
            out.append(fn(part))
            if self.release is not None:
                self.release(s, e)
        return out

    def pass1(self, want_hist: bool, **kw):
        res = self._each(lambda p: (*p.pass1(want_hist, **kw), p.lo0 if hasattr(p, "lo0") else None))
        G = sum(r[0] for r in res)
        hist = sum(r[1] for r in res) if want_hist else None
        bad = [sum(r[2][i] for r in res) for i in range(self.N + 1)]
        if res[0][3] is not None:
            self.lo0 = sum(r[3] for r in res)
        return G, hist, bad

    def pass2(self, buckets, slots, nslots):
        return sum(self._each(lambda p: p.pass2(buckets, slots, nslots)))

    def pass3(self, t_trim, t_top):
        res = self._each(lambda p: p.pass3(t_trim, t_top))
        return tuple(sum(r[i] for r in res) for i in range(3))

    def bracket(self, tl, th, pl, ph, cap):
        res = self._each(lambda p: p.bracket(tl, th, pl, ph, min(p.n, cap * p.n // self.n + SET_ASIDE_MIN)))
        idx = np.concatenate([r[4].astype(np.int64) + s for r, (s, _) in zip(res, self.bounds)])
        return (*(sum(r[i] for r in res) for i in range(4)), idx)

    def gather(self, idx):
        cuts = np.searchsorted(idx, [s for s, _ in self.bounds] + [self.n])
        outs = []
        for j, ((s, e), part) in enumerate(zip(self.bounds, self.parts)):
            outs.append(part.gather((idx[cuts[j] : cuts[j + 1]] - s).astype(np.uint32)))
            if self.release is not None:
                self.release(s, e)
        return np.concatenate(outs, axis=1)


class TorchPasses:
    """The three passes with torch ops on chunks (any device, any float dtype)."""

    def __init__(self, raw_base, raws, n, dev, release=None):
        self.dev, self.n, self.N = dev, n, len(raws)
        if dev.type != "cpu" and raw_base.device != dev:
            raw_base, *raws = _to_device([raw_base, *raws], dev, release)
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
        offs = (torch.arange(N, device=dev, dtype=torch.int32) * HI)[:, None]
        for attempt in range(2):
            self.clean = attempt == 1
            G = torch.zeros((N + 1, N + 1), dtype=torch.float64, device=dev)
            hist = torch.zeros(N * HI, dtype=torch.int64, device=dev) if want_hist else None
            bad_tot = [0] * (N + 1)
            for Mc, bad in self._chunks():
                if bad is not None:
                    bad_tot = [x + y for x, y in zip(bad_tot, bad)]
                G += _gram(Mc)
                if want_hist:
                    key = Mc[1:].abs().view(torch.int32).bitwise_right_shift_(16).add_(offs)
                    hist += torch.bincount(key.view(-1), minlength=N * HI)
            if self.clean or bool(torch.isfinite(G).all()):
                break
        hh = hist.cpu().numpy().reshape(N, HI) if want_hist else None
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
        bins = 6**N
        hist = torch.zeros(bins, dtype=torch.int64, device=dev)
        offset = float(sum(6**i for i in range(N)))
        pw = torch.tensor([float(6**i) for i in range(N)], device=dev)[:, None]
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
            e_ge += _row_sq_sums(w)
            code = torch.sign(T).add_(kept, alpha=3.0).mul_(pw).sum(0).add_(offset)
            hist += torch.bincount(code.to(torch.int32), minlength=bins)
        return hist.cpu().numpy(), e_ge.cpu().numpy(), c_ge.cpu().numpy()


C_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


class CPasses:
    """The same passes in the fused C kernels (CPU, float32/bfloat16 contiguous inputs)."""

    @staticmethod
    def usable(raw_base, raws, dev) -> bool:
        from mergescope.stats.kernels import lib

        if dev.type != "cpu" or len(raws) > MAX_HIST_MODELS:
            return False
        ts = [raw_base, *raws]
        if not all(t.dtype in C_DTYPES and t.is_contiguous() and t.device.type == "cpu" for t in ts):
            return False
        return lib() is not None

    def __init__(self, raw_base, raws, n, dev):
        import ctypes

        from mergescope.stats.kernels import lib

        self.lib, self.n, self.N = lib(), n, len(raws)
        self.keep = [raw_base, *raws]  # keep the buffers alive while C reads them
        self.args = (
            ctypes.c_void_p(raw_base.data_ptr()),
            C_DTYPES[raw_base.dtype],
            (ctypes.c_void_p * self.N)(*[r.data_ptr() for r in raws]),
            (ctypes.c_int * self.N)(*[C_DTYPES[r.dtype] for r in raws]),
            self.N,
            n,
        )

    @staticmethod
    def _p(a: np.ndarray):
        import ctypes

        return a.ctypes.data_as(ctypes.c_void_p)

    def pass1(self, want_hist: bool, gram: bool = True):
        """Also sets `lo0`: per model and bucket, how many members have low 16 bits 0 (the bucket's
        smallest value). `gram=False`: histograms only (the Gram matrix comes back zero)."""
        G = np.zeros((self.N + 1, self.N + 1), dtype=np.float64)
        hist = np.zeros((self.N, HI), dtype=np.int64)
        self.lo0 = np.zeros((self.N, HI), dtype=np.int64)
        bad = np.zeros(self.N + 1, dtype=np.int64)
        self.lib.tv_pass1(
            *self.args, self._p(G), self._p(hist), self._p(self.lo0), self._p(bad), int(want_hist), int(gram)
        )
        return G, (hist if want_hist else None), [int(x) for x in bad]

    def pass2(self, buckets: np.ndarray, slots: np.ndarray, nslots: int) -> np.ndarray:
        b2 = np.full((self.N, 2), -1, dtype=np.int32)
        s2 = np.zeros((self.N, 2), dtype=np.int32)
        b2[:, : buckets.shape[1]] = buckets
        s2[:, : slots.shape[1]] = slots
        hist = np.zeros((nslots, 1 << 16), dtype=np.int64)
        self.lib.tv_pass2(*self.args, self._p(b2), self._p(s2), nslots, self._p(hist))
        return hist

    def bracket(self, tl, th, pl, ph, cap: int):
        """tv_bracket: (code histogram, e_top, c_top, c_trim) of the settled coordinates and the sorted
        indices of the set-aside ones."""
        N = self.N
        bounds = [np.asarray(x, dtype=np.uint32) for x in (tl, th, pl, ph)]
        hist = np.zeros(6**N, dtype=np.int64)
        e_top = np.zeros(N, dtype=np.float64)
        c_top = np.zeros(N, dtype=np.int64)
        c_trim = np.zeros(N, dtype=np.int64)
        while True:
            idx = np.empty(max(cap, 1), dtype=np.uint32)
            cnt = self.lib.tv_bracket(
                *self.args,
                *[self._p(b) for b in bounds],
                self._p(hist),
                self._p(e_top),
                self._p(c_top),
                self._p(c_trim),
                self._p(idx),
                cap,
            )
            if cnt <= cap:
                break
            cap = cnt  # more set aside than estimated: once more with room for all
        idx = np.sort(idx[:cnt])  # blocks finish in any order; sorted, the sums below are reproducible
        return hist, e_top, c_top, c_trim, idx

    def gather(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((self.N, idx.size), dtype=np.float32)
        base, bdt, models, mdt, N, _ = self.args
        self.lib.tv_gather(base, bdt, models, mdt, N, self._p(idx), idx.size, self._p(out))
        return out


def cpu_backend(cls, raw_base, raws, n: int, release):
    """`cls` over the whole tensor, or over segments of it when it is large (see Segmented)."""
    dev = torch.device("cpu")
    return Segmented(cls, raw_base, raws, n, dev, release) if n > SEGMENT else cls(raw_base, raws, n, dev)
