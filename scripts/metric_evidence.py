"""Which interference metrics predict a merge's outcome? Evidence on the demo family.

Every pair and triple of the demo fine-tunes is merged (in memory) with several methods, each merge is
scored on the held-out texts in bits per byte, and its outcome is the *gap to its specialists*: the
mean over its members of (merged bpb − the member's own bpb) on the member's own text (lower is better,
0 = the merge is as good as every specialist on its task). Every metric the analysis reports, element-wise
and spectral, for the whole model (attention + MLP matrices) and per group, is measured on the same
member sets, and its Spearman rank correlation with the gap is printed per method and pooled.

    python3 scripts/metric_evidence.py [--json out.json] [--rank 64] [--methods ta0.5,ta1,ties,tsv,iso_c,iso_cts]

Takes a few minutes on 2 CPU cores. Deterministic (fixed seeds; the demo family ships with the package).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

FINETUNES = {"code": "code", "code_b": "code", "dialog": "dialog", "prose": "prose"}  # model -> its own text
METHODS = {
    "ta0.5": ("task_arithmetic", {"weight": 0.5}, {}),
    "ta1": ("task_arithmetic", {"weight": 1.0}, {}),
    "ties": ("ties", {"weight": 1.0, "density": 0.5}, {}),
    "tsv": ("tsv", {}, {}),
    "iso_c": ("iso_c", {}, {}),
    "iso_cts": ("iso_cts", {}, {}),
}


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho (average ranks for ties); nan when either side is constant."""

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def _pairs(n):
    return list(itertools.combinations(range(n), 2))


def element_metrics(agg, n: int) -> dict[str, float]:
    """Element-wise numbers of one Aggregate, reduced over the member set (pair means)."""
    pairs = _pairs(n)
    return {
        "sign_conflict": agg.sign_conflict,
        "trimmed_sign_conflict": agg.trimmed_sign_conflict,
        "magnitude_asymmetry": agg.magnitude_asymmetry,
        "cosine_mean": sum(agg.cosine(i, j) for i, j in pairs) / len(pairs),
        "magnitude_ratio_max": max(agg.magnitude_ratio(i, j) for i, j in pairs),
        "relative_norm_mean": sum(agg.relative_norm(i) for i in range(n)) / n,
        "topk_energy_mean": sum(agg.topk_energy(i) for i in range(n)) / n,
    }


def metrics_for(report, n: int) -> dict[str, float]:
    from mergescope.stats.report import Aggregate

    out = {f"all.{k}": v for k, v in element_metrics(report.weights(), n).items()}
    for group in ("attn", "mlp"):
        agg = Aggregate([s for s in report.sites if s.group == group], n)
        out.update({f"{group}.{k}": v for k, v in element_metrics(agg, n).items()})
    if report.spectral is not None:
        out.update(spectral_metrics(report.spectral, n))
    return out


def spectral_metrics(spectral, n: int) -> dict[str, float]:
    """Spectral numbers (mergescope.stats.spectral) of the whole model and per group, reduced like the others."""
    from mergescope.stats.spectral import SpectralAggregate

    out = {}
    for scope in ("all", "attn", "mlp"):
        sites = [s for s in spectral.sites if scope == "all" or s.group == scope]
        agg = SpectralAggregate(sites, n)
        out[f"{scope}.spectral_energy_mean"] = sum(agg.spectral_energy(i) for i in range(n)) / n
        out[f"{scope}.subspace_overlap_mean"] = sum(agg.subspace_overlap(i, j) for i, j in _pairs(n)) / len(_pairs(n))
        out[f"{scope}.sti"] = agg.sti
        out[f"{scope}.sar_min"] = min(agg.sar(i) for i in range(n))
        out[f"{scope}.sar_mean"] = sum(agg.sar(i) for i in range(n)) / n
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write every merge's scores, metrics and the correlations here")
    ap.add_argument("--rank", type=int, default=64, help="K of the spectral metrics (when available)")
    ap.add_argument("--methods", default=",".join(METHODS))
    a = ap.parse_args(argv)
    from mergescope.demo import family_dir, heldout_dir
    from mergescope.merge.methods import REGISTRY
    from mergescope.merge.plan import Plan
    from mergescope.score.candidate import Scorer
    from mergescope.score.texts import load_texts
    from mergescope.stats.readiness import analyze

    fam, texts = family_dir(), load_texts(heldout_dir())
    scorer = Scorer(texts, seed=0)
    names = list(FINETUNES)
    methods = {k: METHODS[k] for k in a.methods.split(",") if METHODS[k][0] in REGISTRY}
    skipped = [k for k in a.methods.split(",") if k not in methods]
    t0 = time.time()
    own = {m: scorer.model(str(fam / m)) for m in names}
    specialist = {m: own[m][FINETUNES[m]].value for m in names}
    sets = [c for r in (2, 3) for c in itertools.combinations(names, r)]
    rows = []
    spectral_kw = {"spectral": a.rank}
    for members in sets:
        report = analyze(str(fam / "base"), [str(fam / m) for m in members], **spectral_kw)
        metrics = metrics_for(report, len(members))
        for key, (method, per_model, top) in methods.items():
            plan = Plan.from_dict(
                {
                    "merge_method": method,
                    "base_model": str(fam / "base"),
                    "models": [
                        {"model": str(fam / m), **({"parameters": per_model} if per_model else {})} for m in members
                    ],
                    **({"parameters": top} if top else {}),
                    "dtype": "float32",
                }
            )
            scores = scorer.plan(plan, label=f"{key}:{'+'.join(members)}")
            gap = sum(scores[FINETUNES[m]].value - specialist[m] for m in members) / len(members)
            rows.append(
                {
                    "members": list(members),
                    "method": key,
                    "gap": gap,
                    "scores": {t: s.value for t, s in scores.items()},
                    "metrics": metrics,
                }
            )
            print(f"{key:8s} {'+'.join(members):24s} gap {gap:+.4f} bpb", file=sys.stderr)
    names_m = sorted({k for r in rows for k in r["metrics"]})
    table = {}
    for metric in names_m:
        table[metric] = {}
        for key in [*methods, "pooled"]:
            sel = [r for r in rows if key == "pooled" or r["method"] == key]
            xs = [r["metrics"][metric] for r in sel]
            ys = [r["gap"] for r in sel]
            table[metric][key] = spearman(xs, ys)
    cols = [*methods, "pooled"]
    print(
        f"\nSpearman rho of each metric with the gap to the specialists ({len(sets)} member sets, {time.time() - t0:.0f} s)"
    )
    print("metric".ljust(34) + "".join(c.rjust(9) for c in cols))
    for metric in names_m:
        print(metric.ljust(34) + "".join(f"{table[metric][c]:9.2f}" for c in cols))
    best = {k: min(r["gap"] for r in rows if r["method"] == k) for k in methods}
    mean = {k: sum(r["gap"] for r in rows if r["method"] == k) / len(sets) for k in methods}
    print("\nmethod    mean gap   best gap  (bits per byte; lower is better)")
    for k in methods:
        print(f"{k:8s} {mean[k]:+9.4f} {best[k]:+9.4f}")
    if skipped:
        print(f"(not registered, skipped: {', '.join(skipped)})")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "spearman": table, "mean_gap": mean}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
