"""The Textual explorer: open → analyse → verdicts → heatmaps → plan → export → merge → evaluate.

The session (`session.py`) holds what is open and planned and decides about it; the app hands it to
the views, handles their messages, and runs the workers. Workers run the core (`mergescope.*`) in
threads, post messages (`messages.py`) and never touch widgets; failures reach one place,
`on_worker_state_changed`, which shows one error dialog. The core never sees Textual.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.widgets import TabPane
from textual.worker import Worker, WorkerState, get_current_worker

from mergescope.io.progress import Cancelled
from mergescope.stats.report import DEFAULT_DENSITY
from mergescope.tui.actions.evaluate import EVAL_GROUP, EvalJobs
from mergescope.tui.actions.fit import FitJobs
from mergescope.tui.actions.merge import MergeJobs
from mergescope.tui.actions.plan_files import PlanFiles
from mergescope.tui.actions.remeasure import RemeasureJobs
from mergescope.tui.actions.sensitivity import SENSITIVITY_GROUP, SensitivityJobs
from mergescope.tui.actions.spectral import SPECTRAL_GROUP, SpectralJobs
from mergescope.tui.actions.tune import TuneJobs
from mergescope.tui.dialogs.error import ErrorDialog
from mergescope.tui.dialogs.help import HelpScreen, palette_entries
from mergescope.tui.dialogs.open import OpenDialog
from mergescope.tui.dialogs.prompt import ValuePrompt
from mergescope.tui.messages import AnalysisDone, Progress, WhatIfReady
from mergescope.tui.screens.main import MainScreen
from mergescope.tui.state.recent import ModelSet, remember
from mergescope.tui.state.session import Session
from mergescope.tui.widgets.heatmap_view import HeatmapView
from mergescope.tui.widgets.merge_view import MergeView
from mergescope.tui.widgets.plan_editor import PlanEditor
from mergescope.tui.widgets.progress import JobProgress
from mergescope.tui.widgets.verdicts import VerdictsView

JOB_GROUPS = ("analysis", "merge", "remeasure", SPECTRAL_GROUP, EVAL_GROUP, SENSITIVITY_GROUP)
ACTIVE = (WorkerState.PENDING, WorkerState.RUNNING)
WHATIF_DEBOUNCE_S = 0.08
# Below this many bytes read by the analysis, the plan's own models are re-measured at its density
# automatically (a second or two, then cached); above it the user asks for it with `r`.
AUTO_REMEASURE_BYTES = 1 << 30


# EvalJobs before SensitivityJobs: a score is kept before the plan editor reads it as the measured change
class MergeScopeApp(
    PlanFiles, MergeJobs, RemeasureJobs, SpectralJobs, TuneJobs, EvalJobs, SensitivityJobs, FitJobs, App
):
    TITLE = "mergescope"
    CSS_PATH = "app.tcss"
    PALETTE_GROUP = ""
    BINDINGS = [
        Binding("question_mark", "help", "keys", id="app.help"),
        Binding("o", "open", "open", tooltip="Open a model set", id="app.open"),
        Binding("q", "quit", "quit", id="app.quit"),
    ]

    def __init__(
        self,
        base: str | None = None,
        models: Iterable[str] = (),
        plan: str | None = None,
        *,
        density: float = DEFAULT_DENSITY,
        device: str = "cpu",
        use_cache: bool = True,
        spectral: int | None = None,
        remember_set: bool = True,
        title: str | None = None,
        blink: bool = True,
        sample_plan: dict | None = None,
        output_dir: str | None = None,
        low_colour: bool | None = None,
        texts: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.initial = ModelSet(base, list(models), plan) if base else None
        self.blink = blink  # False in tests and screenshots: stable frames
        self.density = density
        self.device = device
        self.use_cache = use_cache
        self.spectral = spectral  # K of the spectral pass run with the analysis (None: not run)
        self.remember_set = remember_set
        self.low_colour = low_colour  # None: detect (16-colour terminals get the background-free heatmap)
        self.session = Session(
            sample_plan=sample_plan, output_dir=output_dir, auto_remeasure_bytes=AUTO_REMEASURE_BYTES, texts=texts
        )
        self.last_merge = None
        self._whatif_gen = 0
        self._whatif_timer = None
        self.timings: dict[str, float] = {"start": time.perf_counter()}
        self._fixed_title = title
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
        yield PlanEditor(id="plan-editor")

    def compose_merge_tab(self) -> ComposeResult:
        yield MergeView(id="merge-view")

    @property
    def main(self) -> MainScreen:
        for screen in self.screen_stack:
            if isinstance(screen, MainScreen):
                return screen
        raise LookupError("no main screen")

    # the session's state, read where the app is driven from outside (tests, bench)
    report = property(lambda self: self.session.report)
    plan_state = property(lambda self: self.session.plan_state)
    remeasured = property(lambda self: self.session.remeasured)

    @property
    def editor(self) -> PlanEditor:
        return self.main.query_one(PlanEditor)

    def _has_main(self) -> bool:
        """False while the app shuts down: late timers and worker messages then have nothing to update."""
        return any(isinstance(screen, MainScreen) for screen in self.screen_stack)

    # -- open / analyse ---------------------------------------------------------------------
    def action_open(self) -> None:
        if not isinstance(self.screen, OpenDialog):
            self.push_screen(OpenDialog(initial=self.session.model_set, can_cancel=True), self._opened)

    def _opened(self, entry: ModelSet | None) -> None:
        if entry is not None:
            self.open_set(entry)

    def open_set(self, entry: ModelSet) -> None:
        self.session.model_set = entry
        if not self._fixed_title:
            self.sub_title = entry.describe()
        self.main.query_one(JobProgress).start("analyse")
        self.run_analysis(entry.base, list(entry.models), self.density)

    @work(thread=True, exclusive=True, group="analysis", exit_on_error=False, name="analysis")
    def run_analysis(self, base: str, models: list[str], density: float) -> None:
        self._analyse(base, models, density, "main")

    def _analyse(self, base: str, models: list[str], density: float, purpose: str) -> None:
        from mergescope.stats.readiness import analyze

        worker = get_current_worker()
        t0 = time.perf_counter()

        def progress(done: int, total: int, label: str) -> None:
            self.post_message(Progress("analysis", done, total, label, time.perf_counter() - t0))

        try:
            report = analyze(
                base,
                models,
                density=density,
                device=self.device,
                use_cache=self.use_cache,
                progress=progress,
                should_stop=lambda: worker.is_cancelled,
                spectral=self.spectral if purpose == "main" else None,
            )
        except Cancelled:
            return
        if not worker.is_cancelled:
            self.post_message(AnalysisDone(report, base, models, purpose))

    def on_progress(self, message: Progress) -> None:
        try:
            self.main.query_one(JobProgress).update_progress(
                message.done, message.total, message.label, message.elapsed, rate=message.rate
            )
        except LookupError:
            pass

    def on_analysis_done(self, message: AnalysisDone) -> None:
        if not self._has_main():
            return
        if message.purpose != "main":
            self.remeasure_done(message.report)
            return
        problem = self.session.analysed(message.report)
        self.timings["report"] = time.perf_counter()
        main = self.main
        main.query_one(VerdictsView).show(self.report)
        main.query_one(HeatmapView).show(self.report)
        if problem is not None:
            self.show_error(problem, what="loading the plan")
        self._show_plan()
        if not main.query_one(MergeView).output:
            main.query_one(MergeView).set_output(self.session.default_output())
        if self.remember_set and self.session.model_set is not None:
            remember(self.session.model_set)
        self.call_after_refresh(self._first_paint)

    def _first_paint(self) -> None:
        self.timings.setdefault("first_paint", time.perf_counter())

    # -- the plan ---------------------------------------------------------------------------------
    def _show_plan(self, keep_selection: bool = False) -> None:
        """Hand the session's plan to the editor and ask for its prediction."""
        if keep_selection:
            self.editor.set_state(self.session.plan_state)
        else:
            self.editor.show(self.report, self.session.plan_state)
        self.request_whatif()

    def on_plan_editor_changed(self, _: PlanEditor.Changed) -> None:
        self.request_whatif()

    def on_plan_editor_reset_requested(self, _: PlanEditor.ResetRequested) -> None:
        if self.report is not None and self.plan_state is not None:
            self.session.reset_plan()
            self._show_plan(keep_selection=True)

    def on_plan_editor_value_wanted(self, m: PlanEditor.ValueWanted) -> None:
        self.push_screen(ValuePrompt(m.prompt, m.value, m.lo, m.hi, m.hint), m.answer)

    def request_whatif(self) -> None:
        """Debounced: a burst of +/- presses computes one prediction."""
        if self._whatif_timer is not None:
            self._whatif_timer.stop()
        self._whatif_timer = self.set_timer(WHATIF_DEBOUNCE_S, self._start_whatif)

    def _start_whatif(self) -> None:
        if not self._has_main():
            return
        self._whatif_timer = None
        if self.report is None or self.plan_state is None:
            return
        plan, yaml_text, problem = self.session.plan_or_problem()
        self.main.query_one(MergeView).show_plan(yaml_text, problem)
        self.refresh_sensitivity(yaml_text)
        if problem:
            self.editor.show_problem(problem)
            return
        self._whatif_gen += 1
        self.compute_whatif(plan, self.report, self.editor.data, self.session.conflict_report(), self._whatif_gen)
        target = self.session.auto_remeasure()
        if target is not None and not (target == self._remeasure_key and self._remeasuring()):
            self._start_remeasure(target)

    @work(
        thread=True, exclusive=True, group="whatif", exit_on_error=False, name="whatif", description="what-if"
    )  # a description: else Textual repr()s the Report (seconds on big models)
    def compute_whatif(self, plan, report, data, conflict_report, generation: int) -> None:
        """Pure numbers from the Report (no tensor is read); posts WhatIfReady."""
        from mergescope.merge.whatif import from_plan
        from mergescope.tui.state.heatdata import whatif_predictions

        whatif = from_plan(report, plan, conflict_report=conflict_report)
        preds = whatif_predictions(data, whatif)
        if not get_current_worker().is_cancelled:
            self.post_message(WhatIfReady(preds, whatif, generation))

    def on_what_if_ready(self, message: WhatIfReady) -> None:
        if not self._has_main():
            return
        if message.generation == self._whatif_gen:
            self.main.query_one(PlanEditor).show_whatif(message.preds, message.whatif)

    # -- jobs -------------------------------------------------------------------------------
    def running_jobs(self) -> list[Worker]:
        return [w for w in self.workers if w.group in JOB_GROUPS and w.state in ACTIVE]

    def action_cancel_job(self) -> None:
        jobs = self.running_jobs()
        for w in jobs:
            w.cancel()
        if jobs:
            self.notify(
                "cancelled" + (": no output was written" if any(w.group == "merge" for w in jobs) else ""),
                severity="warning",
            )
            if any(w.group == "merge" for w in jobs):
                self.main.query_one(MergeView).status(Text("merge cancelled: no output was written", style="yellow"))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if not self._has_main():
            return
        worker = event.worker
        if worker.group not in JOB_GROUPS and worker.group != "whatif":
            return
        if worker.group in JOB_GROUPS and event.state not in ACTIVE and not self.running_jobs():
            self.main.query_one(JobProgress).stop()
        if event.state == WorkerState.ERROR and worker.group == "whatif":
            from mergescope.io.errors import InputError

            if isinstance(worker.error, InputError):  # an unfinished plan: say why beside the form, no modal
                self.editor.show_problem(str(worker.error))
                self.main.query_one(MergeView).show_plan(None, str(worker.error))
                return
        if event.state == WorkerState.ERROR:
            what = {"remeasure": "re-measure", "whatif": "what-if"}.get(worker.group, worker.group)
            if worker.group == "merge":
                self.main.query_one(MergeView).status(Text("✖ merge failed: no output was written", style="red"))
            self.show_error(worker.error, what=what)

    def show_error(self, exc: BaseException | None, what: str = "") -> None:
        """The one place failures are shown: a modal with the message (and, in debug mode, the trace)."""
        reopen = self.report is None and what == "analysis"  # nothing open yet: back to the open dialog
        self.push_screen(ErrorDialog.for_exception(exc, what), lambda _: self.action_open() if reopen else None)

    # -- help & commands --------------------------------------------------------------------
    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def get_system_commands(self, screen):
        """Textual's commands, then one per binding that `?` lists (ours replace Textual's of the same title)."""
        ours = [
            SystemCommand(title, help, self._palette_command(screen, node, binding))
            for title, help, node, binding in palette_entries(screen)
        ]
        titles = {c.title for c in ours}
        yield from (c for c in super().get_system_commands(screen) if c.title not in titles)
        yield from ours

    def _palette_command(self, screen, node, binding: Binding):
        """Run a binding's action as its key would, after showing the tab its widget lives in."""
        pane = next((a.id for a in node.ancestors if isinstance(a, TabPane)), None)

        async def run() -> None:
            if pane is not None and isinstance(screen, MainScreen):
                screen.action_tab(pane)
            await node.run_action(binding.action)

        return run
