"""The analysis pass: every tensor of base + fine-tunes read once, its sums added to its site.

Memory holds a few chunks per model at a time (see tvstats); the result is a `Report` (report.py)
whose findings the caller fills in (findings.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from mergescope.io.naming import site_of
from mergescope.io.progress import Cancelled, Progress, ShouldStop
from mergescope.stats.report import DEFAULT_DENSITY, Report, SiteStats
from mergescope.stats.sites import TOPK_FRACTION, site_sort_key

# Elements per chunk in the per-tensor passes of the pairwise fallback: small enough that the
# several passes over one chunk run from cache, large enough to amortise the per-op overhead.
CHUNK = 1 << 20


def _tensor_stats_pairwise(base, models, nm: str, density: float, st: SiteStats, dev) -> dict:
    """Fallback for more models than the sign-code histogram holds: pair by pair, whole tensors."""
    import torch

    bad: dict = {}
    base_t = base.get(nm).to(dev, dtype=torch.float32)
    if not bool(torch.isfinite(base_t).all()):
        bad["base"] = int((~torch.isfinite(base_t)).sum())
        base_t = torch.nan_to_num(base_t, nan=0.0, posinf=0.0, neginf=0.0)
    taus = [m.get(nm).to(dev, dtype=torch.float32) - base_t for m in models]
    before = st.nonfinite.copy()
    _tensor_stats(base_t, taus, density, st)
    for i in range(len(models)):
        if st.nonfinite[i] > before[i]:
            bad[i] = int(st.nonfinite[i] - before[i])
    return bad


def _tensor_stats(base_t, taus: list, density: float, st: SiteStats) -> None:
    """Add one tensor's contribution (all models) to `st`. `taus` are float32 task vectors."""
    import torch

    from mergescope.stats.selection import kth_largest

    n_models = len(taus)
    numel = base_t.numel()
    st.numel += numel
    st.base_sq += float(torch.dot(base_t.reshape(-1), base_t.reshape(-1)))
    k_trim = int(math.floor(density * numel))
    k_top = int(math.floor(TOPK_FRACTION * numel))
    trim_thr: list = []
    for i, tau in enumerate(taus):
        flat = tau.reshape(-1)
        sq = float(torch.dot(flat, flat))
        if not math.isfinite(sq):
            bad = int((~torch.isfinite(flat)).sum())
            st.nonfinite[i] += bad
            flat = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)
            taus[i] = flat.view_as(tau)
            sq = float(torch.dot(flat, flat))
        st.sq[i] += sq
        st.dot_base[i] += float(torch.dot(flat, base_t.reshape(-1)))
        # top-20 % energy, exact k even when the threshold ties
        if k_top > 0 and sq > 0:
            a = flat.abs()
            thr = kth_largest(a, k_top)[0]
            above = a > thr
            cnt = int(above.sum())
            st.topk_energy[i] += float((flat[above] ** 2).sum(dtype=torch.float64)) + (k_top - cnt) * float(thr) ** 2
        if density >= 1.0:
            trim_thr.append(None)
        elif k_trim <= 0:
            trim_thr.append(math.inf)
        else:
            trim_thr.append(float(kth_largest(flat.abs(), k_trim)[0]))
    for i in range(n_models):
        for j in range(i + 1, n_models):
            d = float(torch.dot(taus[i].reshape(-1), taus[j].reshape(-1)))
            st.dot[i, j] += d
            st.dot[j, i] += d
    # sign statistics, chunked so the passes over one chunk stay in cache
    flats = [t.reshape(-1) for t in taus]
    for start in range(0, numel, CHUNK):
        end = min(numel, start + CHUNK)
        signs = [torch.sign(f[start:end]).to(torch.int8) for f in flats]
        pos = torch.zeros(end - start, dtype=torch.int8)
        neg = torch.zeros(end - start, dtype=torch.int8)
        tpos = torch.zeros(end - start, dtype=torch.int8)
        tneg = torch.zeros(end - start, dtype=torch.int8)
        for i, s in enumerate(signs):
            st.nonzero[i] += int(torch.count_nonzero(s))
            pos += s > 0
            neg += s < 0
            thr = trim_thr[i]
            if thr is None:
                ts = s
            elif thr == math.inf:
                ts = None  # k = 0: the trim keeps nothing
            else:
                ts = s * (flats[i][start:end].abs() >= thr)
            if ts is not None:
                tpos += ts > 0
                tneg += ts < 0
            for j in range(i):
                prod = s * signs[j]
                both = int(torch.count_nonzero(prod))
                opp = int((prod < 0).sum())
                st.pair_both[i, j] += both
                st.pair_both[j, i] += both
                st.pair_opp[i, j] += opp
                st.pair_opp[j, i] += opp
        nz = pos + neg
        st.multi_nz += int((nz >= 2).sum())
        st.multi_conflict += int(((pos > 0) & (neg > 0)).sum())
        tnz = tpos + tneg
        st.trim_multi_nz += int((tnz >= 2).sum())
        st.trim_multi_conflict += int(((tpos > 0) & (tneg > 0)).sum())


