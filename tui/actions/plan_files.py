"""Exporting and loading plans, mixed into the app: the path prompts, the session's file work, the notices."""

from __future__ import annotations

from pathlib import Path

from mergescope.tui.dialogs.prompt import PathPrompt


class PlanFiles:
    """Mixin for the app (it provides `session`, `report`, `show_error`, `_show_plan`)."""

    def action_export_plan(self) -> None:
        from mergescope.io.errors import InputError

        try:
            plan = self.session.current_plan()
        except InputError as exc:
            self.show_error(exc, what="export")
            return

        def done(path: str | None) -> None:
            if not path:
                return
            try:
                target = self.session.export(plan, path)
            except InputError as exc:
                self.show_error(exc, what="export")
                return
            note = plan.extension_note()
            if note:
                self.notify(f"plan written to {target}; {note}", severity="warning")
            else:
                self.notify(f"plan written to {target}")

        self.push_screen(
            PathPrompt(
                "Export the plan (mergekit-compatible YAML)",
                self.session.export_default(),
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
        default = self.session.last_export or str(Path.cwd()) + "/"

        def done(path: str | None) -> None:
            if path:
                self.load_plan(path)

        self.push_screen(
            PathPrompt("Load a plan (mergescope or mergekit YAML)", default, ok="Load", prompt_id="load"), done
        )

    def load_plan(self, path: str) -> bool:
        from mergescope.io.errors import InputError

        try:
            state = self.session.load_plan(path)
        except (InputError, OSError) as exc:
            self.show_error(exc, what="loading the plan")
            return False
        self._show_plan()
        self.notify(
            f"plan loaded from {path}" + (" (read-only: hand-written filters)" if state.custom is not None else "")
        )
        return True
