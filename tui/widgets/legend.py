"""The heatmap's colour scale: its ends (fixed, or the data's), the swatches with their level glyphs, the
reference a diverging scale is centred on, and which end is good (✔)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from mergescope.tui.format import compact
from mergescope.tui.state.heatdata import Grid
from mergescope.tui.widgets.heatmap import cell_styles, glyph, low_colour

GOOD = "✔"


def legend_text(grid: Grid, short: bool = False, low: bool = False) -> Text:
    """`lo ▁▂…█ hi`, the good end marked ✔; in full, what each end means and the centre's reference."""
    sc = grid.scale
    lo, hi = grid.bounds()
    styles = cell_styles(sc.diverging, low, sc.flipped)
    data = sc.lo is None or sc.hi is None
    lo_txt = ("min " if sc.lo is None and not short else "") + compact(lo, grid.pct)
    hi_txt = ("max " if sc.hi is None and not short else "") + compact(hi, grid.pct)
    t = Text()
    if sc.good == "low":
        t.append(GOOD + " ", "bold green")
    t.append(lo_txt + " ", "bold")
    for k, (gst, nst) in enumerate(styles):
        t.append(glyph(k, len(styles)), gst)
        t.append(" ", nst)
    t.append(" " + hi_txt, "bold")
    if sc.good == "high":
        t.append(" " + GOOD, "bold green")
    if sc.reference and (not short or sc.diverging):
        t.append(f"  {sc.reference}" + (f" {GOOD}" if sc.good == "centre" else ""), "dim")
    if short:
        return t
    words = [w for w in (sc.low_word and f"low: {sc.low_word}", sc.high_word and f"high: {sc.high_word}") if w]
    extra = []
    if words:
        extra.append(" · ".join(words))
    if sc.good in ("low", "high"):
        extra.append(f"{GOOD} good end")
    elif not sc.good and words:
        extra.append("no good end by itself")
    if data:
        extra.append("scaled to this view")
    if extra:
        t.append("\n" + " · ".join(extra), "dim")
    t.append("   · no tensors", "dim")
    if any(v is not None and v == float("inf") for row in grid.values for v in row):
        t.append("  ∞ a model did not move", "dim")
    return t


class Legend(Static):
    DEFAULT_CSS = """
    Legend { height: auto; width: 1fr; padding: 0 1; }
    """

    def show(self, grid: Grid, compact: bool = False) -> None:
        if compact:  # the title sits elsewhere: scale, then the note
            parts = [legend_text(grid, short=True, low=low_colour(self.app))]
            if grid.note:
                parts.append(Text(grid.note, style="italic dim"))
            self.update(Text("\n").join(parts))
            return
        title = Text(grid.title, style="bold")
        if grid.note:
            title.append(f"  {grid.note}", style="italic dim")
        self.update(Text("\n").join([title, legend_text(grid, low=low_colour(self.app))]))
