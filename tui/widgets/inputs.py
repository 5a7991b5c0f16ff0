"""Inputs that follow the app's blink setting (tests and screenshots turn blinking off)."""

from __future__ import annotations

from textual.widgets import Input

from mergescope.tui.suggest import PathSuggester


class AppInput(Input):
    def on_mount(self) -> None:
        self.cursor_blink = getattr(self.app, "blink", True)


class PathInput(AppInput):
    """An input for a path: → or End accepts the completion."""

    def __init__(self, value: str = "", *, dirs_only: bool = False, **kw) -> None:
        super().__init__(value, suggester=PathSuggester(dirs_only), **kw)
