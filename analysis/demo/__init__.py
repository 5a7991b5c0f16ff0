"""The bundled demo: a trained tiny Llama family and held-out text per domain (package data).

The family (trained by scripts/train_demo_family.py): a base and its fine-tunes code, prose, dialog,
overtrained (moved far from the base), plus other_ft (a fine-tune of a different base, to show what an
incompatible model looks like). Beside them, for calibration and tests: soup ingredients and fine-tunes of a
sibling base (base trained further), which the explorer does not list.
"""

from __future__ import annotations

from pathlib import Path

from mergescope.io.errors import InputError
from mergescope.stats.report import DEFAULT_DENSITY

DEMO_MODELS = ("code", "prose", "dialog", "overtrained", "other_ft")
# Soup ingredients: three fine-tunes of base on code (other seeds / peak LR); not in DEMO_MODELS.
SOUP_MODELS = ("code", "code_b", "code_c")
# Fine-tunes of SIBLING_BASE (base trained 300 more steps on the mixture: a "v2" of it) on the three domains;
# analysed against base they carry the offset between the two bases (the `base-offset` finding). Not in
# DEMO_MODELS: the explorer's demo shows one family against its true base.
SIBLING_BASE = "sibling_base"
SIBLING_MODELS = ("sib_code", "sib_prose", "sib_dialog")
# The explorer's starting plan: TIES of code + prose, equal weights, trimmed at the analysis density,
# so the what-if's trimmed sign conflict is measured, not guessed.
SAMPLE_PLAN = {"method": "ties", "models": ["code", "prose"], "weight": 1.0, "density": DEFAULT_DENSITY}


def family_dir() -> Path:
    return Path(__file__).resolve().parent / "family"


def heldout_dir() -> Path:
    return Path(__file__).resolve().parent / "heldout"


def demo_paths() -> tuple[Path, list[Path]]:
    """(base, models) of the bundled family; an InputError when it is missing."""
    root = family_dir()
    base = root / "base"
    models = [root / m for m in DEMO_MODELS if (root / m).exists()]
    if not base.exists() or not models:
        raise InputError(f"the demo family is missing under {root}; reinstall mergescope (it ships with the package)")
    return base, models
