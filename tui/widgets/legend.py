"""The heatmap's colour scale: swatches with their level glyphs, and the grid's min and max."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from mergescope.tui.format import compact
from mergescope.tui.state.heatdata import Grid
from mergescope.tui.widgets.heatmap import cell_styles, glyph, low_colour


def legend_text(grid: Grid, short: bool = False, low: bool = False) -> Text:
    lo, hi = grid.bounds()
    styles = cell_styles(grid.diverging, low)
    t = Text()
    if grid.diverging:
        m = max(abs(lo), abs(hi))
        t.append(f"{compact(-m, grid.pct)} ", "bold")
    else:
        t.append(f"min {compact(lo, grid.pct)} ", "bold")
    for k, (gst, nst) in enumerate(styles):
        t.append(glyph(k, len(styles)), gst)
        t.append(" ", nst)
    if grid.diverging:
        t.append(f" {compact(m, grid.pct)}", "bold")
        if not short:
            t.append(f"  (data {compact(lo, grid.pct)}…{compact(hi, grid.pct)})", "dim")
    else:
        t.append(f" max {compact(hi, grid.pct)}", "bold")
    if short:
        return t
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
