"""Merge-readiness verdicts: what was seen, with numbers, and what to do.

Structural checks read only metadata (names, shapes, dtypes, config, tokenizer, model card);
metric checks read a `Report`. Both run from a cached report too (and are re-run on it, so a cached
analysis is judged by the current rules), because the metadata they need is recorded in
`report.structure["meta"]` at analysis time. The base findings (a sibling base, one model, a zero task
vector) live in findings_base, the spectral ones in findings_spectral.

Thresholds are calibrated on trained families (the demo's, analysis/demo/family, and a second one; recipes
in scripts/train_demo_family.py); the evidence is quoted beside each rule.
"""

from __future__ import annotations

import math
from pathlib import Path

from mergescope.io.labels import short_labels
from mergescope.stats.findings_base import (
    base_offset_findings,
    identical_findings,
    one_model_finding,
    same_model_name,
)
from mergescope.stats.findings_spectral import SAR_NOTE, spectral_findings
from mergescope.stats.report import SEVERITIES, Finding

__all__ = ["SAR_NOTE", "collect_meta", "findings_for", "same_model_name", "spectral_findings"]

# ---- thresholds ---------------------------------------------------------------------------------
# Measured on two trained families: the demo (analysis/demo/family, 4 layers, hidden 64) and a second one
# (6 layers, hidden 96, other data: `scripts/train_demo_family.py --family second`), over the projection
# matrices (attention + MLP, where independent inits are uncorrelated; norm weights start at 1 in every
# model and would hide a different base):
#                                   weight cosine to base   weight relative norm   (whole-model cos / rel)
#   demo code, prose, dialog             0.990 - 0.991           0.138 - 0.144         0.996 / 0.083 - 0.089
#   second pkg, docs, logs, pkg_b/c      0.970 - 0.990           0.147 - 0.256         0.985 - 0.996 / 0.09 - 0.18
#   demo overtrained (3x steps,
#     3x LR, one domain)                 0.723                   1.346                 0.834 / 0.792
#   demo other_ft (fine-tune of
#     another seed's base)               0.0004                  1.447                 0.435 / 1.077
# Real LLM fine-tunes sit closer still (weight cosine > 0.999, relative norm < 0.05), and bases of the
# same architecture trained apart are near 0, so the margins below are wide on both sides.
DIFFERENT_BASE_COSINE = 0.30  # weight cosine below this: not a fine-tune of this base
DRIFT_RELATIVE_NORM = 0.50  # weight relative norm above this ...
DRIFT_COSINE = 0.90  # ... or weight cosine below this: drifted
# Demo: overtrained vs code 9.6x, the domain fine-tunes <= 1.07x; second family: logs vs pkg 2.0x (there the
# asymmetry tracks the merge's gap, Spearman 0.72 pooled, but no merge failed for the asymmetry alone).
MAGNITUDE_ASYMMETRY_WARN = 5.0
# Pairwise sign conflict: independent deltas give 50 %. Fine-tunes of one base: demo 37-48 %, second
# family 39-46 %; each demo fine-tune against the other base's fine-tune: 53-57 %.
PAIR_SIGN_CONFLICT_WARN = 0.52
# A cell whose kept coordinates (TIES trim) disagree more often than independent ones would (50 %): chance
# level, not calibrated on merge outcomes (the trimmed conflict tracks TIES's gap, Spearman 0.81 demo /
# 0.72 second family, but no level was validated); the message says so.
CELL_TRIMMED_CONFLICT_NOTE = 0.5


def collect_meta(ck) -> dict:
    """Metadata the structural checks need, small enough to cache with the report."""
    from mergescope.io.naming import site_of

    embed_rows = {}
    for info in ck.infos():
        s = site_of(info.name)
        if s.module in ("embed_tokens", "lm_head") and len(info.shape) == 2:
            embed_rows[info.name] = info.shape[0]
    return {
        "path": str(ck.path),
        "label": ck.label,  # a Hugging Face repo id when given as one (its path is a cache snapshot)
        "tokenizer": ck.tokenizer_fingerprint(),
        "declared_base": _text(ck.declared_base),
        "name_or_path": _text(ck.name_or_path),
        "model_type": _text(ck.model_type),
        "vocab_size": ck.vocab_size,
        "embed_rows": embed_rows,
        "is_lora": bool(getattr(ck, "lora", None) is not None or ck.is_delta),
    }


def _text(value, limit: int = 300) -> str | None:
    """A name from a model card or config as the checks compare it: a short string, or None (a list or
    an object there is not a name, and a long one is cut so the cached report stays small)."""
    return str(value)[:limit] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


def _short(names: list[str], k: int = 3) -> str:
    s = ", ".join(names[:k])
    return s + (f" (+{len(names) - k} more)" if len(names) > k else "")


