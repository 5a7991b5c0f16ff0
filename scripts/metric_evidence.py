"""Which interference metrics, and which what-if predictions, track a merge's outcome? Evidence on a trained family.

Every pair and triple of a family's fine-tunes is merged (in memory) with several methods, each merge is
scored on the held-out texts in bits per byte, and its outcome is the *gap to its specialists*: the
mean over its members of (merged bpb − the member's own bpb) on the member's own text (lower is better,
0 = the merge is as good as every specialist on its task). Every metric the analysis reports, element-wise
and spectral, for the whole model (attention + MLP matrices) and per group, is measured on the same
member sets, and its Spearman rank correlation with the gap is printed per method and pooled. The
what-if's predictions for each plan (mergescope.merge.whatif: retained mass, merged relative norm, the
interference it reports) are correlated with the gap the same way, and across the methods of one member
set (does the plan it predicts to interfere less score better?).

    python3 scripts/metric_evidence.py [--json out.json] [--rank 64] [--methods ta0.5,ta1,ties,tsv,iso_c,iso_cts]
    python3 scripts/metric_evidence.py --family second --dir DIR     # DIR: train_demo_family.py --family second --out DIR

Takes about 3 minutes on 2 CPU cores (the second family about 25). Deterministic (fixed
seeds; the demo family ships with the package, the second is trained by scripts/train_demo_family.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

# family -> {model: its own held-out text}; one seed-only soup ingredient per family (code_b, pkg_b)
FAMILIES = {
    "demo": {"code": "code", "code_b": "code", "dialog": "dialog", "prose": "prose"},
    "second": {"pkg": "pkg", "pkg_b": "pkg", "docs": "docs", "logs": "logs"},
}
# The what-if's predictions over the whole model (mergescope.merge.whatif.CellPrediction)
PREDICTIONS = ("retained", "merged_relative_norm", "conflict")
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


def predictions(report, plan) -> dict[str, float]:
    """The what-if's whole-model predictions for `plan` over `report` (no tensor read), to 6 digits: plans
    the what-if cannot tell apart (equal weights: the same retained mass) tie instead of ranking by rounding."""
    from mergescope.merge.whatif import from_plan

    cell = from_plan(report, plan).cell(report.sites)
    return {k: float(f"{float(getattr(cell, k)):.6g}") for k in PREDICTIONS}


def family_paths(family: str, root: str | None) -> tuple[Path, Path]:
    """(family dir, held-out dir): the shipped demo's, or DIR/family and DIR/heldout as the trainer writes them."""
    if root is None:
        if family != "demo":
            raise SystemExit(f"--family {family} needs --dir (where train_demo_family.py --family {family} wrote it)")
        from mergescope.demo import family_dir, heldout_dir

        return family_dir(), heldout_dir()
    fam, held = Path(root) / "family", Path(root) / "heldout"
    missing = [str(fam / m) for m in ["base", *FAMILIES[family]] if not (fam / m).is_dir()]
    if missing or not held.is_dir():
        raise SystemExit(f"--dir {root}: missing {', '.join(missing) or held}; train it first")
    return fam, held


def plan_for(fam: Path, members, method: str, per_model: dict, top: dict):
    from mergescope.merge.plan import Plan

    return Plan.from_dict(
        {
            "merge_method": method,
            "base_model": str(fam / "base"),
            "models": [{"model": str(fam / m), **({"parameters": per_model} if per_model else {})} for m in members],
            **({"parameters": top} if top else {}),
            "dtype": "float32",
        }
    )


