"""`?`: every key binding of the app, grouped by where it works."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

NICE = {
    "escape": "Esc",
    "enter": "Enter",
    "question_mark": "?",
    "plus": "+",
    "minus": "-",
    "equals_sign": "=",
    "underscore": "_",
    "left_square_bracket": "[",
    "right_square_bracket": "]",
    "pageup": "PgUp",
    "pagedown": "PgDn",
    "up": "↑",
    "down": "↓",
    "left": "←",
    "right": "→",
    "tab": "Tab",
    "shift+tab": "Shift+Tab",
    "full_stop": ".",
    "comma": ",",
    "slash": "/",
    "less_than_sign": "<",
    "greater_than_sign": ">",
    "asterisk": "*",
    "number_sign": "#",
}


def key_label(key: str) -> str:
    return "/".join(NICE.get(k, k.replace("ctrl+", "Ctrl+")) for k in key.split(","))


def binding_sections(screen) -> list[tuple[str, list[Binding]]]:
    """(section title, bindings) for the app, the screen and each kind of widget on it."""
    sections: list[tuple[str, list[Binding]]] = []
    seen: set[type] = set()
    nodes = [screen.app, screen, *screen.walk_children()]
    for node in nodes:
        cls = type(node)
        if cls in seen:
            continue
        seen.add(cls)
        if not cls.__module__.startswith("mergescope.tui."):  # Textual's own widgets: documented by Textual
            continue
        own = [b for b in cls.__dict__.get("BINDINGS", []) if isinstance(b, Binding) and b.description]
        if not own:
            continue
        title = getattr(cls, "HELP_TITLE", None) or ("Everywhere" if node is screen.app else cls.__name__)
        sections.append((title, own))
    return sections


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 90; max-width: 100%; height: 90%; border: thick $primary;
        background: $surface; padding: 0 1; }
    HelpScreen .title { text-style: bold; }
    """
    BINDINGS = [Binding("escape,question_mark,q", "close", "close", id="help.close")]

    def __init__(self, screen) -> None:
        super().__init__()
        self.target = screen

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Keys  (Esc closes; Ctrl+P opens the command palette with every action)", classes="title")
            with VerticalScroll(id="help-body"):
                for title, bindings in binding_sections(self.target):
                    table = Table(box=None, show_header=False, padding=(0, 2), expand=False)
                    table.add_column(style="bold cyan", no_wrap=True, min_width=12)
                    table.add_column()
                    for b in bindings:
                        table.add_row(key_label(b.key), b.description)
                    yield Static(Text(title, style="bold underline"))
                    yield Static(table)

    def action_close(self) -> None:
        self.dismiss(None)
