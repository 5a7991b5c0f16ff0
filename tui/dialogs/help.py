"""`?`: every key binding of the app, grouped by where it works."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from mergescope.tui.keylabels import key_label


def _owners(screen) -> list[tuple[object, list[Binding]]]:
    """(first node of each of the app's own classes, the bindings that class declares with a description)."""
    out = []
    seen: set[type] = set()
    for node in [screen.app, screen, *screen.walk_children()]:
        cls = type(node)
        if cls in seen:
            continue
        seen.add(cls)
        if not cls.__module__.startswith("mergescope.tui."):  # Textual's own widgets: documented by Textual
            continue
        own = [b for b in cls.__dict__.get("BINDINGS", []) if isinstance(b, Binding) and b.description]
        if own:
            out.append((node, own))
    return out


def binding_sections(screen) -> list[tuple[str, list[Binding]]]:
    """(section title, bindings) for the app, the screen and each kind of widget on it."""
    return [
        (getattr(type(node), "HELP_TITLE", None) or ("Everywhere" if node is screen.app else type(node).__name__), own)
        for node, own in _owners(screen)
    ]


def palette_entries(screen) -> list[tuple[str, str, object, Binding]]:
    """(title, help, node, binding) for the bindings of every class that names a `PALETTE_GROUP`, so the
    command palette offers what `?` lists. The title is "group: name", name being the binding's tooltip
    or its description; a `Binding.Group` names the group of its bindings; "" means no group."""
    out = []
    for node, own in _owners(screen):
        group = getattr(type(node), "PALETTE_GROUP", None)
        if group is None:  # e.g. cursor keys: nothing to pick from a list
            continue
        for b in own:
            name = b.tooltip or b.description
            where = b.group.description if b.group is not None else group
            title = f"{where}: {name}" if where else name[:1].upper() + name[1:]
            out.append((title, f"key {key_label(b.key)}", node, b))
    return out


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
