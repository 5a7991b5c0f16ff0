"""One modal for every failure: the message, what to do, and a way back."""

from __future__ import annotations

import os
import traceback

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ErrorDialog(ModalScreen[None]):
    DEFAULT_CSS = """
    ErrorDialog { align: center middle; }
    ErrorDialog > Vertical { width: 76; max-width: 95%; height: auto; max-height: 90%;
        border: thick $error; background: $surface; padding: 0 1; }
    ErrorDialog #error-title { text-style: bold; color: $error; padding-bottom: 1; }
    ErrorDialog VerticalScroll { height: auto; max-height: 16; }
    ErrorDialog #error-detail { color: $text-muted; }
    ErrorDialog Button { margin-top: 1; }
    """
    BINDINGS = [Binding("escape,enter", "dismiss", "close", id="error.close")]

    def __init__(self, title: str, message: str, detail: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.message = message
        self.detail = detail

    @classmethod
    def for_exception(cls, exc: BaseException | None, what: str = "") -> ErrorDialog:
        """Bad input says so and what to change; anything else names its type (and, with
        MERGESCOPE_DEBUG set, the end of its trace)."""
        from mergescope.io.errors import InputError

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
            message = message.replace("--force replaces only", "“replace existing” replaces only")
            for flag in ("--force-incompatible", "--allow-non-finite"):  # CLI-only overrides
                message = message.replace(
                    f"pass {flag} to merge anyway",
                    f"leave that model out of the plan (i), or merge with the CLI's {flag}",
                )
        return cls(title, message or type(exc).__name__, detail)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(f"✖ {self.title_text}"), id="error-title")
            with VerticalScroll():
                yield Static(Text(self.message), id="error-message")
                if self.detail:
                    yield Static(Text(self.detail), id="error-detail")
            yield Button("OK (Enter)", variant="error", id="error-ok")

    def on_mount(self) -> None:
        self.query_one(Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(None)

    def action_dismiss(self, result=None) -> None:
        self.dismiss(None)
