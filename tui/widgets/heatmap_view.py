"""The measured heatmap tab: metric / model / pair / column selectors, the map, its legend, cell detail."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Static

from mergescope.tui.format import short_names
from mergescope.tui.keylabels import key_label
from mergescope.tui.state.heatdata import COLUMN_MODES, HeatData, pairs
from mergescope.tui.state.metrics import METRICS, Metric
from mergescope.tui.state.sensitivity_map import SENSITIVITY, sensitivity_grid, text_order
from mergescope.tui.widgets.cell_detail import CellDetail, cell_renderable
from mergescope.tui.widgets.heatmap import Heatmap
from mergescope.tui.widgets.legend import Legend

METRIC_KEYS = Binding.Group("Heatmap metric")
ALL_METRICS = (*METRICS, SENSITIVITY)  # the last is computed from texts and the plan, not from the report


class HeatmapView(Vertical):
    HELP_TITLE = "Heatmap"
    PALETTE_GROUP = "Heatmap"
    DEFAULT_CSS = """
    HeatmapView { height: 1fr; }
    HeatmapView #heat-toolbar { height: auto; padding: 0 1; background: $boost; }
    HeatmapView #heat-body { height: 1fr; }
    HeatmapView #heat-left { width: 1fr; min-width: 30; }
    HeatmapView CellDetail { width: 40; }
    HeatmapView.-narrow #heat-body { layout: vertical; }
    HeatmapView.-narrow CellDetail { width: 1fr; height: 7; border-left: none; border-top: hkey $primary 50%; }
    """
    BINDINGS = [
        Binding(m.key, f"metric('{m.id}')", m.label, show=False, group=METRIC_KEYS, id=f"heatmap.metric.{m.id}")
        for m in ALL_METRICS
    ] + [
        Binding("m", "next_model(1)", "next model", id="heatmap.next_model"),
        Binding("M", "next_model(-1)", "previous model", show=False, id="heatmap.prev_model"),
        Binding("p", "next_pair(1)", "next pair", id="heatmap.next_pair"),
        Binding("P", "next_pair(-1)", "previous pair", show=False, id="heatmap.prev_pair"),
        Binding(
            "t", "next_text(1)", "next text", tooltip="the sensitivity's next text", show=False, id="heatmap.next_text"
        ),
        Binding("T", "next_text(-1)", "previous text", show=False, id="heatmap.prev_text"),
        Binding("c", "toggle_columns", "modules/groups", tooltip="toggle module/group columns", id="heatmap.columns"),
        Binding("n", "next_metric(1)", "next metric", show=False, id="heatmap.next_metric"),
        Binding("N", "next_metric(-1)", "previous metric", show=False, id="heatmap.prev_metric"),
    ]

    class SpectralWanted(Message):
        """A spectral metric was asked for before the spectral pass ran: the app runs it, then `spectral_ready`."""

        def __init__(self, metric_id: str) -> None:
            super().__init__()
            self.metric_id = metric_id

    class SensitivityWanted(Message):
        """The sensitivity was asked for and there is none for the plan as it is: the app computes it,
        then `sensitivity_ready`."""

    metric_id: reactive[str] = reactive("relative_norm", init=False)
    mode: reactive[str] = reactive("modules", init=False)
    model: reactive[int] = reactive(0, init=False)
    pair: reactive[int] = reactive(0, init=False)

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.report = None
        self.data: HeatData | None = None
        self._detail_timer = None
        self.sensitivity = None  # state/sensitivity_map.SensitivityMap
        self.sensitivity_note = ""  # why it is not the current plan's ("": it is)
        self.text: str | None = None  # the sensitivity's text

    def compose(self) -> ComposeResult:
        yield Static("", id="heat-toolbar")
        with Horizontal(id="heat-body"):
            with Vertical(id="heat-left"):
                yield Heatmap(id="heatmap")
                yield Legend(id="heat-legend")
            yield CellDetail(id="heat-detail")

    def on_resize(self, event) -> None:
        narrow = event.size.width < 100
        if narrow != self.has_class("-narrow"):
            self.set_class(narrow, "-narrow")
            self.redraw()

    @property
    def narrow(self) -> bool:
        """Below 100 columns: the detail goes under the map, the toolbar and the legend take one line each."""
        return self.has_class("-narrow")

    # -- state ------------------------------------------------------------------------------
    @property
    def metric(self) -> Metric:
        return next(m for m in ALL_METRICS if m.id == self.metric_id)

    def show(self, report) -> None:
        self.report = report
        self.data = HeatData(report)
        self.sensitivity, self.sensitivity_note, self.text = None, "", None
        if self.metric is SENSITIVITY:
            self.metric_id = "relative_norm"
        self.model = min(self.model, max(0, report.n - 1))
        self.pair = 0
        if (report.n < 2 and self.metric.subject != "model") or (self.metric.spectral and report.spectral is None):
            self.metric_id = "relative_norm"
        self.redraw(keep_cursor=False)

    def subject(self) -> tuple[int, int]:
        if self.report is None:
            return (0, 0)
        if self.metric.subject == "pair":
            ps = pairs(self.report.n)
            return ps[self.pair % len(ps)] if ps else (0, 0)
        return (self.model, 0)

    def subject_label(self) -> str:
        if self.report is None:
            return ""
        short = short_names(self.report.models, 16)
        subj = self.metric.subject
        if self.metric is SENSITIVITY:
            return f"model {short[self.model]} (m) · text {self.text} (t)"
        if subj == "model":
            return f"model {short[self.model]} (m)"
        if subj == "pair":
            i, j = self.subject()
            return f"pair {short[i]} × {short[j]} (p)"
        return f"all {self.report.n} models"

    def redraw(self, keep_cursor: bool = True) -> None:
        if self.data is None:
            return
        i, j = self.subject()
        metric = self.metric
        if metric is SENSITIVITY:
            grid = self._sensitivity_grid()
        else:
            grid = self.data.grid(metric, self.mode, i, j, title=f"{metric.label} — {self.subject_label()}")
        if metric.id == "trimmed_sign_conflict":
            grid.note = f"measured at density {self.report.density}"
        if not grid.row_labels:
            grid.note = "no tensors the base and every model share: see the verdicts"
        hm = self.query_one(Heatmap)
        hm.set_grid(grid, keep_cursor=keep_cursor)
        self.query_one(Legend).show(grid, compact=self.narrow)
        self._toolbar()

    def _toolbar(self) -> None:
        m = self.metric
        sep = " │ " if self.narrow else "  │  "
        t = Text()
        t.append(f"[{key_label(m.key)}] ", "bold cyan")
        t.append(m.title if self.narrow or m is SENSITIVITY else m.label, "bold")
        t.append(sep, "dim")
        t.append(self.subject_label())
        t.append(sep, "dim")
        mode = "groups" if m is SENSITIVITY else self.mode
        t.append(f"{mode} (c)" if self.narrow else f"columns: {mode} (c)")
        t.append(sep, "dim")
        t.append("? keys" if self.narrow else "1-9,0 !@#$% metric  ? keys", "dim")
        self.query_one("#heat-toolbar", Static).update(t)

    def watch_metric_id(self) -> None:
        self.redraw()

    def watch_mode(self) -> None:
        self.redraw()

    def watch_model(self) -> None:
        self.redraw()

    def watch_pair(self) -> None:
        self.redraw()

    # -- actions ----------------------------------------------------------------------------
    def action_metric(self, metric_id: str) -> None:
        metric = next(m for m in ALL_METRICS if m.id == metric_id)
        if metric is SENSITIVITY:
            if self.sensitivity is None or self.sensitivity_note:
                self.post_message(self.SensitivityWanted())  # computed on demand, then shown
            if self.sensitivity is not None:
                self.metric_id = metric_id
            return
        if self.report is not None and self.report.n < 2 and metric.subject != "model":
            self.notify(f"{metric.label} needs at least two fine-tunes", severity="warning")
            return
        if metric.spectral and self.report is not None and self.report.spectral is None:
            self.post_message(self.SpectralWanted(metric_id))  # computed on demand, then shown
            return
        self.metric_id = metric_id

    def spectral_ready(self, metric_id: str) -> None:
        """The report now holds the spectral pass: show the metric that was asked for."""
        if self.report is None:
            return
        self.data = HeatData(self.report)
        if self.metric_id == metric_id:
            self.redraw()
        else:
            self.metric_id = metric_id

    # -- the sensitivity (computed by the app on demand) ---------------------------------------
    def _sensitivity_grid(self):
        smap = self.sensitivity
        if self.text not in smap.text_choices():
            self.text = smap.text_choices()[0]
        grid = sensitivity_grid(
            self.data, smap, self.model, self.text, title=f"{SENSITIVITY.label} — {self.subject_label()}"
        )
        if self.sensitivity_note:
            grid.note = f"{self.sensitivity_note}; {grid.note}" if grid.note else self.sensitivity_note
        return grid

    def sensitivity_ready(self, smap) -> None:
        """A new sensitivity pass: show it (at its first text, or the one shown before)."""
        self.sensitivity, self.sensitivity_note = smap, ""
        if self.text not in smap.text_choices():
            self.text = smap.text_choices()[0]
        if self.metric_id == SENSITIVITY.id:
            self.redraw()
        else:
            self.metric_id = SENSITIVITY.id

    def set_sensitivity(self, smap, note: str) -> None:
        """What the app knows now: the pass it holds and why it is not the current plan's ("": it is)."""
        if smap is self.sensitivity and note == self.sensitivity_note:
            return
        self.sensitivity, self.sensitivity_note = smap, note
        if self.metric is SENSITIVITY:
            if smap is None:
                self.metric_id = "relative_norm"
            else:
                self.redraw()

    def action_next_text(self, step: int) -> None:
        if self.sensitivity is None:
            self.notify("no sensitivity yet: % computes it for the plan and the held-out texts", severity="warning")
            return
        self.text = text_order(self.sensitivity, self.text, step)
        if self.metric is SENSITIVITY:
            self.redraw()
        else:
            self.metric_id = SENSITIVITY.id

    def action_next_metric(self, step: int) -> None:
        has_spectral = self.report is not None and self.report.spectral is not None
        ids = [m.id for m in METRICS if has_spectral or not m.spectral or m.id == self.metric_id]
        if self.sensitivity is not None:
            ids.append(SENSITIVITY.id)
        self.action_metric(ids[(ids.index(self.metric_id) + step) % len(ids)])

    def action_next_model(self, step: int) -> None:
        if self.report is not None and self.report.n:
            if self.metric.subject != "model":  # m means "show one model": switch to a per-model metric
                self.metric_id = "relative_norm"
            self.model = (self.model + step) % self.report.n

    def action_next_pair(self, step: int) -> None:
        if self.report is None or self.report.n < 2:
            self.notify("pairs need at least two fine-tunes", severity="warning")
            return
        if self.metric.subject != "pair":
            self.metric_id = "cosine"
            return
        self.pair = (self.pair + step) % len(pairs(self.report.n))

    def action_toggle_columns(self) -> None:
        self.mode = COLUMN_MODES[(COLUMN_MODES.index(self.mode) + 1) % len(COLUMN_MODES)]

    DETAIL_DELAY_S = 0.04  # held arrow keys move the cursor at full speed; the detail follows when it rests

    def on_heatmap_cursor_moved(self, event: Heatmap.CursorMoved) -> None:
        event.stop()
        if self.data is None:
            return
        if self._detail_timer is not None:
            self._detail_timer.stop()
        self._detail_timer = self.set_timer(self.DETAIL_DELAY_S, self._show_detail)

    def _show_detail(self) -> None:
        self._detail_timer = None
        hm = self.query_one(Heatmap)
        row, col_i = hm.cursor
        grid = hm.grid
        if not grid.row_labels:
            self.query_one(CellDetail).show(cell_renderable(self.report, "", "", None))
            return
        if self.metric is SENSITIVITY:
            from mergescope.tui.widgets.sensitivity_detail import sensitivity_detail

            col = grid.col_labels[col_i]
            args = (self.report.models, self.data.rows[row], col, self.model, self.text, self.sensitivity_note)
            self.query_one(CellDetail).show(sensitivity_detail(self.sensitivity, *args))
            return
        agg = self.data.aggregate(self.mode, row, col_i)
        label = grid.row_labels[row]
        col = grid.col_labels[col_i] if grid.col_labels else ""
        self.query_one(CellDetail).show(cell_renderable(self.report, label, col, agg, self.metric, hm.value))
