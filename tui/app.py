"""The Textual explorer: open → analyse → verdicts → heatmaps → plan → export → merge.

The app owns the state (the report, the plan being edited) and the workers. Workers run the core
(`mergescope.*`, the core) in threads, post messages (`mergescope.tui.messages`) and never touch widgets; failures reach one
place, `on_worker_state_changed`, which shows one error dialog. The core never sees Textual.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Iterable
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.worker import Worker, WorkerState, get_current_worker

from mergescope.report import DEFAULT_DENSITY

from .dialogs.error import ErrorDialog
from .dialogs.help import HelpScreen
from .dialogs.open import OpenDialog
from .dialogs.prompt import PathPrompt
from .messages import AnalysisDone, MergeDone, Progress, WhatIfReady
from .recent import ModelSet, remember
from .screens.main import TABS, MainScreen
from .widgets.heatmap_view import HeatmapView
from .widgets.merge_view import MergeView
from .widgets.plan_editor import PlanEditor
from .widgets.progress import JobProgress
from .widgets.verdicts import VerdictsView

JOB_GROUPS = ("analysis", "merge", "remeasure")
WHATIF_DEBOUNCE_S = 0.08
# Below this many bytes read by the analysis, the plan's own models are re-measured at its density
# automatically (a second or two, then cached); above it the user asks for it with `r`.
AUTO_REMEASURE_BYTES = 1 << 30


class MergeScopeApp(App):
    TITLE = "mergescope"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding("question_mark", "help", "keys", id="app.help"),
        Binding("o", "open", "open", id="app.open"),
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
        remember_set: bool = True,
        title: str | None = None,
        blink: bool = True,
        sample_plan: dict | None = None,
        output_dir: str | None = None,
        low_colour: bool | None = None,
    ) -> None:
        super().__init__()
        self.initial = ModelSet(base, list(models), plan) if base else None
        self.blink = blink  # False in tests and screenshots: stable frames
        self.density = density
        self.device = device
        self.use_cache = use_cache
        self.remember_set = remember_set
        self.sample_plan = sample_plan  # {"method", "models", "weight", "density"}: the demo's starting plan
        self.output_dir = output_dir  # the merge tab's starting output directory
        self.low_colour = low_colour  # None: detect (16-colour terminals get the background-free heatmap)
        self.report = None
        self.model_set: ModelSet | None = None
        self.plan_state = None
        self.remeasured = None  # a report re-measured at the plan's density
        self.last_export: str | None = None
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

    def _has_main(self) -> bool:
        """False while the app shuts down: late timers and worker messages then have nothing to update."""
        return any(isinstance(screen, MainScreen) for screen in self.screen_stack)

    # -- open / analyse ---------------------------------------------------------------------
    def action_open(self) -> None:
        if not isinstance(self.screen, OpenDialog):
            self.push_screen(OpenDialog(initial=self.model_set, can_cancel=True), self._opened)

    def _opened(self, entry: ModelSet | None) -> None:
        if entry is not None:
            self.open_set(entry)

    def open_set(self, entry: ModelSet) -> None:
        self.model_set = entry
        if not self._fixed_title:
            self.sub_title = entry.describe()
        self.main.query_one(JobProgress).start("analyse")
        self.run_analysis(entry.base, list(entry.models), self.density)

    @work(thread=True, exclusive=True, group="analysis", exit_on_error=False, name="analysis")
    def run_analysis(self, base: str, models: list[str], density: float) -> None:
        self._analyse(base, models, density, "main")

    @work(thread=True, exclusive=True, group="remeasure", exit_on_error=False, name="remeasure")
    def run_remeasure(self, base: str, models: list[str], density: float) -> None:
        self._analyse(base, models, density, "whatif")

    def _analyse(self, base: str, models: list[str], density: float, purpose: str) -> None:
        from mergescope.analyze import analyze
        from mergescope.scan import AnalysisCancelled

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
            )
        except AnalysisCancelled:
            return
        if not worker.is_cancelled:
            self.post_message(AnalysisDone(report, base, models, purpose))

    def on_progress(self, message: Progress) -> None:
        try:
            self.main.query_one(JobProgress).update_progress(
                message.done, message.total, message.label, message.elapsed
            )
        except LookupError:
            pass

    def on_analysis_done(self, message: AnalysisDone) -> None:
        if not self._has_main():
            return
        if message.purpose != "main":
            self.remeasured = message.report
            if not self._quiet_remeasure():
                self.notify(f"re-measured at density {message.report.density}: the what-if shows it")
            self.request_whatif()
            return
        self.report = message.report
        self.remeasured = None
        self.timings["report"] = time.perf_counter()
        main = self.main
        main.query_one(VerdictsView).show(self.report)
        main.query_one(HeatmapView).show(self.report)
        self._init_plan(message.report)
        if self.remember_set and self.model_set is not None:
            remember(self.model_set)
        self.call_after_refresh(self._first_paint)

    def _first_paint(self) -> None:
        self.timings.setdefault("first_paint", time.perf_counter())

    # -- the plan ---------------------------------------------------------------------------------
    def _init_plan(self, report) -> None:
        from mergescope.errors import InputError

        from .plan_state import state_for_report

        state = None
        path = self.model_set.plan if self.model_set else None
        if path:
            try:
                state = self._state_from_file(path, report)
            except InputError as exc:
                self.show_error(exc, what="loading the plan")
        if state is None:
            state = state_for_report(report, "task_arithmetic")
            if self.sample_plan:
                self._apply_sample(state, report)
        self.plan_state = state
        self.main.query_one(PlanEditor).show(report)
        if not self.main.query_one(MergeView).output:
            self.main.query_one(MergeView).set_output(self._default_output(report))

    def _apply_sample(self, state, report) -> None:
        sample = self.sample_plan
        state.set_method(sample.get("method", "ties"))
        from pathlib import Path as P

        names = {P(m).name: i for i, m in enumerate(report.models)}
        chosen = [names[n] for n in sample.get("models", []) if n in names]
        state.included = [i in chosen for i in range(len(report.models))]
        for param, value in (("weight", sample.get("weight")), ("density", sample.get("density"))):
            if value is not None and param in state.table_params():
                table = state.table(param)
                for key in table:
                    table[key] = [float(value)] * len(report.models)

    def _default_output(self, report) -> str:
        if self.output_dir:
            return self.output_dir
        root = Path(report.base).expanduser()
        parent = root.parent if root.parent != root else Path.cwd()
        if not os.access(parent, os.W_OK):
            parent = Path.cwd()
        return str(parent / "merged")

    def _state_from_file(self, path: str, report):
        from mergescope.plan import Plan

        from .plan_state import PlanState

        plan = Plan.load(os.path.expanduser(path))
        names = sorted({t for s in report.sites for t in s.tensors})
        state = PlanState.from_plan(plan, report, names=names)
        state.source = path
        return state

    def set_plan_method(self, method: str) -> None:
        st = self.plan_state
        if st is None:
            return
        st.set_method(method)
        # sparsifying methods start at the analysis density, so the measured trimmed conflict applies as is
        if "density" in st.table_params() and self.report is not None:
            if all(v == st.default_value("density") for vals in st.table("density").values() for v in vals):
                for key in st.table("density"):
                    st.table("density")[key] = [self.report.density] * len(st.models)

    def reset_plan(self) -> None:
        from .plan_state import state_for_report

        if self.report is not None and self.plan_state is not None:
            method = self.plan_state.method
            self.plan_state = state_for_report(self.report, method)

    def current_plan(self):
        """The Plan being edited (InputError when it cannot be built)."""
        if self.plan_state is None:
            from mergescope.errors import InputError

            raise InputError("no analysis yet: open a model set first (o)")
        return self.plan_state.to_plan()

    def request_whatif(self) -> None:
        """Debounced: a burst of +/- presses computes one prediction."""
        if self._whatif_timer is not None:
            self._whatif_timer.stop()
        self._whatif_timer = self.set_timer(WHATIF_DEBOUNCE_S, self._start_whatif)

    def _start_whatif(self) -> None:
        if not self._has_main():
            return
        from mergescope.errors import InputError

        self._whatif_timer = None
        if self.report is None or self.plan_state is None:
            return
        try:
            plan = self.current_plan()
            yaml_text = plan.to_yaml()
            problem = None
        except (InputError, ValueError) as exc:
            plan, yaml_text, problem = None, None, str(exc)
        self.main.query_one(MergeView).show_plan(yaml_text, problem)
        editor = self.main.query_one(PlanEditor)
        if problem:
            from textual.widgets import Static

            editor.query_one("#plan-error", Static).update(Text(f"✖ {problem}"))
            return
        self._whatif_gen += 1
        self.compute_whatif(plan, self.report, editor.data, self._conflict_report(), self._whatif_gen)
        if self.report.bytes_read and self.report.bytes_read < AUTO_REMEASURE_BYTES:
            self._auto_remeasure()

    def _remeasure_target(self) -> tuple[list[str], float] | None:
        """(models, density) that measure exactly this plan's interference, or None when the analysis did."""
        from mergescope.whatif import MAGNITUDE_TRIM

        st = self.plan_state
        if st is None or self.report is None or st.custom is not None:
            return None
        models = [st.models[i] for i in st.chosen()]
        d = self.report.density
        if st.method in MAGNITUDE_TRIM:
            u = st.uniform_value("density")
            if u is not None:
                d = min(1.0, u)
        if len(models) < 2 or (models == list(self.report.models) and abs(d - self.report.density) < 1e-9):
            return None
        return models, d

    def _auto_remeasure(self) -> None:
        target = self._remeasure_target()
        if target is None:
            return
        r = self.remeasured
        if r is not None and r.models == target[0] and abs(r.density - target[1]) < 1e-9:
            return
        if (
            any(w.group == "remeasure" and w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in self.workers)
            and getattr(self, "_remeasure_key", None) == target
        ):
            return
        self._remeasure_key = target
        self.main.query_one(JobProgress).start(f"measure d={target[1]:g}")
        self.run_remeasure(self.report.base, target[0], target[1])

    @work(
        thread=True, exclusive=True, group="whatif", exit_on_error=False, name="whatif", description="what-if"
    )  # a description: else Textual repr()s the Report (seconds on big models)
    def compute_whatif(self, plan, report, data, conflict_report, generation: int) -> None:
        """Pure numbers from the Report (no tensor is read); posts WhatIfReady."""
        from mergescope.whatif import from_plan

        from .heatdata import whatif_predictions

        whatif = from_plan(report, plan, conflict_report=conflict_report)
        preds = whatif_predictions(data, whatif)
        if not get_current_worker().is_cancelled:
            self.post_message(WhatIfReady(preds, whatif, generation))

    def _conflict_report(self):
        """The re-measured report, when it measured exactly the plan's models."""
        r, st = self.remeasured, self.plan_state
        if r is None or self.report is None or st is None:
            return None
        if r.base == self.report.base and r.models == [st.models[i] for i in st.chosen()]:
            return r
        return None

    def _quiet_remeasure(self) -> bool:
        return bool(self.report and self.report.bytes_read and self.report.bytes_read < AUTO_REMEASURE_BYTES)

    def on_what_if_ready(self, message: WhatIfReady) -> None:
        if not self._has_main():
            return
        if message.generation == self._whatif_gen:
            self.main.query_one(PlanEditor).show_whatif(message.preds, message.whatif)

    def remeasure_at_plan_density(self) -> None:
        """Analyse the plan's models alone, at the plan's density: the what-if's trimmed sign conflict
        is then measured for exactly this merge (cached like any analysis)."""
        from mergescope.whatif import from_plan, uniform_density

        if self.report is None or self.plan_state is None:
            return
        try:
            wi = from_plan(self.report, self.current_plan())
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.show_error(exc, what="re-measure")
            return
        d = uniform_density(wi)
        if d is None:
            d = self.report.density
            self.notify(f"the plan has no single density; measuring at the analysis density {d}", severity="warning")
        d = min(1.0, d)
        models = [self.plan_state.models[i] for i in self.plan_state.chosen()]
        if len(models) < 2:
            self.notify("sign conflict needs at least two models in the plan", severity="warning")
            return
        if models == list(self.report.models) and abs(d - self.report.density) < 1e-9:
            self.remeasured = None
            self.notify(f"the analysis already measured these models at density {d}")
            self.request_whatif()
            return
        self.main.query_one(JobProgress).start(f"measure d={d:g}")
        self.run_remeasure(self.report.base, models, d)

    # -- export / load ----------------------------------------------------------------------------
    def action_export_plan(self) -> None:
        from mergescope.errors import InputError

        try:
            plan = self.current_plan()
        except InputError as exc:
            self.show_error(exc, what="export")
            return
        default = self.last_export or (
            self.plan_state.source
            if self.plan_state and self.plan_state.source
            else str(Path.cwd() / "merge_plan.yaml")
        )

        def done(path: str | None) -> None:
            if not path:
                return
            try:
                target = Path(os.path.expanduser(path))
                if target.is_dir():
                    target = target / "merge_plan.yaml"
                target.parent.mkdir(parents=True, exist_ok=True)
                plan.dump(target)
            except OSError as exc:
                self.show_error(
                    InputError(f"{path}: cannot write ({exc.strerror}); pick a writable path"), what="export"
                )
                return
            self.last_export = str(target)
            self.plan_state.source = str(target)
            self.notify(f"plan written to {target}")

        self.push_screen(
            PathPrompt(
                "Export the plan (mergekit-compatible YAML)",
                default,
                hint="runs with `mergescope merge` or `mergekit-yaml`",
                ok="Write",
                prompt_id="export",
            ),
            done,
        )

    def action_load_plan(self) -> None:
        if self.report is None:
            self.notify("open a model set first (o)", severity="warning")
            return
        default = self.last_export or str(Path.cwd()) + "/"

        def done(path: str | None) -> None:
            if path:
                self.load_plan(path)

        self.push_screen(
            PathPrompt("Load a plan (mergescope or mergekit YAML)", default, ok="Load", prompt_id="load"), done
        )

    def load_plan(self, path: str) -> bool:
        from mergescope.errors import InputError

        try:
            state = self._state_from_file(path, self.report)
        except (InputError, OSError) as exc:
            self.show_error(exc, what="loading the plan")
            return False
        self.plan_state = state
        self.main.query_one(PlanEditor).show(self.report)
        self.notify(
            f"plan loaded from {path}" + (" (read-only: hand-written filters)" if state.custom is not None else "")
        )
        return True

    # -- merge --------------------------------------------------------------------------------------
    def action_run_merge(self) -> None:
        from mergescope.errors import InputError

        if self.running_jobs():
            self.notify("a job is running: wait for it or press Esc to cancel it", severity="warning")
            return
        view = self.main.query_one(MergeView)
        try:
            plan = self.current_plan()
            out = view.output
            if not out:
                raise InputError("choose an output directory first")
            seed = view.seed
        except ValueError as exc:
            self.show_error(InputError(f"seed: {exc}"), what="merge")
            return
        except InputError as exc:
            self.show_error(exc, what="merge")
            return
        self.main.action_tab("merge")
        view.status(Text(f"merging into {out}…  Esc cancels (no partial output)", style="bold"))
        self.main.query_one(JobProgress).start("merge")
        self.merge_worker(plan, os.path.expanduser(out), seed, view.force, self.report)

    @work(thread=True, exclusive=True, group="merge", exit_on_error=False, name="merge", description="merge")
    def merge_worker(self, plan, output_dir: str, seed: int | None, force: bool, report=None) -> None:
        from mergescope.merge import MergeCancelled, run_merge

        worker = get_current_worker()
        t0 = time.perf_counter()

        def progress(done: int, total: int, label: str) -> None:
            self.post_message(Progress("merge", done, total, label, time.perf_counter() - t0))

        try:
            result = run_merge(
                plan,
                output_dir,
                device=self.device,
                seed=seed,
                force=force,
                progress=progress,
                should_stop=lambda: worker.is_cancelled,
                analysis=report,
            )
        except MergeCancelled:
            return
        if not worker.is_cancelled:
            self.post_message(MergeDone(result, output_dir, plan))

    def on_merge_done(self, message: MergeDone) -> None:
        if not self._has_main():
            return
        self.last_merge = message.result
        card = None
        readme = Path(message.result.output_dir) / "README.md"
        try:
            card = readme.read_text()
        except OSError:
            pass
        view = self.main.query_one(MergeView)
        view.show_result(message.result, card)
        view.status(Text(f"✔ done: {message.result.output_dir}", style="green"))
        self.notify(f"merged into {message.result.output_dir}")

    # -- jobs -------------------------------------------------------------------------------
    def running_jobs(self) -> list[Worker]:
        return [
            w for w in self.workers if w.group in JOB_GROUPS and w.state in (WorkerState.PENDING, WorkerState.RUNNING)
        ]

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
        if worker.group in JOB_GROUPS and event.state in (
            WorkerState.SUCCESS,
            WorkerState.CANCELLED,
            WorkerState.ERROR,
        ):
            if not self.running_jobs():
                try:
                    self.main.query_one(JobProgress).stop()
                except LookupError:
                    pass
        if event.state == WorkerState.ERROR and worker.group == "whatif":
            from mergescope.errors import InputError

            if isinstance(worker.error, InputError):  # an unfinished plan: say why beside the form, no modal
                from textual.widgets import Static

                self.main.query_one(PlanEditor).query_one("#plan-error", Static).update(Text(f"✖ {worker.error}"))
                self.main.query_one(MergeView).show_plan(None, str(worker.error))
                return
        if event.state == WorkerState.ERROR:
            what = {"analysis": "analysis", "merge": "merge", "remeasure": "re-measure", "whatif": "what-if"}[
                worker.group
            ]
            if worker.group == "merge":
                self.main.query_one(MergeView).status(Text("✖ merge failed: no output was written", style="red"))
            self.show_error(worker.error, what=what)

    def show_error(self, exc: BaseException | None, what: str = "") -> None:
        """The one place failures are shown: a modal with the message (and, in debug mode, the trace)."""
        from mergescope.errors import InputError

        if isinstance(exc, (InputError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)):
            title = f"{what or 'input'}: bad input"
            detail = ""
        else:
            title = f"{what or 'job'} failed: {type(exc).__name__}"
            detail = (
                "".join(traceback.format_exception(exc)[-6:])
                if exc is not None and os.environ.get("MERGESCOPE_DEBUG")
                else ""
            )
        message = str(exc) if exc is not None else "unknown error"
        if what == "merge":  # the core speaks CLI; here the flag is a checkbox
            message = message.replace("pass --force to replace it", "tick “replace existing” to replace it")
        reopen = self.report is None and what == "analysis"  # nothing open yet: back to the open dialog
        self.push_screen(
            ErrorDialog(title, message or type(exc).__name__, detail), lambda _: self.action_open() if reopen else None
        )

    # -- help & commands --------------------------------------------------------------------
    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        yield SystemCommand("Open a model set", "base + fine-tunes (o)", self.action_open)
        yield SystemCommand("Keys", "every key binding (?)", self.action_help)
        yield SystemCommand("Cancel the running job", "analysis or merge (Esc)", self.action_cancel_job)
        if not isinstance(screen, MainScreen):
            return
        for tab in TABS:
            yield SystemCommand(f"Show {tab}", f"switch to the {tab} tab", lambda t=tab: screen.action_tab(t))
        view = screen.query_one(HeatmapView)
        from .heatdata import METRICS

        for m in METRICS:
            yield SystemCommand(
                f"Heatmap metric: {m.label}",
                f"key {m.key}: {m.help}",
                lambda mid=m.id: (screen.action_tab("heatmap"), view.action_metric(mid)),
            )
        yield SystemCommand("Heatmap: toggle module/group columns", "c", view.action_toggle_columns)
        yield SystemCommand("Heatmap: next model", "m", lambda: view.action_next_model(1))
        yield SystemCommand("Heatmap: next pair", "p", lambda: view.action_next_pair(1))
        editor = screen.query_one(PlanEditor)

        def in_plan(fn):
            return lambda: (screen.action_tab("plan"), fn())

        yield SystemCommand("Plan: export YAML", "s: write a mergekit-compatible plan", self.action_export_plan)
        yield SystemCommand("Plan: load YAML", "l: a mergescope or mergekit plan", self.action_load_plan)
        yield SystemCommand("Plan: next method", "t", in_plan(lambda: editor.action_next_method(1)))
        yield SystemCommand("Plan: next parameter table", "a (weight, density, …)", in_plan(editor.action_next_param))
        yield SystemCommand(
            "Plan: layer bands", "b: one, halves, thirds, quarters, 6, per layer", in_plan(editor.action_next_bands)
        )
        yield SystemCommand("Plan: include / leave out the model", "i", in_plan(editor.action_toggle_include))
        yield SystemCommand("Plan: what-if metric", "w", in_plan(editor.action_next_whatif))
        yield SystemCommand(
            "Plan: re-measure trimmed conflict at the plan's density", "r", self.remeasure_at_plan_density
        )
        yield SystemCommand("Plan: increase the selected ratio", "+", in_plan(lambda: editor.action_step(1)))
        yield SystemCommand("Plan: decrease the selected ratio", "-", in_plan(lambda: editor.action_step(-1)))
        yield SystemCommand("Merge now", "ctrl+g or Enter in the output field", self.action_run_merge)
