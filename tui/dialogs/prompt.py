"""Ask for one path (export a plan, load a plan, choose a merge output directory)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from mergescope.tui.widgets.inputs import PathInput


class PathPrompt(ModalScreen[str | None]):
    DEFAULT_CSS = """
    PathPrompt { align: center middle; }
    PathPrompt > Vertical { width: 76; max-width: 95%; height: auto; border: thick $primary;
        background: $surface; padding: 0 1; }
    PathPrompt .title { text-style: bold; padding-bottom: 1; }
    PathPrompt .hint { color: $text-muted; }
    PathPrompt Horizontal { height: auto; margin-top: 1; }
    PathPrompt Button { margin-right: 2; }
    """
    BINDINGS = [Binding("escape", "cancel", "cancel", id="prompt.cancel")]

    def __init__(
        self,
        title: str,
        value: str = "",
        hint: str = "",
        ok: str = "OK",
        dirs_only: bool = False,
        prompt_id: str = "prompt",
    ) -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.hint = hint
        self.ok = ok
        self.dirs_only = dirs_only
        self.prompt_id = prompt_id

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, classes="title")
            yield PathInput(
                self.value, id=f"{self.prompt_id}-input", dirs_only=self.dirs_only, placeholder="path (→ completes)"
            )
            if self.hint:
                yield Static(self.hint, classes="hint")
            with Horizontal():
                yield Button(f"{self.ok} (Enter)", variant="primary", id="prompt-ok")
                yield Button("Cancel (Esc)", id="prompt-cancel")

    def on_mount(self) -> None:
        inp = self.query_one(Input)
        inp.focus()
        inp.cursor_position = len(inp.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._ok()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "prompt-ok":
            self._ok()
        else:
            self.dismiss(None)

    def _ok(self) -> None:
        value = self.query_one(Input).value.strip()
        self.dismiss(value or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ValuePrompt(ModalScreen[float | None]):
    """Type a number for a table cell; the spec's range is checked before it is accepted."""

    DEFAULT_CSS = """
    ValuePrompt { align: center middle; }
    ValuePrompt > Vertical { width: 60; max-width: 95%; height: auto; border: thick $primary;
        background: $surface; padding: 0 1; }
    ValuePrompt .title { text-style: bold; padding-bottom: 1; }
    ValuePrompt .hint { color: $text-muted; }
    ValuePrompt #value-error { color: $error; }
    """
    BINDINGS = [Binding("escape", "cancel", "cancel", id="value.cancel")]

    def __init__(
        self, title: str, value: float | None, lo: float | None = None, hi: float | None = None, hint: str = ""
    ) -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.lo, self.hi = lo, hi
        self.hint = hint

    def compose(self) -> ComposeResult:
        from mergescope.tui.widgets.inputs import AppInput

        rng = ""
        if self.lo is not None or self.hi is not None:
            rng = f"  range {self.lo if self.lo is not None else '-∞'} … {self.hi if self.hi is not None else '∞'}"
        with Vertical():
            yield Label(self.title_text, classes="title")
            yield AppInput("" if self.value is None else f"{self.value:g}", id="value-input", type="number")
            yield Static(f"{self.hint}{rng}   Enter sets, Esc cancels", classes="hint")
            yield Static("", id="value-error")

    def on_mount(self) -> None:
        inp = self.query_one(Input)
        inp.focus()
        inp.select_all() if hasattr(inp, "select_all") else None

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            v = float(event.value)
        except ValueError:
            self.query_one("#value-error", Static).update("✖ not a number")
            return
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            self.query_one("#value-error", Static).update(f"✖ out of range ({self.lo} … {self.hi})")
            return
        self.dismiss(v)

    def action_cancel(self) -> None:
        self.dismiss(None)
