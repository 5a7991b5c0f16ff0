"""Tuning the plan editor's table, mixed into the app: build the job from the editor (its plan, band
mode and the parameter being edited) and the held-out texts, open the tune panel (dialogs/tune.py, which
runs the search in its worker), and load the table it is dismissed with into the editor."""

from __future__ import annotations

from mergescope.tui.dialogs.tune import TuneScreen
from mergescope.tui.state.tuning import DEFAULT_TRIALS, apply_table, make_job
from mergescope.tui.widgets.eval_view import EvalView


class TuneJobs:
    """Mixin for the app (it provides `main`, `editor`, `session`, `device`, `show_error`)."""

    tune_trials = DEFAULT_TRIALS
    tune_seed: int | None = None
    tune_panel: TuneScreen | None = None  # the last tune panel opened (tests read its trials)

    def tune_texts(self) -> list[str]:
        """The Evaluate tab's texts (as typed there), else the session's (--eval-text)."""
        try:
            paths = self.main.query_one(EvalView).text_paths
        except Exception:  # noqa: BLE001 - no tab yet, or a field that does not parse: the session's
            paths = []
        return paths or list(self.session.texts)

    def action_tune_table(self) -> None:
        from mergescope.io.errors import InputError

        editor = self.editor
        state = self.session.plan_state
        paths = self.tune_texts()
        if state is not None and not paths:
            self.notify(
                "no held-out texts to tune on: start with --eval-text FILE (or enter them in the Evaluate tab)",
                severity="warning",
            )
            return
        try:
            job = make_job(state, editor.param, paths, device=self.device, n_trials=self.tune_trials)
        except InputError as exc:
            self.show_error(exc, what="tune")
            return

        def done(table: dict | None) -> None:
            if table is None or self.session.plan_state is not state:
                return
            apply_table(state, job, table)
            editor.changed()
            best = panel.best()
            score = f": trial {best.number}, {best.value:.4f} bits/byte" if best is not None else ""
            self.notify(f"tuned {job.param} table loaded{score}")

        panel = self.tune_panel = TuneScreen(job, seed=self.tune_seed)
        self.push_screen(panel, done)
