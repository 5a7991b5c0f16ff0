"""Progress of the running job: a bar with ETA, tensors done, bytes/s; Esc cancels."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import ProgressBar, Static

from mergescope.io.units import fmt_bytes as human_bytes


class JobProgress(Horizontal):
    DEFAULT_CSS = """
    JobProgress { height: 1; display: none; background: $boost; padding: 0 1; }
    JobProgress.-running { display: block; }
    JobProgress #job-title { width: auto; text-style: bold; padding-right: 1; }
    JobProgress ProgressBar { width: 48; }
    JobProgress #job-stats { width: 1fr; color: $text-muted; padding-left: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static("", id="job-title")
        yield ProgressBar(total=None, show_eta=True, id="job-bar")
        yield Static("", id="job-stats")

    def start(self, title: str) -> None:
        self.query_one("#job-title", Static).update(title)
        self.query_one("#job-stats", Static).update("starting…  Esc cancels")
        bar = self.query_one(ProgressBar)
        bar.update(total=None, progress=0)
        self.add_class("-running")

    def update_progress(self, done: float, total: int, label: str, elapsed: float, rate: bool = True) -> None:
        """`rate`: show bytes per second (False when `done` counts steps, not bytes)."""
        bar = self.query_one(ProgressBar)
        bar.update(total=max(total, 1), progress=done)
        head = label.split(" ", 1)
        t = Text()
        t.append(head[0], "bold")
        t.append(f"  {human_bytes(done / elapsed if elapsed > 0 else 0.0)}/s  " if rate else "  ")
        if len(head) > 1:
            t.append(head[1], "dim")
        t.append("  Esc cancels", "dim italic")
        self.query_one("#job-stats", Static).update(t)

    def stop(self) -> None:
        self.remove_class("-running")
