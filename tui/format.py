"""Formatting shared by the headless renderer (`cmd_analyze`) and the Textual app.

Colours are chosen to survive 256- and 16-colour terminals, and every colour is paired with a number
or a glyph, so nothing is told by colour alone.
"""

from __future__ import annotations

import math

from mergescope.io.labels import short_labels

SEV_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
SEV_GLYPH = {"error": "✖", "warning": "▲", "info": "●"}
OK_GLYPH = "✔"


def fmt(x: float | None, pct: bool = False) -> str:
    """A readable number: 3 decimals below 10, one above; percentages without decimals; ∞ for inf/None."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "∞"
    return f"{x:.0%}" if pct else (f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}")


def compact(x: float | None, pct: bool = False, width: int = 5) -> str:
    """At most `width` (≥ 5) characters, for a heatmap cell: '.0123', '1.234', '12.35', '1e-4', '47%'.
    NaN/None -> '·', inf -> '∞'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "·"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if pct:
        return f"{x * 100:.0f}%"[:width]
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    ax = abs(x)
    room = width - len(sign)
    if ax < 1:
        s = f"{ax:.{room - 1}f}"
        if s.startswith("0.") and len(s[2:].lstrip("0")) >= 2:  # at least 2 significant digits
            return sign + s[1:]
        if not s.startswith("0."):
            ax = float(s)  # rounded up to 1
        else:
            mant, exp = f"{ax:.0e}".split("e")
            return (sign + f"{mant}e{int(exp)}")[:width]
    for d in range(room - 2, -1, -1):
        s = f"{ax:.{d}f}"
        if len(s) <= room:
            return sign + s
    mant, exp = f"{ax:.0e}".split("e")
    return sign + f"{mant}e{int(exp)}"


def heat(x: float | None, lo: float, hi: float) -> str:
    """A colour that survives 16-colour terminals: green / yellow / red by where x sits."""
    if x is None or not math.isfinite(x):
        return "bold red"
    if x >= hi:
        return "bold red"
    if x >= lo:
        return "yellow"
    return "green"


def summary_note(report, whole_columns: str = "‖τ‖, top-20% energy") -> str:
    """What the per-model summary's columns cover: rel. norm and cos to base are the verdicts' numbers."""
    return f"rel. norm, cos to base: over the {report.weights_scope()}, as the verdicts judge; {whole_columns}: all tensors"


def short_names(models: list[str], width: int = 12) -> list[str]:
    """The shortest names that tell the models apart (trailing path components), at most `width`
    characters, never two alike (`mergescope.io.labels`)."""
    return short_labels(models, width)


def display_names(paths: list[str]) -> dict[str, str]:
    """Paths shown by the fewest trailing components that tell them apart: '/x/family/code' -> 'code'
    (or 'family/code' when another path also ends in 'code'). Labels that are not paths come back
    unchanged."""
    return dict(zip(paths, short_labels(paths)))
