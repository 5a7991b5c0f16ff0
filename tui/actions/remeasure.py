"""Re-measuring for the plan, mixed into the app: the plan's own models analysed at its density, so the
what-if's sign conflict is measured for exactly this merge. Small sets are re-measured unasked; `r`
asks, and is always answered (already measured, started, done)."""

from __future__ import annotations

from textual import work
from textual.worker import WorkerState

from mergescope.tui.format import short_names
from mergescope.tui.state.session import RemeasureTarget
from mergescope.tui.widgets.plan_editor import PlanEditor
from mergescope.tui.widgets.progress import JobProgress


class RemeasureJobs:
    """Mixin for the app (it provides `main`, `session`, `report`, `plan_state`, `workers`, `_analyse`,
    `request_whatif`, `show_error`)."""

    _remeasure_key: RemeasureTarget | None = None
    _remeasure_asked = False  # the running re-measure was asked for with `r`: say when it lands

    @work(thread=True, exclusive=True, group="remeasure", exit_on_error=False, name="remeasure")
    def run_remeasure(self, base: str, models: list[str], density: float) -> None:
        self._analyse(base, models, density, "whatif")

    def _remeasuring(self) -> bool:
        return any(
            w.group == "remeasure" and w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in self.workers
        )

    def _start_remeasure(self, target: RemeasureTarget, asked: bool = False) -> None:
        self._remeasure_key = target
        self._remeasure_asked = asked
        self.main.query_one(JobProgress).start(f"measure d={target.density:g}")
        self.run_remeasure(self.report.base, target.models, target.density)

    def _describe(self, target: RemeasureTarget) -> str:
        return f"{' + '.join(short_names(target.models, 14))} at density {target.density:g}"

    def remeasure_done(self, report) -> None:
        self.session.remeasured = report
        target = self._remeasure_key
        if self._remeasure_asked or not self.session.small():
            what = self._describe(target) if target is not None else f"density {report.density:g}"
            self.notify(f"re-measured {what}: the what-if's conflict is now this merge's")
        self._remeasure_asked = False
        self.request_whatif()

    def on_plan_editor_remeasure_requested(self, _: PlanEditor.RemeasureRequested) -> None:
        """Analyse the plan's models alone, at the plan's density: the what-if's trimmed sign conflict
        is then measured for exactly this merge (cached like any analysis)."""
        if self.report is None or self.plan_state is None:
            return
        try:
            self.session.current_plan()
            target = self.session.remeasure_target()
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.show_error(exc, what="re-measure")
            return
        if not target.uniform:
            d = target.density
            self.notify(f"the plan has no single density; measuring at the analysis density {d}", severity="warning")
        if len(target.models) < 2:
            self.notify("sign conflict needs at least two models in the plan", severity="warning")
            return
        if target.measured_by(self.report):
            self.session.remeasured = None
            self.notify(f"already measured: the analysis measured {self._describe(target)}")
            self.request_whatif()
            return
        if target.measured_by(self.session.remeasured):
            self.notify(f"already measured: the what-if uses {self._describe(target)}")
            return
        if target == self._remeasure_key and self._remeasuring():
            self._remeasure_asked = True
            self.notify(f"measuring {self._describe(target)} (progress below)")
            return
        self.notify(f"measuring {self._describe(target)}…")
        self._start_remeasure(target, asked=True)
