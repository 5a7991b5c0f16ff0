"""Open a model set: base, fine-tunes, optional plan; paths complete; recent sets one key away."""

from __future__ import annotations

import os

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from mergescope.tui.state.recent import ModelSet, load_recent
from mergescope.tui.widgets.inputs import PathInput


class OpenDialog(ModalScreen[ModelSet | None]):
    DEFAULT_CSS = """
    OpenDialog { align: center middle; }
    OpenDialog > VerticalScroll { width: 90; max-width: 100%; height: auto; max-height: 100%;
        border: thick $primary; background: $surface; padding: 0 1; }
    OpenDialog .title { text-style: bold; }
    OpenDialog .hint { color: $text-muted; }
    OpenDialog Label { margin-top: 1; }
    OpenDialog Input { margin-bottom: 0; background: $boost; }
    OpenDialog .model-input { margin-bottom: 1; }
    OpenDialog #open-models { height: auto; max-height: 12; }
    OpenDialog #open-recent { height: auto; max-height: 6; }
    OpenDialog #open-error { color: $error; height: auto; }
    OpenDialog #open-buttons { height: auto; margin-top: 1; }
    OpenDialog Button { margin-right: 2; }
    OpenDialog #open-buttons Button { height: 1; border: none; min-width: 18; }
    """
    BINDINGS = [
        Binding("escape", "cancel", "cancel", id="open.cancel"),
        Binding("ctrl+n", "add_model", "add model", id="open.add_model"),
        Binding("ctrl+r", "focus_recent", "recent sets", id="open.recent"),
    ]

    def __init__(self, initial: ModelSet | None = None, can_cancel: bool = True) -> None:
        super().__init__()
        self.initial = initial
        self.can_cancel = can_cancel
        self.recent = load_recent()

    def compose(self) -> ComposeResult:
        init = self.initial or ModelSet("", ["", ""])
        models = list(init.models) or [""]
        with VerticalScroll(id="open-dialog"):  # scrolls on small terminals; Enter submits from any field
            yield Static("Open a base and its fine-tunes", classes="title")
            yield Static(
                "Directories (HF layout), .safetensors files or LoRA adapters. → completes a path; "
                "Enter analyses; Ctrl+N adds a model.",
                classes="hint",
            )
            yield Label("Base model")
            yield PathInput(init.base, id="open-base", placeholder="path to the base", compact=True)
            yield Label("Fine-tuned models")
            with VerticalScroll(id="open-models"):
                for k, m in enumerate(models):
                    yield self._model_input(m, k)
            yield Label("Plan (optional: a mergescope or mergekit YAML)")
            yield PathInput(init.plan or "", id="open-plan", placeholder="plan.yaml", compact=True)
            if self.recent:
                yield Label("Recent sets (Ctrl+R, Enter opens)")
                yield OptionList(
                    *[
                        Option(Text.assemble(e.describe(), (f"   {e.where()}", "dim")), id=str(k))
                        for k, e in enumerate(self.recent)
                    ],
                    id="open-recent",
                )
            yield Static("", id="open-error")
            with Horizontal(id="open-buttons"):
                yield Button("Analyse (Enter)", variant="primary", id="open-ok")
                yield Button("Add model (Ctrl+N)", id="open-add")
                yield Button("Cancel (Esc)" if self.can_cancel else "Quit (Esc)", id="open-cancel")

    def _model_input(self, value: str, k: int) -> Input:
        return PathInput(
            value, id=f"open-model-{k}", classes="model-input", placeholder=f"fine-tune #{k + 1}", compact=True
        )

    def on_mount(self) -> None:
        self.query_one("#open-base", Input).focus()

    def action_add_model(self) -> None:
        box = self.query_one("#open-models", VerticalScroll)
        k = len(self.query(".model-input"))
        inp = self._model_input("", k)
        box.mount(inp)
        inp.focus()

    def action_focus_recent(self) -> None:
        if self.recent:
            self.query_one("#open-recent", OptionList).focus()

    def action_cancel(self) -> None:
        if self.can_cancel:
            self.dismiss(None)
        else:
            self.app.exit()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        entry = self.recent[int(event.option.id)]
        self._fill(entry)
        self._submit()

    def _fill(self, entry: ModelSet) -> None:
        self.query_one("#open-base", Input).value = entry.base
        inputs = list(self.query(".model-input").results(Input))
        while len(inputs) < len(entry.models):
            self.action_add_model()
            inputs = list(self.query(".model-input").results(Input))
        for inp, value in zip(inputs, entry.models + [""] * len(inputs)):
            inp.value = value
        self.query_one("#open-plan", Input).value = entry.plan or ""

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "open-ok":
            self._submit()
        elif event.button.id == "open-add":
            self.action_add_model()
        else:
            self.action_cancel()

    def current(self) -> ModelSet:
        base = self.query_one("#open-base", Input).value.strip()
        models = [i.value.strip() for i in self.query(".model-input").results(Input) if i.value.strip()]
        plan = self.query_one("#open-plan", Input).value.strip() or None
        return ModelSet(base, models, plan)

    def _submit(self) -> None:
        entry = self.current()
        problem = validate(entry)
        err = self.query_one("#open-error", Static)
        if problem:
            err.update(Text(f"✖ {problem}"))
            return
        err.update("")
        self.dismiss(entry)


def validate(entry: ModelSet) -> str | None:
    """A one-line reason the set cannot be opened, or None. Deeper checks happen in the analysis."""
    if not entry.base:
        return "give the base model's path"
    if not entry.models:
        return "give at least one fine-tuned model"
    for p in [entry.base, *entry.models]:
        if not os.path.exists(os.path.expanduser(p)):
            return f"{p}: no such file or directory"
    if entry.plan and not os.path.isfile(os.path.expanduser(entry.plan)):
        return f"{entry.plan}: plan file not found"
    return None
