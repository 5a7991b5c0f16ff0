"""The Evaluate tab's jobs, mixed into the app: build a job from the session and the plan editor's
cursor, run it in a worker (`evaluation.run`), keep its result in the session, and hand the view
what to show.

Like the app's other workers, this one posts messages and never touches widgets. Textual calls every
class's own handler along the MRO, so `on_worker_state_changed` here runs after the app's (which
shows a failure's dialog and stops the progress bar); this one only updates the tab.
"""

from __future__ import annotations

import time
from dataclasses import replace

from textual import work
from textual.worker import Worker, WorkerState, get_current_worker

from mergescope.io.progress import Cancelled
from mergescope.tui.messages import EvalDone, EvalPartial, Progress
from mergescope.tui.state.evaluation import EvalEntry, make_job
from mergescope.tui.widgets.eval_view import EvalView
from mergescope.tui.widgets.progress import JobProgress

EVAL_GROUP = "evaluate"


class EvalJobs:
    """Mixin for the app (it provides `main`, `editor`, `session`, `device`, `show_error`, `running_jobs`)."""

    def show_eval(self) -> None:
        """Hand the Evaluate tab the session and the cell a sweep would vary."""
        if not self._has_main():
            return
        target, problem = None, None
        if self.session.plan_state is None:
            problem = "open a model set first (o)"
        else:
            target = self.editor.sweep_target()
            if target is None:
                problem = "no table cell under the plan editor's cursor"
        self.main.query_one(EvalView).show(self.session, target, problem)

    def on_analysis_done(self, _) -> None:
        """After the app's handler: a new report and plan (the texts field fills in, too)."""
        self.show_eval()

    def on_eval_view_run(self, message: EvalView.Run) -> None:
        from mergescope.io.errors import InputError

        if any(w.group == EVAL_GROUP for w in self.running_jobs()):
            self.notify("an evaluation is running: wait for it or press Esc to cancel it", severity="warning")
            return
        view = self.main.query_one(EvalView)
        target = self.editor.sweep_target() if message.kind == "sweep" else None
        try:
            job = make_job(message.kind, self.session, view.text_paths, target, view.values)
        except InputError as exc:
            self.show_error(exc, what="evaluate")
            return
        self.session.texts = list(job.text_paths)
        self.main.query_one(JobProgress).start(message.kind)
        view.started(job)
        self.eval_worker(job)

    @work(thread=True, exclusive=True, group=EVAL_GROUP, exit_on_error=False, name="evaluate", description="evaluate")
    def eval_worker(self, job) -> None:
        from mergescope.tui.state.evaluation import run

        worker = get_current_worker()
        t0 = time.perf_counter()

        def post(done: float, total: int, label: str) -> None:
            self.post_message(Progress("evaluate", done, total, label, time.perf_counter() - t0, rate=False))

        def partial(result) -> None:
            if not worker.is_cancelled:
                self.post_message(EvalPartial(job, result))

        try:
            result = run(job, device=self.device, post=post, should_stop=lambda: worker.is_cancelled, partial=partial)
        except Cancelled:
            return
        if not worker.is_cancelled:
            self.post_message(EvalDone(job, result, time.perf_counter() - t0))

    def on_eval_partial(self, message: EvalPartial) -> None:
        if self._has_main():
            self.main.query_one(EvalView).show_partial(message.job, message.partial)

    def on_eval_done(self, message: EvalDone) -> None:
        if not self._has_main():
            return
        job, result = message.job, message.result
        self.session.evals.put(EvalEntry(replace(job, texts={}), result, message.seconds))  # the bytes go
        self.timings[f"eval_{job.kind}"] = message.seconds
        if job.kind == "sweep":
            best = result.search.values[result.search.best()]
            text = f"sweep of {len(job.values)} values: best {job.param} = {best:g} on the selection split"
        elif job.kind == "soup":
            text = f"greedy soup: kept {len(result.search.kept)} of {len(job.models)}"
        else:
            text = f"scored the plan and {len(result.scored.rows) - 1} model(s)"
        self.main.query_one(EvalView).finished(job, message.seconds, text)
        self.show_eval()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != EVAL_GROUP or not self._has_main():
            return
        if event.state == WorkerState.CANCELLED:
            self.main.query_one(EvalView).stopped("cancelled: nothing was kept")
        elif event.state == WorkerState.ERROR:
            self.main.query_one(EvalView).stopped("✖ failed: nothing was kept", style="red")
