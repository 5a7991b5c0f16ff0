"""The sensitivity pass on demand, mixed into the app: the sensitivity metric asked for in the heatmap (%)
differentiates each held-out text's bits per byte with respect to every model's weight in every cell of
the plan being edited (state/sensitivity_map.py) in a worker with progress; then the heatmap shows it per
model and text, and the plan editor predicts each edit's change per text beside the measured one."""

from __future__ import annotations

import copy
import time

from textual import work
from textual.worker import WorkerState, get_current_worker

from mergescope.io.progress import Cancelled
from mergescope.tui.messages import Progress, SensitivityDone
from mergescope.tui.state.evaluation import PLAN_ROW
from mergescope.tui.widgets.heatmap_view import HeatmapView
from mergescope.tui.widgets.progress import JobProgress

SENSITIVITY_GROUP = "sensitivity"
SCORE_HINT = "score the plan: u, then s"


class SensitivityJobs:
    """Mixin for the app (it provides `main`, `editor`, `session`, `device`, `workers`, `show_error`,
    `tune_texts`, `_has_main`)."""

    def on_heatmap_view_sensitivity_wanted(self, _: HeatmapView.SensitivityWanted) -> None:
        from mergescope.io.errors import InputError
        from mergescope.score.texts import read_texts
        from mergescope.tui.state.fit_job import memory_note

        if self.session.report is None or self.session.plan_state is None:
            return
        if any(
            w.group == SENSITIVITY_GROUP and w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in self.workers
        ):
            self.notify("the sensitivity pass is running (progress below; Esc cancels)")
            return
        paths = self.tune_texts()
        if not paths:
            self.notify(
                "no held-out texts to differentiate: start with --eval-text FILE (or enter them in the Evaluate tab)",
                severity="warning",
            )
            return
        try:
            plan = self.session.current_plan()
            texts = read_texts(paths, what="text")
            note = memory_note(plan, self.device)
        except InputError as exc:
            self.show_error(exc, what="sensitivity")
            return
        self.main.query_one(JobProgress).start("sensitivity")
        self.notify(f"sensitivity of the plan on {len(texts)} text(s): one forward and backward pass each; {note}")
        state = copy.deepcopy(self.session.plan_state)  # the editor may change it while the worker runs
        self.run_sensitivity(plan, state, self.session.report, texts, tuple(paths))

    @work(
        thread=True, exclusive=True, group=SENSITIVITY_GROUP, exit_on_error=False, name="sensitivity", description="s"
    )
    def run_sensitivity(self, plan, state, report, texts, paths) -> None:
        from mergescope.tui.state.sensitivity_map import compute

        worker = get_current_worker()
        t0 = time.perf_counter()

        def progress(done: int, total: int, label: str) -> None:
            self.post_message(Progress("sensitivity", done, total, label, time.perf_counter() - t0))

        try:
            smap = compute(
                plan,
                state,
                report,
                texts,
                paths,
                device=self.device,
                progress=progress,
                should_stop=lambda: worker.is_cancelled,
            )
        except Cancelled:
            return
        if not worker.is_cancelled:
            self.post_message(SensitivityDone(smap, report))

    def on_sensitivity_done(self, message: SensitivityDone) -> None:
        if not self._has_main() or message.report is not self.session.report:
            return  # another set was opened meanwhile
        self.session.sensitivity = message.smap
        self.main.query_one(HeatmapView).sensitivity_ready(message.smap)
        self.refresh_sensitivity()
        self.notify("sensitivity done: % shows it, m and t pick the model and the text; the plan editor predicts edits")

    def on_eval_done(self, _) -> None:
        """After the Evaluate tab's handler: a new score is the measured change."""
        self.refresh_sensitivity()

    def refresh_sensitivity(self, plan_yaml: str | None = None) -> None:
        """Tell the heatmap whether the sensitivity is the current plan's, and the editor what it predicts."""
        if not self._has_main():
            return
        from mergescope.tui.state.sensitivity_map import prediction_text

        smap, state = self.session.sensitivity, self.session.plan_state
        if plan_yaml is None:
            plan_yaml = self.session.plan_or_problem()[1]
        note = ""
        if smap is not None:
            if tuple(self.tune_texts()) != smap.text_paths:
                note = "computed on other texts: % recomputes on the current ones"
            elif plan_yaml != smap.key:
                note = f"computed for the plan as it was ({smap.what}): % recomputes for the plan as it is"
        self.main.query_one(HeatmapView).set_sensitivity(smap, note)
        scores = None
        if smap is not None and plan_yaml is not None:
            entry, stale = self.session.evals.get("score", plan_yaml, smap.text_paths)
            if entry is not None and not stale:
                scores = entry.result.scored.rows.get(PLAN_ROW)
        self.editor.show_prediction(prediction_text(smap, state, scores, SCORE_HINT, compact=self.editor.narrow))