def structural_findings(report) -> list[Finding]:
    st = report.structure
    meta = st.get("meta", {})
    base_meta = meta.get(report.base, {})
    out: list[Finding] = []
    for name, count in (st.get("base_nonfinite") or {}).items():
        out.append(
            Finding(
                "error",
                "non-finite",
                None,
                f"base tensor {name} holds {count} NaN/Inf values; every merge through it is undefined — re-download or fix the base",
            )
        )
    for m in report.models:
        missing = st.get("missing", {}).get(m, [])
        if missing:
            out.append(
                Finding(
                    "error",
                    "missing-tensors",
                    m,
                    f"{len(missing)} tensors of the base are absent: {_short(missing)}; is it the same architecture? "
                    "Merge methods need every tensor in every model",
                )
            )
        extra = st.get("extra", {}).get(m, [])
        if extra:
            out.append(
                Finding(
                    "warning",
                    "missing-tensors",
                    m,
                    f"{len(extra)} tensors are not in the base: {_short(extra)}; they will be ignored by a merge",
                )
            )
        vocab_names = set()
        mm = meta.get(m, {})
        diff = st.get("vocab_diff", {}).get(m)
        rows = [
            (nm, bshape, mshape)
            for nm, bshape, mshape in st.get("shape_mismatch", {}).get(m, [])
            if nm in base_meta.get("embed_rows", {}) and bshape[1:] == mshape[1:]
        ]
        vocab_names = {nm for nm, *_ in rows}
        if rows and diff is not None:  # aligned by token: compared on the shared tokens, mergeable
            ex = ", ".join(repr(t) for t in diff["examples_model"][:3]) or "none"
            nm, bshape, mshape = rows[0]
            out.append(
                Finding(
                    "warning",
                    "vocab-mismatch",
                    m,
                    f"its vocabulary differs from the base's ({nm}: {mshape[0]} rows, the base {bshape[0]}): "
                    f"{diff['only_model']} tokens only here (e.g. {ex}), "
                    f"{diff['only_base']} only in the base; embeddings and head were compared on the "
                    f"{diff['shared']} shared tokens. Merge with `tokenizer_source: union` (or `base`) to align them",
                )
            )
        for nm, bshape, mshape in rows if diff is None else []:
            out.append(
                Finding(
                    "error",
                    "vocab-mismatch",
                    m,
                    f"{nm} has {mshape[0]} rows, the base {bshape[0]}: the vocabulary differs and there is no "
                    "tokenizer.json to align it by; add the tokenizer files, then merge with `tokenizer_source: union`",
                )
            )
        others = [x for x in st.get("shape_mismatch", {}).get(m, []) if x[0] not in vocab_names]
        if others:
            nm, bshape, mshape = others[0]
            out.append(
                Finding(
                    "error",
                    "shape-mismatch",
                    m,
                    f"{len(others)} tensors differ in shape from the base, e.g. {nm}: {mshape} vs {bshape}; "
                    "this is a different architecture or size and cannot be merged with it",
                )
            )
        bt, mt = base_meta.get("tokenizer"), mm.get("tokenizer")
        if bt and mt and bt != mt and not vocab_names:
            out.append(
                Finding(
                    "warning",
                    "vocab-mismatch",
                    m,
                    "tokenizer files differ from the base's (same embedding size): token ids may mean "
                    "different things; compare the tokenizers or set tokenizer_source",
                )
            )
        bad = st.get("nonfinite", {}).get(m, 0)
        if bad:
            out.append(
                Finding(
                    "error",
                    "non-finite",
                    m,
                    f"{bad} NaN/Inf values in its weights (first in {st.get('nonfinite_where', {}).get(m, '?')}); "
                    "a merge would spread them — re-export the checkpoint",
                )
            )
        bd, md = st.get("base_dtypes", {}), st.get("dtypes", {}).get(m, {})
        floats = {d for d in md if d.startswith(("F", "BF"))}
        if len(floats) > 1:
            out.append(
                Finding(
                    "warning",
                    "dtype-mixed",
                    m,
                    f"holds tensors in {', '.join(sorted(floats))}; check it was exported cleanly",
                )
            )
        elif floats and set(bd) and floats != {d for d in bd if d.startswith(("F", "BF"))}:
            out.append(
                Finding(
                    "info",
                    "dtype-mixed",
                    m,
                    f"stored as {', '.join(sorted(floats))} while the base is {', '.join(sorted(d for d in bd if d.startswith(('F', 'BF'))))}; "
                    "deltas are computed in float32, set out_dtype for the merge",
                )
            )
        declared = mm.get("declared_base")
        if declared and not same_model_name(declared, base_meta):
            out.append(
                Finding(
                    "warning",
                    "declared-base-differs",
                    m,
                    f"its model card/config names base {declared!r}, not {Path(report.base).name!r}; "
                    "make sure you picked the right base",
                )
            )
    return out


