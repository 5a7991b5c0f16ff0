"""The merge tab: the plan as YAML, an output directory, and the result with its model card."""

from __future__ import annotations

from rich.markdown import Markdown
from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Checkbox, Label, Static

from mergescope.tui.widgets.inputs import AppInput, PathInput

CARD_LINES = 40


class MergeView(Vertical, can_focus=False):
    HELP_TITLE = "Merge"
    PALETTE_GROUP = ""
    DEFAULT_CSS = """
    MergeView { height: 1fr; padding: 0 1; }
    MergeView #merge-form { height: auto; }
    MergeView .merge-row { height: 1; }
    MergeView #merge-form Label { padding: 0 1 0 0; }
    MergeView #merge-output { width: 1fr; }
    MergeView #merge-seed { width: 10; }
    MergeView #merge-form Checkbox { border: none; height: 1; padding: 0 1; background: transparent; }
    MergeView #merge-form Button { min-width: 16; height: 1; border: none; margin-left: 1; }
    MergeView #merge-status { height: auto; padding: 0 0 1 0; }
    MergeView #merge-panes { height: 1fr; }
    MergeView #merge-plan, MergeView #merge-result { width: 1fr; border: round $primary 50%; padding: 0 1; }
    """
    BINDINGS = [
        Binding("ctrl+g", "app.run_merge", "merge now", id="merge.run"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="merge-form"):  # the path gets a row of its own: readable at 80 columns
            with Horizontal(classes="merge-row"):
                yield Label("output dir")
                yield PathInput(
                    "", id="merge-output", dirs_only=True, compact=True, placeholder="where the merged model goes"
                )
            with Horizontal(classes="merge-row"):
                yield Label("seed      ")
                yield AppInput("", id="merge-seed", compact=True, placeholder="none", type="integer")
                yield Checkbox("replace existing", False, id="merge-force")
                yield Button("Merge (Enter)", variant="primary", id="merge-go")
        yield Static(
            Text("Enter in the output field merges; Esc cancels a running merge (no partial output).", style="dim"),
            id="merge-status",
        )
        with Horizontal(id="merge-panes"):
            with VerticalScroll(id="merge-plan"):
                yield Static("", id="merge-plan-yaml")
            with VerticalScroll(id="merge-result"):
                yield Static(Text("No merge yet.", style="dim"), id="merge-result-body")

    @property
    def output(self) -> str:
        return self.query_one("#merge-output", PathInput).value.strip()

    @property
    def seed(self) -> int | None:
        raw = self.query_one("#merge-seed", AppInput).value.strip()
        return int(raw) if raw else None

    @property
    def force(self) -> bool:
        return self.query_one("#merge-force", Checkbox).value

    def set_output(self, path: str) -> None:
        self.query_one("#merge-output", PathInput).value = path

    def show_plan(self, yaml_text: str | None, problem: str | None = None) -> None:
        body = self.query_one("#merge-plan-yaml", Static)
        if problem:
            body.update(Text(f"✖ the plan cannot be merged yet: {problem}", style="red"))
        elif yaml_text:
            body.update(Syntax(yaml_text, "yaml", theme="ansi_dark", background_color="default", word_wrap=True))
        else:
            body.update(Text("no plan", style="dim"))

    def status(self, text: Text | str) -> None:
        self.query_one("#merge-status", Static).update(text)

    def show_result(self, result, card: str | None) -> None:
        t = Text()
        t.append("✔ merged into ", "green")
        t.append(str(result.output_dir), "bold")
        t.append(
            f"\n{result.n_tensors} tensors, {len(result.shards)} shard(s), {result.total_bytes / 1e6:.1f} MB, "
            f"{result.seconds:.1f}s on {result.device}\n",
            "dim",
        )
        t.append("files: " + ", ".join(result.files) + "\n", "dim")
        parts = [t]
        if card:
            if card.startswith("---"):  # YAML front matter: metadata for the Hub, not for reading
                end = card.find("\n---", 3)
                card = card[end + 4 :] if end > 0 else card
            lines = _without_section(card.strip().splitlines(), "## Configuration")
            snippet = "\n".join(lines[:CARD_LINES]) + ("\n\n…" if len(lines) > CARD_LINES else "")
            parts.append(Markdown(snippet))
        from rich.console import Group

        self.query_one("#merge-result-body", Static).update(Group(*parts))

    def on_input_submitted(self, event) -> None:
        event.stop()
        self.app.action_run_merge()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.app.action_run_merge()


def _without_section(lines: list[str], heading: str) -> list[str]:
    """The card without one section: its plan is the left pane already, and would push the rest out of view."""
    if heading not in lines:
        return lines
    start = lines.index(heading)
    end = next((k for k in range(start + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
    return lines[:start] + lines[end:]
