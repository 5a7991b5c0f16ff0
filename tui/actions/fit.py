"""Fitting the plan editor's weight table, mixed into the app: build the job from the editor (its plan and
band mode) and the held-out texts, open the fit panel (dialogs/fit.py, which runs the fit in its worker),
and load the table it is dismissed with into the editor."""

from __future__ import annotations

from mergescope.tui.dialogs.fit import FitScreen
from mergescope.tui.state.fit_job import DEFAULT_STEPS, make_job
from mergescope.tui.state.tuning import apply_table


class FitJobs:
    """Mixin for the app (it provides `editor`, `session`, `device`, `show_error`, `tune_texts`)."""

    fit_steps = DEFAULT_STEPS
    fit_panel: FitScreen | None = None  # the last fit panel opened (tests read its steps)

    def action_fit_table(self) -> None:
        from mergescope.io.errors import InputError

        editor = self.editor
        state = self.session.plan_state
        paths = self.tune_texts()
        if state is not None and not paths:
            self.notify(
                "no held-out texts to fit on: start with --eval-text FILE (or enter them in the Evaluate tab)",
                severity="warning",
            )
            return
        try:
            job = make_job(state, paths, device=self.device, steps=self.fit_steps)
        except InputError as exc:
            self.show_error(exc, what="fit")
            return

        def done(table: dict | None) -> None:
            if table is None or self.session.plan_state is not state:
                return
            apply_table(state, job, table)
            editor.changed()
            best, start = panel.best, panel.start
            score = (
                f": held-out {start.held:.4f} → {best.held:.4f} bits/byte (step {best.step})"
                if best is not None and start is not None
                else ""
            )
            self.notify(f"fitted weight table loaded{score}")

        panel = self.fit_panel = FitScreen(job)
        self.push_screen(panel, done)