def analyze_checkpoints(
    base,
    models: Sequence,
    *,
    density: float = DEFAULT_DENSITY,
    device: str = "cpu",
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> Report:
    """One streaming pass over base + fine-tunes. Returns a Report (findings filled by findings.py)."""
    import torch

    from mergescope.stats.passes import MAX_HIST_MODELS
    from mergescope.stats.tvstats import tensor_stats

    if not 0.0 <= density <= 1.0:
        from mergescope.io.errors import InputError

        raise InputError(
            f"--density {density}: must be between 0 and 1 (TIES trims to this fraction; {DEFAULT_DENSITY} is typical)"
        )
    t0 = time.perf_counter()
    n = len(models)
    sites: dict[tuple, SiteStats] = {}
    structure = {"missing": {}, "extra": {}, "shape_mismatch": {}, "dtypes": {}, "base_dtypes": {}}
    names = [nm for nm in base.names() if base.info(nm).is_float]
    for m in models:
        mnames = set(m.names())
        structure["missing"][m.label] = [nm for nm in base.names() if nm not in mnames]
        bset = set(base.names())
        structure["extra"][m.label] = sorted(nm for nm in mnames if nm not in bset)
        structure["shape_mismatch"][m.label] = [
            [nm, list(base.info(nm).shape), list(m.info(nm).shape)]
            for nm in base.names()
            if nm in mnames and tuple(base.info(nm).shape) != tuple(m.info(nm).shape)
        ]
        structure["dtypes"][m.label] = _dtype_counts(m)
    structure["base_dtypes"] = _dtype_counts(base)
    skip = {nm for m in models for nm, *_ in structure["shape_mismatch"][m.label]}
    rows = _shared_token_rows(base, models, skip, structure)  # vocabulary tensors: compared on shared tokens
    usable = [nm for nm in names if (nm not in skip or nm in rows) and all(nm in m for m in models)]
    total_bytes = sum(base.info(nm).nbytes + sum(m.info(nm).nbytes for m in models) for nm in usable)
    done = 0
    dev = torch.device(device)
    for ti, nm in enumerate(usable):
        if should_stop is not None and should_stop():
            raise Cancelled()
        site = site_of(nm)
        st = sites.get((site.layer, site.group, site.module))
        if st is None:
            st = sites[(site.layer, site.group, site.module)] = SiteStats(site.layer, site.group, site.module, n)
        st.tensors.append(nm)
        if n <= MAX_HIST_MODELS:

            def release(start, stop, nm=nm):
                for ck in (base, *models):
                    ck.release_range(nm, start, stop)

            if nm in rows:
                b_idx, m_idx = rows[nm]
                ins = [base.get(nm)[b_idx], *[m.get(nm)[ix] for m, ix in zip(models, m_idx)]]
                bad = tensor_stats(ins[0], ins[1:], density, st, dev)
            else:
                bad = tensor_stats(base.get(nm), [m.get(nm) for m in models], density, st, dev, release)
        else:
            bad = _tensor_stats_pairwise(base, models, nm, density, st, dev)
        if bad.get("base"):
            structure.setdefault("base_nonfinite", {})[nm] = bad["base"]
        for i in range(n):
            if bad.get(i):
                label = models[i].label
                structure.setdefault("nonfinite", {})[label] = structure.get("nonfinite", {}).get(label, 0) + bad[i]
                structure.setdefault("nonfinite_where", {}).setdefault(label, nm)
        base.release(nm)
        for m in models:
            m.release(nm)
        done += base.info(nm).nbytes + sum(m.info(nm).nbytes for m in models)
        if progress is not None:
            progress(done, total_bytes, f"{ti + 1}/{len(usable)} {nm}")
    report = Report(
        base=base.label,
        models=[m.label for m in models],
        density=density,
        sites=sorted(sites.values(), key=site_sort_key),
        structure=structure,
    )
    report.elapsed_s = time.perf_counter() - t0
    report.bytes_read = done
    return report


def _shared_token_rows(base, models, skip: set, structure: dict) -> dict:
    """{vocabulary tensor: (base rows, [rows per model])} of the tokens base and every model share, for
    the embedding/head tensors whose row counts differ; what differs goes to structure["vocab_diff"]."""
    import torch

    from mergescope.io.errors import InputError
    from mergescope.io.vocabulary import is_vocab_tensor, model_vocab

    names = [nm for nm in skip if is_vocab_tensor(nm)]
    names = [nm for nm in names if all(nm in m and base.info(nm).shape[1:] == m.info(nm).shape[1:] for m in models)]
    if not names:
        return {}
    try:
        bv, mvs = model_vocab(base, base.label), [model_vocab(m, m.label) for m in models]
    except InputError:
        return {}  # no tokenizer.json: nothing to align by
    shared = [t for t, _ in sorted(bv.tokens.items(), key=lambda kv: kv[1]) if all(t in v.tokens for v in mvs)]
    for m, v in zip(models, mvs):
        only_m = sorted((t for t in v.tokens if t not in bv.tokens), key=v.tokens.get)
        only_b = sorted((t for t in bv.tokens if t not in v.tokens), key=bv.tokens.get)
        structure.setdefault("vocab_diff", {})[m.label] = {
            "shared": len(shared),
            "only_model": len(only_m),
            "only_base": len(only_b),
            "examples_model": only_m[:5],
            "examples_base": only_b[:5],
        }
    b_idx = torch.tensor([bv.tokens[t] for t in shared], dtype=torch.long)
    m_idx = [torch.tensor([v.tokens[t] for t in shared], dtype=torch.long) for v in mvs]
    return {nm: (b_idx, m_idx) for nm in names}


def _dtype_counts(ck) -> dict[str, int]:
    out: dict[str, int] = {}
    for info in ck.infos():
        out[info.dtype_name] = out.get(info.dtype_name, 0) + 1
    return out