def correlations(rows: list[dict], field: str, methods) -> dict[str, dict[str, float]]:
    """Spearman rho of every number in rows[*][field] with the gap: per method, pooled, and (predictions)
    within each member set across methods, averaged."""
    names = sorted({k for r in rows for k in r[field]})
    table = {}
    for name in names:
        table[name] = {}
        for key in [*methods, "pooled"]:
            sel = [r for r in rows if key == "pooled" or r["method"] == key]
            table[name][key] = spearman([r[field][name] for r in sel], [r["gap"] for r in sel])
        by_set: dict[tuple, list] = {}
        for r in rows:
            by_set.setdefault(tuple(r["members"]), []).append(r)
        within = [spearman([r[field][name] for r in g], [r["gap"] for r in g]) for g in by_set.values()]
        within = [x for x in within if not math.isnan(x)]  # nan: the number is the same for every method
        table[name]["within_set"] = sum(within) / len(within) if within else float("nan")
    return table


def print_table(title: str, table: dict, cols) -> None:
    print(f"\n{title}")
    print("".ljust(34) + "".join(c.rjust(11) for c in cols))
    for name, row in table.items():
        print(name.ljust(34) + "".join(f"{row[c]:11.2f}" for c in cols))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write every merge's scores, metrics, predictions and the correlations here")
    ap.add_argument("--rank", type=int, default=64, help="K of the spectral metrics (when available)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--family", choices=sorted(FAMILIES), default="demo")
    ap.add_argument("--dir", help="the family's root (family/ and heldout/ inside); the demo's by default")
    a = ap.parse_args(argv)
    from mergescope.merge.methods import REGISTRY
    from mergescope.score.candidate import Scorer
    from mergescope.score.texts import load_texts
    from mergescope.stats.readiness import analyze

    finetunes = FAMILIES[a.family]
    fam, held = family_paths(a.family, a.dir)
    scorer = Scorer(load_texts(held), seed=0)
    names = list(finetunes)
    methods = {k: METHODS[k] for k in a.methods.split(",") if METHODS[k][0] in REGISTRY}
    skipped = [k for k in a.methods.split(",") if k not in methods]
    t0 = time.time()
    own = {m: scorer.model(str(fam / m)) for m in names}
    specialist = {m: own[m][finetunes[m]].value for m in names}
    sets = [c for r in (2, 3) for c in itertools.combinations(names, r)]
    rows = []
    for members in sets:
        report = analyze(str(fam / "base"), [str(fam / m) for m in members], spectral=a.rank)
        metrics = metrics_for(report, len(members))
        for key, (method, per_model, top) in methods.items():
            plan = plan_for(fam, members, method, per_model, top)
            scores = scorer.plan(plan, label=f"{key}:{'+'.join(members)}")
            gap = sum(scores[finetunes[m]].value - specialist[m] for m in members) / len(members)
            rows.append(
                {
                    "members": list(members),
                    "method": key,
                    "gap": gap,
                    "scores": {t: s.value for t, s in scores.items()},
                    "metrics": metrics,
                    "predicted": predictions(report, plan),
                }
            )
            print(f"{key:8s} {'+'.join(members):24s} gap {gap:+.4f} bpb", file=sys.stderr)
    table = correlations(rows, "metrics", methods)
    pred = correlations(rows, "predicted", methods)
    cols = [*methods, "pooled"]
    print_table(
        f"Spearman rho of each metric with the gap to the specialists ({a.family} family, {len(sets)} member sets, "
        f"{time.time() - t0:.0f} s)",
        table,
        cols,
    )
    print_table(
        "Spearman rho of the what-if's predictions with the gap (within_set: across the methods of one member set)",
        pred,
        [*cols, "within_set"],
    )
    best = {k: min(r["gap"] for r in rows if r["method"] == k) for k in methods}
    mean = {k: sum(r["gap"] for r in rows if r["method"] == k) / len(sets) for k in methods}
    print("\nmethod    mean gap   best gap  (bits per byte; lower is better)")
    for k in methods:
        print(f"{k:8s} {mean[k]:+9.4f} {best[k]:+9.4f}")
    if skipped:
        print(f"(not registered, skipped: {', '.join(skipped)})")
    if a.json:
        out = {"family": a.family, "rows": rows, "spearman": table, "predictions": pred, "mean_gap": mean}
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
