"""Findings about the reference itself: is this base the models' base, and what can the set tell?

`base-offset` (a sibling base: the models were trained from another checkpoint than this base, e.g. a "v2"
of it), `shared-component` (a large common part with the profile of runs of one recipe), `one-model`
(what a single model can and cannot tell), `identical-to-base` (a zero task vector). The numbers come from
`stats.shared` (ratios of the report's Gram sums); the thresholds and their evidence sit beside the rule.
"""

from __future__ import annotations

from pathlib import Path

from mergescope.stats.report import Finding
from mergescope.stats.shared import SharedPart, shared_part

# ---- base-offset: the evidence (whole model; c = the models' mean task vector, rᵢ = τᵢ − c) -------------
# Two trained families: the demo (analysis/demo/family, 4 layers, hidden 64) and a second one (6 layers,
# hidden 96, other data; `scripts/train_demo_family.py --family second`). "Sibling": fine-tunes of
# sibling_base (the base trained further on general text; relative difference 0.05) analysed against
# base. Profile: correlation across non-norm cells of the energy per coordinate of c and of the residuals.
#                                        mean pair cosine   sign conflict   ‖c‖/mean‖τ‖   profile
#   other tasks, true base   demo 3      0.22 (0.14-0.37)   0.37-0.46       0.69          0.99
#                            second 3    0.19 (0.12-0.32)   0.39-0.46       0.69          1.00
#                            pairs       0.12-0.37          0.37-0.46       0.76-0.83     0.91-1.00
#   sibling, against base    demo 3      0.58 (0.54-0.66)   0.25-0.30       0.85          0.99
#                            second 3    0.46 (0.36-0.65)   0.27-0.37       0.80          0.98
#                            pairs       0.36-0.66          0.25-0.37       0.83-0.91     0.93-1.00
#   runs of one recipe       demo 3      0.74 (0.74-0.75)   0.23            0.91          0.70
#   (soup ingredients)       second 3    0.63               0.28            0.87          0.59
#                            pairs       0.63-0.75          0.22-0.28       0.90-0.93     0.54-0.75
# Soup and sibling overlap in cosine, so no cosine alone separates them; their profiles do not overlap
# (soup residuals are seed noise: a low share in the LM head, a high one in the embeddings). Margins on two
# small families are about 0.05 (cosine) and 0.08 (profile): a hint, which is why the message gives both
# readings. Missed: sibling pairs of unrelated tasks (second family 0.36, 0.38: true fine-tunes reach 0.37).
BASE_OFFSET_COSINE = 0.42  # mean pairwise task-vector cosine at or above: a large shared part
BASE_OFFSET_PROFILE = 0.85  # ... and a profile correlation at or above: the residuals look like tasks
# Measured cost of a wrong base, demo, sib_code + sib_prose (bits per byte on held-out code / prose):
# task arithmetic 1.0 + 1.0 against base 2.355 / 2.259, against sibling_base 2.212 / 2.119; with weights
# summing to 1 (linear 0.5 + 0.5: 2.204 / 2.100; TIES normalised: 2.204 vs 2.202) the base cancels.
WRONG_BASE_COST = "1.0 + 1.0 of two demo sibling fine-tunes: 0.14 bits per byte worse than against their real base"

METHODS_NOTE = (
    "For the merge: weights summing to 1 (linear, soups, TIES/DELLA with normalize: true) cancel the base, so a "
    "wrong base is harmless; task arithmetic, DARE or breadcrumbs (normalize: false) with weights summing to "
    f"Σw > 1 count the common part Σw − 1 extra times ({WRONG_BASE_COST})."
)


def same_model_name(declared: str, base_meta: dict) -> bool:
    """Does a declared base (hub id or path) name our base? Compare the last path components."""

    def tail(x: str | None) -> str:
        return Path(str(x).rstrip("/")).name.lower() if x else ""

    d = tail(declared)
    if not d:
        return True
    candidates = {
        tail(base_meta.get("path")),
        tail(base_meta.get("label")),
        tail(base_meta.get("name_or_path")),
        tail(base_meta.get("declared_base")),
    }
    return d in candidates


def named_base(meta: dict) -> str | None:
    """The base a model names: its card's `base_model` (or adapter config), else a config `_name_or_path`
    that is not the model's own name (a config saved from its base keeps the base's)."""
    if meta.get("declared_base"):
        return meta["declared_base"]
    nop, path = meta.get("name_or_path"), meta.get("path")
    if nop and path and Path(str(nop).rstrip("/")).name.lower() != Path(str(path).rstrip("/")).name.lower():
        return nop
    return None


