"""The plan editor: method, global parameters, a per-(group, layer band) table per model, and a live
what-if heatmap beside the measured one.

The editor is handed a report and a `PlanState` (`show`) and edits that state in place; it posts
`Changed` after each edit and asks for what only the app can do (re-measure, reset) with messages. The
app answers with `show_whatif` (a prediction from the Report's numbers; nothing is merged) and `show_problem`.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Static

from mergescope.merge.plan.ratio_table import BAND_MODES
from mergescope.tui.format import short_names
from mergescope.tui.state.heatdata import WHATIF_METRICS, HeatData, whatif_grid
from mergescope.tui.state.plan_display import measured_grid, prediction_line, table_grid
from mergescope.tui.state.plan_state import VOCAB_CHOICES, PlanState, band_name
from mergescope.tui.widgets.heatmap import Heatmap
from mergescope.tui.widgets.legend import Legend
from mergescope.tui.widgets.plan_cells import CellEdits
from mergescope.tui.widgets.plan_form import PlanForm


class PlanEditor(CellEdits, PlanForm, Vertical):
    HELP_TITLE = "Plan editor"
    PALETTE_GROUP = "Plan"
    DEFAULT_CSS = """
    PlanEditor { height: 1fr; }
    PlanEditor #plan-toolbar { height: auto; padding: 0 1; background: $boost; }
    PlanEditor #plan-form { height: auto; padding: 0 1; }
    PlanEditor #plan-form Label { padding: 0 1 0 2; }
    PlanEditor #plan-form Select { width: 21; }
    PlanEditor.-narrow #plan-form .method-label { display: none; }
    PlanEditor #plan-form Input { width: 10; }
    PlanEditor #plan-form Checkbox { border: none; height: 1; padding: 0 1; background: transparent; }
    PlanEditor #plan-error { height: auto; color: $error; padding: 0 1; }
    PlanEditor #plan-body { height: 1fr; }
    PlanEditor .plan-col { width: 1fr; min-width: 24; }
    PlanEditor #plan-ratio-col { max-width: 40; }
    PlanEditor .plan-col Heatmap { height: 1fr; }
    PlanEditor .plan-col .col-title { height: 1; padding: 0 1; text-style: bold; }
    PlanEditor #plan-whatif-col, PlanEditor #plan-measured-col { border-left: vkey $primary 50%; }
    PlanEditor #whatif-detail { height: auto; max-height: 4; padding: 0 1; background: $boost; }
    PlanEditor #plan-predicted { height: auto; max-height: 3; padding: 0 1; background: $boost; display: none; }
    PlanEditor.-narrow #plan-measured-col { display: none; }
    PlanEditor.-narrow.-measured #plan-measured-col { display: block; }
    PlanEditor.-narrow.-measured #plan-whatif-col { display: none; }
    """
    BINDINGS = [
        Binding("plus,equals_sign", "step(1)", "+ step", tooltip="increase the selected ratio", id="plan.inc"),
        Binding("minus,underscore", "step(-1)", "- step", tooltip="decrease the selected ratio", id="plan.dec"),
        Binding("enter", "edit_value", "type a value", id="plan.edit"),
        Binding(
            "f",
            "fill_model",
            "one value everywhere",
            tooltip="set the selected model's value in every cell of this table",
            id="plan.fill",
        ),
        Binding("m", "next_model(1)", "next model", id="plan.next_model"),
        Binding("M", "next_model(-1)", "previous model", show=False, id="plan.prev_model"),
        Binding("i", "toggle_include", "in/out of plan", tooltip="include / leave out the model", id="plan.include"),
        Binding("a", "next_param", "next parameter table", id="plan.param"),
        Binding("b", "next_bands", "layer bands", id="plan.bands"),
        Binding(
            "k", "next_vocab", "vocabulary", tooltip="donor's / union / base tokenizer", show=False, id="plan.vocab"
        ),
        Binding("t", "next_method(1)", "next method", id="plan.method"),
        Binding("T", "next_method(-1)", "previous method", show=False, id="plan.prev_method"),
        Binding("w", "next_whatif", "what-if metric", id="plan.whatif"),
        Binding(
            "r",
            "remeasure",
            "re-measure at plan density",
            tooltip="re-measure trimmed conflict at the plan's density",
            id="plan.remeasure",
        ),
        Binding("R", "reset_plan", "reset to an editable table", show=False, id="plan.reset"),
        Binding("s", "app.export_plan", "export YAML", id="plan.export"),
        Binding("l", "app.load_plan", "load plan", id="plan.load"),
        Binding("O", "app.tune_table", "tune this table", tooltip="tune this table with Optuna", id="plan.tune"),
        Binding(
            "F", "app.fit_table", "fit this table", tooltip="fit the weight table by gradient descent", id="plan.fit"
        ),
    ]

    class Changed(Message):
        """The plan state was edited: its prediction is out of date."""

    class RemeasureRequested(Message):
        """Measure the plan's own models at its density (the analysis measured others)."""

    class ResetRequested(Message):
        """Replace the plan with an editable default table for its method."""

    class ValueWanted(Message):
        """Ask the user for one cell's number (the app owns the dialogs); `answer` gets it, or None."""

        def __init__(self, prompt: str, value: float | None, lo: float | None, hi: float | None, hint: str, answer):
            super().__init__()
            self.prompt, self.value, self.lo, self.hi, self.hint, self.answer = prompt, value, lo, hi, hint, answer

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.report = None
        self.state: PlanState | None = None
        self.data: HeatData | None = None
        self.param = "weight"
        self.model = 0
        self.whatif_id = "retained"
        self.preds = None
        self.whatif = None

    # -- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static("No analysis yet.", id="plan-toolbar")
        yield Horizontal(id="plan-form")
        yield Static("", id="plan-error")
        with Horizontal(id="plan-body"):
            with Vertical(classes="plan-col", id="plan-ratio-col"):
                yield Static("", classes="col-title", id="ratio-title")
                yield Heatmap(id="ratio-table")
                yield Legend(id="ratio-legend")
            with Vertical(classes="plan-col", id="plan-whatif-col"):
                yield Static("", classes="col-title", id="whatif-title")
                yield Heatmap(id="whatif-map")
                yield Legend(id="whatif-legend")
            with Vertical(classes="plan-col", id="plan-measured-col"):
                yield Static("", classes="col-title", id="measured-title")
                yield Heatmap(id="measured-map")
                yield Legend(id="measured-legend")
        yield Static("", id="whatif-detail")
        yield Static("", id="plan-predicted")

    def on_resize(self, event) -> None:
        narrow = event.size.width < 110
        if narrow != self.has_class("-narrow"):
            self.set_class(narrow, "-narrow")
            if self.state is not None:
                self.refresh_table()
                self._toolbar()
                self._draw_whatif()

    @property
    def narrow(self) -> bool:
        """Below 110 columns the prediction and its measured counterpart share one panel (w alternates)."""
        return self.has_class("-narrow")

    # -- showing --------------------------------------------------------------------------------
    def show(self, report, state: PlanState) -> None:
        """A report and the plan to edit for it (the first included model is selected)."""
        self.report = report
        self.data = HeatData(report)
        self.state = state
        self.model = next((i for i, inc in enumerate(state.included) if inc), 0)
        self.preds = None
        self.refresh_all()

    def set_state(self, state: PlanState) -> None:
        """Another plan for the same report: the selected model and table stay."""
        self.state = state
        self.refresh_all()

    def refresh_all(self) -> None:
        """Everything after the state changed: form, table, toolbar."""
        if self.state is None or self.report is None:
            return
        if self.param not in self.state.table_params():
            self.param = self.state.table_params()[0] if self.state.table_params() else "weight"
        self.call_later(self._build_form)  # async: old widgets go before new ones (same ids) arrive
        self.refresh_table()
        self._toolbar()
        self.show_problem(None)

    def show_problem(self, problem: str | None) -> None:
        """Why the plan cannot be predicted or merged as it stands (None clears it)."""
        error = self.query_one("#plan-error", Static)
        error.update(Text(f"✖ {problem}") if problem else "")
        error.display = bool(problem)  # no blank line while there is nothing to say

    def _toolbar(self) -> None:
        st = self.state
        short = short_names(st.models, 14)
        sep = " │ " if self.narrow else "  │  "
        t = Text()
        t.append(st.method, "bold cyan")
        t.append(sep + ("" if self.narrow else "editing "), "dim")
        t.append(self.param, "bold")
        t.append(" of ")
        t.append(short[self.model], "bold")
        t.append(" (m) ")
        if st.included[self.model]:
            t.append("✔ in" if self.narrow else " ✔ in plan", "green")
        else:
            t.append("✖ out" if self.narrow else " ✖ left out", "red")
        t.append(" (i)" + sep, "dim")
        t.append(f"{band_name(st.band_mode)} (b)" if self.narrow else f"bands: {band_name(st.band_mode)} (b)")
        chosen = [short[i] for i in st.chosen()]
        t.append(sep + ("" if self.narrow else "merging "), "dim")
        t.append(" + ".join(chosen) or "nothing", "bold")
        if st.tokenizer_source or (self.report is not None and self.report.structure.get("vocab_diff")):
            t.append(sep, "dim")
            t.append(f"vocab: {st.tokenizer_source or 'donor'} (k)", "bold" if st.tokenizer_source else "yellow")
        if st.custom is not None:
            t.append("\n")
            t.append(
                "loaded plan is hand-written (filters/slices): kept verbatim and read-only here; R resets to a table",
                "yellow",
            )
        elif st.note:
            t.append("\n")
            t.append(st.note, "dim italic")
        self.query_one("#plan-toolbar", Static).update(t)

    def refresh_table(self) -> None:
        grid = table_grid(self.state, self.param, self.model)
        if self.narrow:
            grid.note = ""  # the parameter's help is in the prompt (Enter, f); the rows are needed for the map
        self.query_one("#ratio-table", Heatmap).set_grid(grid)
        self.query_one("#ratio-legend", Legend).show(grid, compact=True)
        self.query_one("#ratio-title", Static).update(Text(f"plan: {grid.title}", style="bold"))

    def show_prediction(self, text: Text) -> None:
        """The sensitivity's predicted change per text for the table as it is, beside the measured one."""
        line = self.query_one("#plan-predicted", Static)
        line.update(text)
        line.display = bool(text.plain)

    # -- what-if ----------------------------------------------------------------------------------
    def show_whatif(self, preds, whatif) -> None:
        self.preds, self.whatif = preds, whatif
        self._draw_whatif()

    def _draw_whatif(self) -> None:
        if self.preds is None or self.data is None:
            return
        metric = next(m for m in WHATIF_METRICS if m.id == self.whatif_id)
        short = short_names(self.report.models, 14)
        who = f" · {short[self.model]}" if metric.per_model else ""
        chosen = self.state.chosen() if self.state else []
        exact = self.whatif is not None and self.whatif.conflict_report is not None
        grid = whatif_grid(
            self.data,
            self.preds,
            metric,
            self.model,
            title=f"predicted: {metric.short or metric.label}{who}",
            measured_models=len(chosen) if exact else self.report.n,
        )
        if metric.id == "conflict":
            first = next((p for row in self.preds for p in row if p is not None), None)
            if first is not None and first.conflict_trimmed:
                grid.title = f"measured: conflict after trim at d={first.measured_density}"
            else:
                grid.title = "measured: sign conflict (no magnitude trim)"
        grid.note = self.whatif.note if self.whatif is not None else ""
        hm = self.query_one("#whatif-map", Heatmap)
        hm.set_grid(grid)
        self.query_one("#whatif-legend", Legend).show(grid, compact=True)
        self.query_one("#whatif-title", Static).update(
            Text.assemble((grid.title, "bold"), ("  (w)" if self.narrow else "", "dim"))
        )
        mgrid = measured_grid(self.data, metric, self.model, self.state.chosen() if self.state else [])
        mm = self.query_one("#measured-map", Heatmap)
        mm.set_grid(mgrid)
        self.query_one("#measured-legend", Legend).show(mgrid, compact=True)
        self.query_one("#measured-title", Static).update(
            Text.assemble((mgrid.title, "bold"), ("  (w)" if self.narrow else "", "dim"))
        )
        self._detail(*hm.cursor)

    def _detail(self, r: int, c: int) -> None:
        t = Text()
        if self.preds is not None and 0 <= r < len(self.preds) and 0 <= c < len(self.preds[r]):
            t.append(f"{self.data.rows[r][0]}·{self.data.columns('groups')[c]}  ", "bold")
            chosen = self.state.chosen() if self.state else []
            t.append_text(prediction_line(self.preds[r][c], self.report, self.whatif, chosen))
            if self.whatif is not None and self.whatif.warnings:
                t.append("\n" + "; ".join(self.whatif.warnings), "yellow")
        self.query_one("#whatif-detail", Static).update(t)

    def on_heatmap_cursor_moved(self, event: Heatmap.CursorMoved) -> None:
        event.stop()
        hid = event.heatmap.id
        if hid == "ratio-table" and self.state is not None and self.data is not None:
            row = self.state.rows()[event.row] if event.row < len(self.state.rows()) else None
            if row is None:
                return
            target = self._report_row(row)
            if target is not None:
                for mid in ("#whatif-map", "#measured-map"):
                    self.query_one(mid, Heatmap).move_to(target, event.col)
        elif hid == "whatif-map":
            self.query_one("#measured-map", Heatmap).move_to(event.row, event.col)
            self._detail(event.row, event.col)
        elif hid == "measured-map":
            self.query_one("#whatif-map", Heatmap).move_to(event.row, event.col)

    def _report_row(self, row) -> int | None:
        labels = [r[1:] for r in self.data.rows]  # (layer, group)
        if row.band is not None:
            key = (row.band[0], None)
        else:
            key = (None, row.group)
        return labels.index(key) if key in labels else None

    # -- editing (the cells: plan_cells.py) ---------------------------------------------------
    def changed(self) -> None:
        """After an edit: redraw the table and say so (the app asks for a new prediction)."""
        if self.state is not None:
            self.state.note = ""
        self.refresh_table()
        self._toolbar()
        self.show_problem(None)
        self.post_message(self.Changed())

    def action_next_model(self, step: int) -> None:
        if self.state is None:
            return
        self.model = (self.model + step) % len(self.state.models)
        self.refresh_table()
        self._toolbar()
        self._draw_whatif()

    def action_toggle_include(self) -> None:
        if self.state is None:
            return
        if self.state.custom is not None and not self._editable():
            return
        self.state.included[self.model] = not self.state.included[self.model]
        self.changed()

    def action_next_param(self) -> None:
        if self.state is None or not self._editable():
            return
        params = self.state.table_params()
        self.param = params[(params.index(self.param) + 1) % len(params)] if self.param in params else params[0]
        self.state.table(self.param)
        self.changed()

    def action_next_bands(self) -> None:
        if self.state is None or not self._editable():
            return
        mode = BAND_MODES[(BAND_MODES.index(self.state.band_mode) + 1) % len(BAND_MODES)]
        self.state.set_band_mode(mode)
        self.changed()

    def action_next_vocab(self) -> None:
        """Cycle the output vocabulary: the donor's tokenizer, the union of the models', the base's."""
        if self.state is None or not self._editable():
            return
        order = [None, *VOCAB_CHOICES]
        self.state.tokenizer_source = order[(order.index(self.state.tokenizer_source) + 1) % len(order)]
        self.changed()

    def action_next_method(self, step: int) -> None:
        if self.state is None:
            return
        from mergescope.merge.methods import REGISTRY

        names = list(REGISTRY)
        cur = names.index(self.state.method) if self.state.method in names else 0
        self.set_method(names[(cur + step) % len(names)])

    def set_method(self, method: str) -> None:
        self.state.choose_method(method)
        self.state.note = ""
        self.refresh_all()
        self.post_message(self.Changed())

    def action_next_whatif(self) -> None:
        """The next prediction; in a narrow terminal each prediction is followed by its measured counterpart."""
        if self.narrow and not self.has_class("-measured"):
            self.add_class("-measured")
            return
        self.remove_class("-measured")
        ids = [m.id for m in WHATIF_METRICS]
        self.whatif_id = ids[(ids.index(self.whatif_id) + 1) % len(ids)]
        self._draw_whatif()

    def action_remeasure(self) -> None:
        self.post_message(self.RemeasureRequested())

    def action_reset_plan(self) -> None:
        if self.state is not None:
            self.post_message(self.ResetRequested())
