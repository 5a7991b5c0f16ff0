"""The merge-readiness checks every merge runs before it keeps anything (CLI, app, soups, sweeps).

From the analysis cache when `mergescope analyze` already judged these inputs (free), else sampled:
a few blocks of a few projection matrices per model give the weight cosine to the reference (the base,
or the first model when the plan has none) and the relative norm of the difference. That evidence is
conclusive after a matrix or two (fine-tunes sit near cosine 1, models of another base near 0), so
the check stops early and reads a small fraction of the model. Headers give the structural facts.
Non-finite values are caught where the merge reads every value anyway: in each merged tensor
(executor.py), naming the input that holds them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from mergescope.io.naming import PROJECTION_GROUPS, site_of
from mergescope.stats.findings import (
    DIFFERENT_BASE_COSINE,
    DRIFT_COSINE,
    DRIFT_RELATIVE_NORM,
    collect_meta,
    same_model_name,
)
from mergescope.stats.report import Finding

BLOCK = 1 << 16  # elements per sampled block
BLOCKS = 4  # blocks per matrix, spread over it
MAX_MATRICES = 8
MIN_MATRICES = 2  # then stop as soon as the evidence is clear either way
CLEAR_SAME, CLEAR_OTHER = 0.95, 0.1

INCOMPATIBLE = ("different-base", "shape-mismatch", "missing-tensors", "vocab-mismatch")
FLAG = {"non-finite": "--allow-non-finite"}  # every other error is overridden by --force-incompatible


@dataclass
class Checks:
    findings: list[Finding] = field(default_factory=list)
    source: str = "sampled"  # or "analysis"
    seconds: float = 0.0
    matrices: dict[str, int] = field(default_factory=dict)  # model -> matrices sampled
    analysis: object = None  # the analysis of exactly the plan's inputs, when one was given (a Report)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]


def flag_for(f: Finding) -> str:
    return FLAG.get(f.code, "--force-incompatible")


def run_checks(plan, cks: dict, jobs, report=None) -> Checks:
    """Findings on the plan's inputs: the analysis' when one is given that measured them against the
    plan's base (restricted to them: a model the plan leaves out does not speak for this merge), else
    sampled ones. Only models that some output tensor combines are sampled (a passthrough stack of
    slices mixes nothing)."""
    t0 = time.perf_counter()
    out = _checks(plan, cks, jobs, report)
    out.findings += _unlisted_modules(plan, cks)
    out.findings += [
        Finding("warning", "ignored-key", plan.source or "plan", f"{path}: {why}")
        for path, why in plan.unused_settings()
    ]
    out.seconds = time.perf_counter() - t0
    return out


def _unlisted_modules(plan, cks) -> list[Finding]:
    from mergescope.merge.plan.modules import unlisted

    return [
        Finding(
            "warning",
            "module-not-listed",
            plan.config_donor(),
            f"modules: {name} is not listed, so its {n} tensors are not written (as mergekit); add "
            f"`{name}:` under `modules:` to keep them",
        )
        for name, n in unlisted(plan, cks).items()
    ]


def analysis_of_inputs(plan, report):
    """`report` restricted to the plan's input models, with the findings recomputed for them alone (the
    base's own findings stay); None when it did not measure every input against the plan's base."""
    from mergescope.merge.whatif import is_base, plan_models_to_report
    from mergescope.stats.findings import findings_for

    if report is None or not plan.base_model or not is_base(plan, report)(plan.base_model):
        return None
    index = plan_models_to_report(plan, report)
    inputs = plan.input_models()
    if not inputs or any(r not in index for r in inputs):
        return None
    chosen = list(dict.fromkeys(index[r] for r in inputs))
    if chosen == list(range(report.n)):
        return report
    sub = report.only(chosen)
    sub.findings = findings_for(sub)
    return sub


def _checks(plan, cks: dict, jobs, report) -> Checks:
    own = analysis_of_inputs(plan, report)
    if own is not None:
        return Checks(list(own.findings), "analysis", analysis=own)
    combined = {x.model for j in jobs if len(j.all_inputs) > 1 for x in j.all_inputs}
    refs = [r for r in plan.referenced_models() if r in combined]
    out = Checks()
    if len(refs) < 2:
        return out
    ref = plan.base_model if plan.base_model in refs else refs[0]
    ref_meta = collect_meta(cks[ref])
    for m in refs:
        if m == ref:
            continue
        ck = cks[m]
        meta = collect_meta(ck)
        if meta.get("declared_base") and not same_model_name(meta["declared_base"], ref_meta):
            out.findings.append(
                Finding(
                    "warning",
                    "declared-base-differs",
                    m,
                    f"its model card/config names base {meta['declared_base']!r}, not {ref!r}",
                )
            )
        out.findings += _structure(ck, cks[ref], m, ref)
        out.findings += _sampled(ck, cks[ref], m, ref, out)
    return out


def _structure(ck, ref_ck, label: str, ref_label: str) -> list[Finding]:
    """Header facts the merge itself does not refuse: tensors it will ignore, float dtypes that differ."""
    out = []
    extra = [n for n in ck.names() if n not in ref_ck]
    if extra:
        out.append(
            Finding(
                "warning",
                "missing-tensors",
                label,
                f"{len(extra)} tensors are not in {ref_label} (e.g. {extra[0]}); the merge ignores them",
            )
        )
    floats = {ck.info(n).dtype_name for n in ck.names() if ck.info(n).is_float}
    ref_floats = {ref_ck.info(n).dtype_name for n in ref_ck.names() if ref_ck.info(n).is_float}
    if floats and ref_floats and floats != ref_floats:
        out.append(
            Finding(
                "warning",
                "dtype-mixed",
                label,
                f"stored as {', '.join(sorted(floats))}, {ref_label} as {', '.join(sorted(ref_floats))}; deltas are "
                "computed in float32, set out_dtype for the output",
            )
        )
    return out


def _matrices(ck, ref_ck) -> list[str]:
    """Projection matrices both hold with one shape, spread over the layers."""
    names = [
        n
        for n in ref_ck.names()
        if site_of(n).group in PROJECTION_GROUPS
        and len(ref_ck.info(n).shape) == 2
        and n in ck
        and ck.info(n).shape == ref_ck.info(n).shape
        and ref_ck.info(n).is_float
    ]
    if len(names) <= MAX_MATRICES:
        return names
    step = len(names) / MAX_MATRICES
    return [names[int(i * step)] for i in range(MAX_MATRICES)]


def _sampled(ck, ref_ck, label: str, ref_label: str, out: Checks) -> list[Finding]:
    import torch

    dot = sq = ref_sq = diff_sq = 0.0
    used = 0
    for name in _matrices(ck, ref_ck):
        a, b = ck.get(name).reshape(-1), ref_ck.get(name).reshape(-1)
        n = a.numel()
        starts = sorted({int(i * max(0, n - BLOCK) / max(1, BLOCKS - 1)) for i in range(BLOCKS)})
        for s in starts:
            x, y = a[s : s + BLOCK].double(), b[s : s + BLOCK].double()
            if not bool(torch.isfinite(x).all()):
                return [
                    Finding(
                        "error",
                        "non-finite",
                        label,
                        f"NaN/Inf values in {name}; a merge would spread them — re-export the checkpoint",
                    )
                ]
            dot += float(x @ y)
            sq += float(x @ x)
            ref_sq += float(y @ y)
            diff_sq += float((x - y) @ (x - y))
        ck.release(name)
        ref_ck.release(name)
        used += 1
        cos = dot / math.sqrt(sq * ref_sq) if sq > 0 and ref_sq > 0 else 0.0
        if used >= MIN_MATRICES and (cos > CLEAR_SAME or cos < CLEAR_OTHER):
            break
    out.matrices[label] = used
    if not used or ref_sq <= 0:
        return []
    cos = dot / math.sqrt(sq * ref_sq) if sq > 0 else 0.0
    rel = math.sqrt(diff_sq / ref_sq)
    where = f"(sampled from {used} projection matrices)"
    if cos < DIFFERENT_BASE_COSINE:
        return [
            Finding(
                "error",
                "different-base",
                label,
                f"its weights have cosine {cos:.3f} with {ref_label}'s {where}; fine-tunes of one base stay near 1, "
                "models trained from another base near 0: the merge would be garbage — find its real base",
            )
        ]
    if rel > DRIFT_RELATIVE_NORM or cos < DRIFT_COSINE:
        return [
            Finding(
                "warning",
                "drifted",
                label,
                f"moved far from {ref_label}: relative norm {rel:.3f}, weight cosine {cos:.3f} {where}; expect the "
                "merge to degrade — lower its weight or trim it (TIES/DARE)",
            )
        ]
    return []
