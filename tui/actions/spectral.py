"""The spectral pass on demand, mixed into the app: a spectral metric asked for in the heatmap runs the
pass (top-K SVDs of the open set's task vectors; the analysis itself comes from the cache) in a worker
with progress, then the heatmap shows the metric and the verdicts gain the pass's findings."""

from __future__ import annotations

import time

from textual import work
from textual.worker import WorkerState, get_current_worker

from mergescope.io.progress import Cancelled
from mergescope.tui.messages import Progress, SpectralDone
from mergescope.tui.widgets.heatmap_view import HeatmapView
from mergescope.tui.widgets.progress import JobProgress
from mergescope.tui.widgets.verdicts import VerdictsView

SPECTRAL_GROUP = "spectral"
DEFAULT_RANK = 64  # as `--spectral` without K


class SpectralJobs:
    """Mixin for the app (it provides `main`, `session`, `report`, `device`, `use_cache`, `spectral`,
    `workers`, `_has_main`)."""

    def on_heatmap_view_spectral_wanted(self, message: HeatmapView.SpectralWanted) -> None:
        report = self.report
        if report is None:
            return
        if any(
            w.group == SPECTRAL_GROUP and w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in self.workers
        ):
            self.notify("the spectral pass is running (progress below; Esc cancels)")
            return
        rank = self.spectral or DEFAULT_RANK
        self.main.query_one(JobProgress).start(f"spectral K={rank}")
        self.notify(f"running the spectral pass (top-{rank} SVD per matrix) for {message.metric_id}; Esc cancels")
        self.run_spectral(report.base, list(report.models), report.density, rank, message.metric_id)

    @work(thread=True, exclusive=True, group=SPECTRAL_GROUP, exit_on_error=False, name="spectral")
    def run_spectral(self, base: str, models: list[str], density: float, rank: int, metric_id: str) -> None:
        from mergescope.stats.readiness import analyze

        worker = get_current_worker()
        t0 = time.perf_counter()

        def progress(done: int, total: int, label: str) -> None:
            self.post_message(Progress("spectral", done, total, label, time.perf_counter() - t0))

        try:
            report = analyze(
                base,
                models,
                density=density,
                device=self.device,
                use_cache=self.use_cache,
                progress=progress,
                should_stop=lambda: worker.is_cancelled,
                spectral=rank,
            )
        except Cancelled:
            return
        if not worker.is_cancelled:
            self.post_message(SpectralDone(report, metric_id))

    def on_spectral_done(self, message: SpectralDone) -> None:
        report, new = self.report, message.report
        if not self._has_main() or report is None or (report.base, report.models) != (new.base, new.models):
            return  # another set was opened meanwhile
        report.spectral, report.findings = new.spectral, new.findings
        self.main.query_one(VerdictsView).show(report)
        self.main.query_one(HeatmapView).spectral_ready(message.metric_id)
        self.notify(f"spectral pass done (K={new.spectral.rank}): keys ! @ # $")