def metric_findings(report) -> list[Finding]:
    """Verdicts from the task-vector statistics (thresholds and their evidence: top of this file)."""
    out: list[Finding] = []
    if not report.sites:
        return out
    whole = report.whole()
    weights = report.weights()
    n = report.n
    nonfinite_models = {f.model for f in structural_findings(report) if f.code == "non-finite"}
    shown = dict(zip(report.models, short_labels([report.base, *report.models])[1:]))
    scope = report.weights_scope()
    flagged_base = set()
    for i, m in enumerate(report.models):
        if m in nonfinite_models:
            continue
        cos = weights.cosine_to_base(i)
        rel = weights.relative_norm(i)
        if cos < DIFFERENT_BASE_COSINE:
            flagged_base.add(i)
            out.append(
                Finding(
                    "error",
                    "different-base",
                    m,
                    f"cosine to base {cos:.4f} (relative norm {rel:.3f}) over its {scope}; fine-tunes "
                    f"of a base stay near 1, models trained from another base near 0 (over all tensors, norms "
                    f"included: {whole.cosine_to_base(i):.4f}). Merging it will produce garbage — find its real base",
                )
            )
        elif rel > DRIFT_RELATIVE_NORM or cos < DRIFT_COSINE:
            out.append(
                Finding(
                    "warning",
                    "drifted",
                    m,
                    f"moved far from the base: relative norm {rel:.3f}, cosine to base {cos:.4f} over its "
                    f"{scope} (merge-friendly fine-tunes stay below {DRIFT_RELATIVE_NORM:.2f} / above "
                    f"{DRIFT_COSINE:.2f}); expect the merge to degrade — lower its weight or use TIES/DARE to trim it",
                )
            )
    live = [
        i
        for i in range(n)
        if i not in flagged_base and report.models[i] not in nonfinite_models and whole.total.sq[i] > 0
    ]
    if len(live) >= 2:
        norms = {i: whole.norm(i) for i in live}
        hi = max(live, key=lambda i: norms[i])
        lo = min(live, key=lambda i: norms[i])
        ratio = norms[hi] / norms[lo] if norms[lo] else math.inf
        if ratio > MAGNITUDE_ASYMMETRY_WARN:
            out.append(
                Finding(
                    "warning",
                    "magnitude-asymmetry",
                    report.models[hi],
                    f"its task vector is {ratio:.1f}x the norm of {shown[report.models[lo]]}'s: with equal weights it will "
                    f"dominate the merge; scale weights by about 1/{ratio:.1f} or use normalize/TIES",
                )
            )
        for a_i, a in enumerate(live):
            for b in live[a_i + 1 :]:
                sc = whole.sign_conflict_pair(a, b)
                cs = whole.cosine(a, b)
                if sc > PAIR_SIGN_CONFLICT_WARN or cs < -0.05:
                    worst = _worst_cells(report, a, b)
                    out.append(
                        Finding(
                            "warning",
                            "high-sign-conflict",
                            report.models[a],
                            f"with {shown[report.models[b]]}: {sc:.1%} of shared coordinates have opposite signs "
                            f"(independent deltas give 50%), task-vector cosine {cs:.3f}; worst cells: {worst}. "
                            "Use TIES (sign election) or lower one model's weight there",
                        )
                    )
        cells = []
        for layer, group in report.cell_keys():
            agg = report.cell(layer, group)
            if agg.total.trim_multi_nz and agg.trimmed_sign_conflict > CELL_TRIMMED_CONFLICT_NOTE:
                cells.append((agg.trimmed_sign_conflict, layer, group))
        if cells:
            cells.sort(key=lambda c: (c[0], -1 if c[1] is None else c[1], c[2]), reverse=True)
            desc = ", ".join(f"{_cell_name(layer, g)} {v:.0%}" for v, layer, g in cells[:4])
            out.append(
                Finding(
                    "info",
                    "high-sign-conflict",
                    None,
                    f"{len(cells)} {'cell keeps' if len(cells) == 1 else 'cells keep'} > "
                    f"{CELL_TRIMMED_CONFLICT_NOTE:.0%} sign conflict after a TIES trim at "
                    f"density {report.density}: {desc} (50 % is chance level, not calibrated on merge outcomes)",
                )
            )
    return out


def _cell_name(layer, group) -> str:
    return f"{group}" if layer is None else f"L{layer}.{group}"


def _worst_cells(report, a: int, b: int, k: int = 3) -> str:
    vals = []
    for layer, group in report.cell_keys():
        agg = report.cell(layer, group)
        if agg.total.pair_both[a, b]:
            vals.append((agg.sign_conflict_pair(a, b), layer, group))
    vals.sort(key=lambda v: v[0], reverse=True)
    return ", ".join(f"{_cell_name(layer, g)} {v:.0%}" for v, layer, g in vals[:k]) or "n/a"


def findings_for(report) -> list[Finding]:
    """All findings, errors first."""
    fs = structural_findings(report) + metric_findings(report)
    skip = {f.model for f in fs if f.code in ("different-base", "non-finite")}
    fs += identical_findings(report, skip)
    if report.sites:
        whole = report.whole()
        live = [i for i, m in enumerate(report.models) if m not in skip and whole.total.sq[i] > 0]
        if len(live) == 1:
            fs.append(one_model_finding(report, live[0]))
        fs += base_offset_findings(report, live)
    fs += spectral_findings(report)
    return sorted(fs, key=lambda f: SEVERITIES.index(f.severity))
