"""The Textual explorer: open → analyse → verdicts → heatmaps → plan → export → merge.

The app owns the state (the report, the plan) and the workers. Workers run the core (`analysis.*`) in
threads, post messages (`tui.messages`) and never touch widgets; failures reach one place,
`on_worker_state_changed`, which shows one error dialog. The core never sees Textual.
"""
from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Iterable

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.widgets import Static
from textual.worker import Worker, WorkerState, get_current_worker

from .dialogs.error import ErrorDialog
from .dialogs.help import HelpScreen
from .dialogs.open import OpenDialog
from .messages import AnalysisDone, Progress
from .recent import ModelSet, remember
from .screens.main import TABS, MainScreen
from .widgets.heatmap_view import HeatmapView
from .widgets.progress import JobProgress
from .widgets.verdicts import VerdictsView

JOB_GROUPS = ("analysis", "merge")


class MergeScopeApp(App):
    TITLE = "mergescope"
    CSS_PATH = "app.tcss"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [
        Binding("question_mark", "help", "keys", id="app.help"),
        Binding("o", "open", "open", id="app.open"),
        Binding("q", "quit", "quit", id="app.quit"),
    ]

    def __init__(self, base: str | None = None, models: Iterable[str] = (), plan: str | None = None, *,
                 density: float = 0.2, device: str = "cpu", use_cache: bool = True, remember_set: bool = True,
                 title: str | None = None, blink: bool = True) -> None:
        super().__init__()
        self.blink = blink  # False in tests and screenshots: stable frames
        self.initial = ModelSet(base, list(models), plan) if base else None
        self.density = density
        self.device = device
        self.use_cache = use_cache
        self.remember_set = remember_set
        self.report = None
        self.model_set: ModelSet | None = None
        self.timings: dict[str, float] = {"start": time.perf_counter()}
        if title:
            self.sub_title = title

    # -- layout -----------------------------------------------------------------------------
    async def on_mount(self) -> None:
        await self.push_screen(MainScreen())
        if self.initial is not None:
            self.open_set(self.initial)
        else:
            self.push_screen(OpenDialog(can_cancel=False), self._opened)

    def compose_plan_tab(self) -> ComposeResult:
        yield Static("The plan editor needs analysis/plan.py", id="plan-placeholder")

    def compose_merge_tab(self) -> ComposeResult:
        yield Static("The merge needs analysis/merge.py", id="merge-view")

    @property
    def main(self) -> MainScreen:
        for screen in self.screen_stack:
            if isinstance(screen, MainScreen):
                return screen
        raise LookupError("no main screen")

    # -- open / analyse ---------------------------------------------------------------------
    def action_open(self) -> None:
        self.push_screen(OpenDialog(initial=self.model_set, can_cancel=True), self._opened)

    def _opened(self, entry: ModelSet | None) -> None:
        if entry is not None:
            self.open_set(entry)

    def open_set(self, entry: ModelSet) -> None:
        self.model_set = entry
        self.sub_title = entry.describe()
        self.main.query_one(JobProgress).start("analyse")
        self.run_analysis(entry.base, list(entry.models), self.density)

    @work(thread=True, exclusive=True, group="analysis", exit_on_error=False, name="analysis")
    def run_analysis(self, base: str, models: list[str], density: float, purpose: str = "main") -> None:
        from analysis.analyze import analyze
        from analysis.metrics import AnalysisCancelled

        worker = get_current_worker()
        t0 = time.perf_counter()

        def progress(done: int, total: int, label: str) -> None:
            self.post_message(Progress("analysis", done, total, label, time.perf_counter() - t0))

        try:
            report = analyze(base, models, density=density, device=self.device, use_cache=self.use_cache,
                             progress=progress, should_stop=lambda: worker.is_cancelled)
        except AnalysisCancelled:
            return
        if not worker.is_cancelled:
            self.post_message(AnalysisDone(report, base, models, purpose))

    def on_progress(self, message: Progress) -> None:
        try:
            self.main.query_one(JobProgress).update_progress(message.done, message.total, message.label,
                                                             message.elapsed)
        except LookupError:
            pass

    def on_analysis_done(self, message: AnalysisDone) -> None:
        if message.purpose != "main":
            self.on_whatif_report(message.report)
            return
        self.report = message.report
        self.timings["report"] = time.perf_counter()
        main = self.main
        main.query_one(JobProgress).stop()
        main.query_one(VerdictsView).show(self.report)
        main.query_one(HeatmapView).show(self.report)
        self.on_report(self.report)
        if self.remember_set and self.model_set is not None:
            remember(self.model_set)
        self.call_after_refresh(self._first_paint)

    def _first_paint(self) -> None:
        self.timings.setdefault("first_paint", time.perf_counter())

    def on_report(self, report) -> None:
        """Hook for the plan editor once a report is in."""

    def on_whatif_report(self, report) -> None:
        """Hook: a report re-measured at the plan's density."""

    # -- jobs -------------------------------------------------------------------------------
    def running_jobs(self) -> list[Worker]:
        return [w for w in self.workers if w.group in JOB_GROUPS and w.state in (WorkerState.PENDING, WorkerState.RUNNING)]

    def action_cancel_job(self) -> None:
        jobs = self.running_jobs()
        for w in jobs:
            w.cancel()
        if jobs:
            self.notify("cancelled", severity="warning")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group not in JOB_GROUPS:
            return
        if event.state in (WorkerState.SUCCESS, WorkerState.CANCELLED, WorkerState.ERROR):
            if not self.running_jobs():
                try:
                    self.main.query_one(JobProgress).stop()
                except LookupError:
                    pass
        if event.state == WorkerState.ERROR:
            self.show_error(worker.error, what=worker.group)

    def show_error(self, exc: BaseException | None, what: str = "") -> None:
        from analysis.errors import InputError

        if isinstance(exc, (InputError, FileNotFoundError, PermissionError)):
            title = f"{what or 'input'} failed: bad input"
            detail = ""
        else:
            title = f"{what or 'job'} failed: {type(exc).__name__}"
            detail = "".join(traceback.format_exception(exc)[-6:]) if exc is not None and os.environ.get("MERGESCOPE_DEBUG") else ""
        message = str(exc) if exc is not None else "unknown error"
        reopen = self.report is None and what == "analysis"  # nothing open yet: back to the open dialog
        self.push_screen(ErrorDialog(title, message or type(exc).__name__, detail),
                         lambda _: self.action_open() if reopen else None)

    # -- help & commands --------------------------------------------------------------------
    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        yield SystemCommand("Open a model set", "base + fine-tunes (o)", self.action_open)
        yield SystemCommand("Keys", "every key binding (?)", self.action_help)
        yield SystemCommand("Cancel the running job", "analysis or merge (Esc)", self.action_cancel_job)
        if isinstance(screen, MainScreen):
            for tab in TABS:
                yield SystemCommand(f"Show {tab}", f"switch to the {tab} tab", lambda t=tab: screen.action_tab(t))
            view = screen.query_one(HeatmapView)
            from .heatdata import METRICS

            for m in METRICS:
                yield SystemCommand(f"Heatmap metric: {m.label}", f"key {m.key}: {m.help}",
                                    lambda mid=m.id: (screen.action_tab("heatmap"), view.action_metric(mid)))
            yield SystemCommand("Heatmap: toggle module/group columns", "c", view.action_toggle_columns)
            yield SystemCommand("Heatmap: next model", "m", lambda: view.action_next_model(1))
            yield SystemCommand("Heatmap: next pair", "p", lambda: view.action_next_pair(1))
