"""The exact numbers behind one heatmap cell, and the tensors it aggregates."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from mergescope.tui.format import compact, fmt, short_names
from mergescope.tui.state.heatdata import ALL

MAX_TENSORS = 12
TENSOR_W = 33  # the panel's width: long names keep their informative tail


def _params(numel: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if numel >= div:
            return f"{numel / div:.1f}{unit}"
    return str(numel)


def cell_renderable(report, row_label: str, col: str, agg, metric=None, value=None) -> Group:
    where = row_label if col == ALL else f"{row_label} · {col}"
    if agg is None:
        return Group(Text(where, style="bold"), Text("no tensors here", style="dim"))
    n = report.n
    short = short_names(report.models, 11)
    parts = [
        Text.assemble((where, "bold"), (f"   {len(agg.tensors)} tensors, {_params(agg.total.numel)} params", "dim"))
    ]
    if metric is not None:
        exact = (
            "∞" if value is not None and value == float("inf") else ("-" if value is None else f"{value:.5g}")
        )  # 5 digits: stable across CPUs (summation order)
        parts.append(Text.assemble((metric.label, "cyan"), " = ", (exact, "bold")))
        if metric.reading:
            parts.append(Text(metric.reading, style="italic"))
    models = Table(box=None, header_style="bold", padding=(0, 1, 0, 0), expand=False)
    models.add_column("model", no_wrap=True, overflow="ellipsis", max_width=9)
    for col_name, w in (("‖τ‖", 5), ("rel", 5), ("top", 4), ("cos θ₀", 6)):
        models.add_column(col_name, justify="right", no_wrap=True, min_width=w)
    for i in range(n):
        models.add_row(
            short[i],
            compact(agg.norm(i)),
            compact(agg.relative_norm(i)),
            fmt(agg.topk_energy(i), pct=True),
            f"{agg.cosine_to_base(i):.4f}",
        )
    parts.append(models)
    if n >= 2:
        pairs = Table(box=None, header_style="bold", padding=(0, 1, 0, 0), expand=False)
        pairs.add_column("pair", no_wrap=True, overflow="ellipsis", max_width=13)
        for col_name, w in (("cos", 6), ("sign≠", 5), ("ratio", 5)):
            pairs.add_column(col_name, justify="right", no_wrap=True, min_width=w)
        for i in range(n):
            for j in range(i + 1, n):
                pairs.add_row(
                    f"{short[i][:6]}–{short[j][:6]}",
                    f"{agg.cosine(i, j):+.3f}",
                    fmt(agg.sign_conflict_pair(i, j), True),
                    compact(agg.magnitude_ratio(i, j)),
                )
        parts.append(pairs)
        parts.append(
            Text.assemble(
                ("all models  ", "bold"),
                f"sign conflict {fmt(agg.sign_conflict, True)}, ",
                f"trimmed at d={report.density} {fmt(agg.trimmed_sign_conflict, True)}, ",
                f"asymmetry {fmt(agg.magnitude_asymmetry)}",
            )
        )
    tensors = Text()
    tensors.append("tensors\n", style="bold")
    for name in agg.tensors[:MAX_TENSORS]:
        shown = name if len(name) <= TENSOR_W else "…" + name[-(TENSOR_W - 1) :]
        tensors.append(f" {shown}\n", style="")
    if len(agg.tensors) > MAX_TENSORS:
        tensors.append(f"  … and {len(agg.tensors) - MAX_TENSORS} more\n", style="dim")
    parts.append(tensors)
    return Group(*parts)


class CellDetail(ScrollView):
    """Line-API panel: a new cell re-renders ~30 lines and repaints, without a screen re-layout (the
    virtual height only ever grows, so moving between cells never changes the layout)."""

    HELP_TITLE = "Cell detail"
    DEFAULT_CSS = """
    CellDetail { border-left: vkey $primary 50%; padding: 0 1; scrollbar-size-vertical: 1; }
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.renderable = Text("")
        self._strips: list[Strip] = []
        self._height = 0

    def show(self, renderable) -> None:
        self.renderable = renderable
        self._render_strips()
        self.refresh()

    def _render_strips(self) -> None:
        width = self.scrollable_content_region.width or self.size.width
        if width <= 0:
            self._strips = []
            return
        console = self.app.console
        lines = console.render_lines(self.renderable, console.options.update_width(width), pad=False)
        self._strips = [Strip(line).simplify() for line in lines]
        if len(self._strips) > self._height:
            self._height = len(self._strips)
        self.virtual_size = Size(width, self._height)

    def on_resize(self) -> None:
        self._height = 0
        self._render_strips()
        self.refresh()

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        idx = y + int(self.scroll_offset.y)
        style = self.rich_style
        if 0 <= idx < len(self._strips):
            return self._strips[idx].crop_extend(0, width, style).apply_style(style)
        return Strip.blank(width, style)
