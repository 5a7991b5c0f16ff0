"""Merging from the app, mixed into it: Ctrl+G checks the plan and the output directory, a worker runs the
merge (the same `run_merge` as the CLI, with the open analysis: its findings about the plan's inputs are the
pre-merge checks) and posts progress, and the merge tab shows the result with its model card."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.worker import get_current_worker

from mergescope.io.progress import Cancelled
from mergescope.tui.messages import MergeDone, Progress
from mergescope.tui.widgets.merge_view import MergeView
from mergescope.tui.widgets.progress import JobProgress


class MergeJobs:
    """Mixin for the app (it provides `main`, `session`, `report`, `device`, `running_jobs`, `show_error`,
    `_has_main`)."""

    def action_run_merge(self) -> None:
        from mergescope.io.errors import InputError

        if self.running_jobs():
            self.notify("a job is running: wait for it or press Esc to cancel it", severity="warning")
            return
        view = self.main.query_one(MergeView)
        try:
            plan = self.session.current_plan()
            out = view.output
            if not out:
                raise InputError("choose an output directory first")
            seed = view.seed
            _check_output(plan, os.path.expanduser(out), view.force)
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
        from mergescope.merge.run import run_merge

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
        except Cancelled:
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


def _check_output(plan, out: str, force: bool) -> None:
    """The merge's io.guard check (as `mergescope merge` and run_merge make it), before the worker starts."""
    from mergescope.io.guard import Write, check_io
    from mergescope.merge.run import plan_reads

    plan.validate(check_paths=True)
    check_io(plan_reads(plan), [Write(out, "", folder=True)], force=force)