def declared_note(report, idx) -> tuple[str, bool]:
    """(a sentence on the bases the models' cards/configs name, whether they all name one other base)."""
    meta = report.structure.get("meta", {})
    base_meta = meta.get(report.base, {})
    named = {report.models[i]: named_base(meta.get(report.models[i], {})) for i in idx}
    given = {m: b for m, b in named.items() if b}
    if not given:
        return "Their model cards and configs name no base.", False
    other = {m: b for m, b in given.items() if not same_model_name(b, base_meta)}
    base_name = Path(str(report.base)).name
    if not other:
        return f"Their model cards/configs name this base ({base_name!r}).", False
    names = ", ".join(repr(n) for n in sorted(set(other.values())))
    one_other = len(set(other.values())) == 1 and len(other) == len(idx)
    if one_other:
        return (
            f"All their model cards/configs name base {names}, not {base_name!r}, which supports the first reading.",
            True,
        )
    return f"The model cards/configs of {', '.join(sorted(other))} name base {names}, not {base_name!r}.", False


def _range(vals, pct: bool = False) -> str:
    vals = [100 * v for v in vals] if pct else list(vals)
    f = "{:.0f}" if pct else "{:.2f}"
    lo, hi = f.format(min(vals)), f.format(max(vals))
    return (lo if lo == hi else f"{lo}–{hi}") + (" %" if pct else "")


def _numbers(sp: SharedPart) -> str:
    like = "like" if sp.profile_corr >= BASE_OFFSET_PROFILE else "unlike"
    return (
        f"pairwise task-vector cosine {_range(sp.pair_cosine.values())} (fine-tunes of other tasks from one base: "
        f"0.12–0.37), sign conflict {_range(sp.pair_sign_conflict.values(), True)} (37–46 %); their mean task "
        f"vector (norm {sp.common_relative_norm:.1%} of the base's) holds {sp.common_ratio:.0%} of their mean norm "
        f"and explains {_range(sp.explained.values(), True)} of each one's energy, and what is left of each model is "
        f"spread over the layers {like} it (profile correlation {sp.profile_corr:.2f}; runs of one recipe: 0.54–0.75, "
        "fine-tunes of other tasks: 0.91–1.00)"
    )


def base_offset_findings(report, live: list[int]) -> list[Finding]:
    """`base-offset` or `shared-component` for the live models' common part (rules and evidence above)."""
    sp = shared_part(report, live)
    if sp is None or sp.mean_cosine < BASE_OFFSET_COSINE:
        return []
    who = ", ".join(report.models[i] for i in live)
    note, cards_other = declared_note(report, live)
    if sp.profile_corr >= BASE_OFFSET_PROFILE or cards_other:
        return [
            Finding(
                "warning",
                "base-offset",
                None,
                f"{who} share a large common part: {_numbers(sp)}. Most likely they were trained from another "
                "checkpoint than this base (a sibling: another version of it, or it trained further), and the common "
                "part is the difference of the two bases; less likely they are runs of one recipe sharing their task "
                f"(soup ingredients), whose remainders are seed noise spread unlike it. {note} To do: find their "
                "real base and analyse against it, or merge them linearly with equal weights and analyse them "
                f"against that mean to see their own deltas. {METHODS_NOTE}",
            )
        ]
    return [
        Finding(
            "info",
            "shared-component",
            None,
            f"{who} share a large common part: {_numbers(sp)}. Most likely they are runs of one recipe (one task, "
            "other seeds or hyperparameters: soup ingredients) and the common part is their task: average them "
            "(a soup); this base is right. Less likely they are fine-tunes of other tasks from a sibling of this "
            f"base, whose offset they all carry. {note} {METHODS_NOTE}",
        )
    ]


def identical_findings(report, skip: set[str]) -> list[Finding]:
    """Models whose task vector is zero: every weight equals the base's."""
    whole = report.whole()
    return [
        Finding(
            "warning",
            "identical-to-base",
            m,
            "identical to the base: every weight equals the base's (task vector 0), so a merge gains nothing "
            "from it and its interference numbers are empty; did you pick the base (or a checkpoint saved "
            "before training) by mistake?",
        )
        for i, m in enumerate(report.models)
        if m not in skip and whole.total.sq[i] <= 0 and whole.total.numel > 0
    ]


def one_model_finding(report, i: int) -> Finding:
    """What one model tells, and what it cannot."""
    m = report.models[i]
    w = report.weights()
    meta = report.structure.get("meta", {})
    named = named_base(meta.get(m, {}))
    card = ""
    if named:
        same = same_model_name(named, meta.get(report.base, {}))
        card = f" Its card/config names base {named!r}: {'this base' if same else 'not this base'}."
    return Finding(
        "info",
        "one-model",
        m,
        f"one model against this base (weight cosine {w.cosine_to_base(i):.3f}, relative norm "
        f"{w.relative_norm(i):.3f}). One model tells whether it is a "
        "fine-tune of this base and how far it moved; it cannot tell whether this base is its true base or a "
        "sibling of it (another version: a small offset shows only as a part several models' task vectors "
        "share), nor how models interfere (sign conflict, cosines, the what-if need two)."
        f"{card} Add the models you mean to merge with it.",
    )
