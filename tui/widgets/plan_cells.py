"""Editing the plan editor's table, mixed into it: + / - steps, a typed value for the cell under the
cursor, one value in every cell of the selected model (f), and the cell the Evaluate tab sweeps."""

from __future__ import annotations

import math

from mergescope.tui.format import short_names
from mergescope.tui.state.evaluation import SweepTarget
from mergescope.tui.widgets.heatmap import Heatmap


class CellEdits:
    """Mixin for PlanEditor (it provides `state`, `report`, `param`, `model`, `changed`, `show_problem`,
    `ValueWanted`)."""

    def _cell(self):
        hm = self.query_one("#ratio-table", Heatmap)
        r, c = hm.cursor
        rows = self.state.rows()
        return rows[r], self.state.columns()[c]

    def sweep_target(self) -> SweepTarget | None:
        """The cell under the cursor, for the selected model and table: what the Evaluate tab sweeps."""
        if self.state is None or self.param not in self.state.table_params():
            return None
        row, col = self._cell()
        return SweepTarget(self.param, self.model, row, col)

    def _editable(self) -> bool:
        if self.state is None or self.report is None:
            return False
        if self.state.custom is not None:
            self.notify(
                "this loaded plan is hand-written (filters/slices) and kept verbatim; press R to replace it "
                "with an editable per-group table",
                severity="warning",
            )
            return False
        if not self.state.table_params():
            self.notify(f"{self.state.method} has no per-model numeric parameter to tabulate", severity="warning")
            return False
        return True

    def action_step(self, direction: int) -> None:
        if not self._editable():
            return
        row, col = self._cell()
        if not self.state.keys_of(row, col):
            self.notify("no tensors here: move to a column with a value", severity="warning")
            return
        self.state.step(self.param, row, col, self.model, direction)
        self.changed()

    def action_edit_value(self) -> None:
        if not self._editable():
            return
        row, col = self._cell()
        if not self.state.keys_of(row, col):
            return
        param, model = self.param, self.model
        where = row.label if col == "all" else f"{row.label} · {col}"
        self._ask_value(f"at {where}", lambda v: self.state.set_value(param, row, col, model, v))

    def action_fill_model(self) -> None:
        """One value of the edited parameter for the selected model in every cell of its table."""
        if not self._editable():
            return
        param, model = self.param, self.model
        self._ask_value("in every cell", lambda v: self.state.set_everywhere(param, model, v))

    def _ask_value(self, where: str, apply) -> None:
        """Ask for a value of the edited parameter (starting at the cell under the cursor's), then `apply` it."""
        row, col = self._cell()
        cur = self.state.cell_value(self.param, row, col, self.model) if self.state.keys_of(row, col) else None
        spec = self.state.spec.param(self.param)
        name = short_names(self.state.models, 20)[self.model]

        def done(value):
            if value is None:
                return
            from mergescope.io.errors import InputError

            try:
                apply(value)
            except InputError as exc:
                self.show_problem(str(exc))
                return
            self.changed()

        self.post_message(
            self.ValueWanted(
                f"{self.param} of {name} {where}",
                None if cur is None or math.isnan(cur) else cur,
                spec.min if spec else None,
                spec.max if spec else None,
                spec.help if spec else "",
                done,
            )
        )
