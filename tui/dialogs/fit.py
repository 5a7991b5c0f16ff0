"""Fit the plan editor's weight table: a panel that runs `mergescope fit`'s Adam steps in a worker
(`fit_job.run`), plots each step's loss on the part of the texts it fits and on the held-out part, and
shows the best table so far with what it does to each text.

Conventions of the tune panel (dialogs/tune.py): the memory it holds is said before the first step;
Esc stops a running fit cleanly (the best step so far is kept); Enter takes the best table into the
editor (the panel is dismissed with it); Esc on a finished or stopped panel closes it and changes
nothing. The worker only posts messages; the panel draws.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Static
from textual.worker import Worker, WorkerState, get_current_worker
from textual_plotext import PlotextPlot

from mergescope.io.progress import Cancelled
from mergescope.tui.state.fit_job import Best, FitJob


class FitScreen(ModalScreen[dict | None]):
    """Dismissed with the fitted table ({(group, band): [value per plan model]}) on Enter, else None."""

    HELP_TITLE = "Fit the table"
    PALETTE_GROUP = "Fit"
    DEFAULT_CSS = """
    FitScreen { align: center middle; }
    FitScreen > Vertical { width: 116; max-width: 98%; height: 92%; border: thick $primary;
        background: $surface; padding: 0 1; }
    FitScreen .title { text-style: bold; height: auto; }
    FitScreen #fit-memory { height: auto; color: $text-muted; }
    FitScreen #fit-status { height: auto; }
    FitScreen #fit-body { height: 1fr; }
    FitScreen #fit-plot { width: 1fr; min-width: 30; }
    FitScreen #fit-best-box { width: 46; padding: 0 1; }
    FitScreen #fit-buttons { height: auto; }
    FitScreen Button { margin-right: 2; }
    FitScreen.-narrow #fit-best-box { width: 34; padding: 0; }
    FitScreen.-narrow #fit-buttons { display: none; }
    """
    BINDINGS = [
        Binding("escape", "stop_or_close", "stop / close", tooltip="stop the fit, or close the panel", id="fit.stop"),
        Binding("enter", "accept", "take the fitted table", id="fit.accept", priority=True),
    ]

    class Read(Message):
        def __init__(self, done: int, total: int) -> None:
            super().__init__()
            self.done, self.total = done, total

    class Stepped(Message):
        def __init__(self, step, best: Best | None) -> None:
            super().__init__()
            self.step, self.best = step, best

    class Finished(Message):
        def __init__(self, result, best: Best | None) -> None:
            super().__init__()
            self.result, self.best = result, best

    def __init__(self, job: FitJob) -> None:
        super().__init__()
        self.job = job
        self.steps: list = []  # fit.Step as they end
        self.start: Best | None = None  # step 0: the plan as it is
        self.best: Best | None = None
        self.result = None  # the FitResult once the worker is done
        self.running = True
        self.reading: tuple[int, int] | None = (0, 0)
        self._stop = False
        self.worker: Worker | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Fit the table: {self.job.what}", classes="title")
            yield Static(Text(f"{self.job.memory}\n{self.job.split}"), id="fit-memory")
            yield Static("", id="fit-status")
            with Horizontal(id="fit-body"):
                yield PlotextPlot(id="fit-plot")
                with VerticalScroll(id="fit-best-box"):
                    yield Static("", id="fit-best")
            with Horizontal(id="fit-buttons"):
                yield Button("Take the fitted table (Enter)", variant="primary", id="fit-accept", disabled=True)
                yield Button("Stop (Esc)", id="fit-stop")

    def on_mount(self) -> None:
        self._status()
        self._draw()
        self.worker = self.fit()

    def on_resize(self, event) -> None:
        self.set_class(event.size.width < 100, "-narrow")

    # -- the worker ---------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="fit", exit_on_error=False, name="fit", description="fit")
    def fit(self) -> None:
        from mergescope.tui.state.fit_job import run

        worker = get_current_worker()
        try:
            result, best = run(
                self.job,
                should_stop=lambda: self._stop or worker.is_cancelled,
                on_read=lambda done, total, _: self.post_message(self.Read(done, total)),
                on_step=lambda step, best: self.post_message(self.Stepped(step, best)),
            )
        except Cancelled:
            result, best = None, None
        self.post_message(self.Finished(result, best))

    def on_fit_screen_read(self, message: Read) -> None:
        self.reading = (message.done, message.total)
        self._status()

    def on_fit_screen_stepped(self, message: Stepped) -> None:
        self.reading = None
        self.steps.append(message.step)
        self.best = message.best
        if self.start is None:
            self.start = message.best
        self._status()
        self._draw()

    def on_fit_screen_finished(self, message: Finished) -> None:
        self.result = message.result
        if message.best is not None:
            self.best = message.best
        if self.result is not None and self.result.history:
            last = self.result.history[-1]
            if not self.steps or last.step != self.steps[-1].step:
                self.steps.append(last)  # the final measurement, which is not a step
        self.running = False
        self.reading = None
        self._status()
        self._draw()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self.worker or event.state != WorkerState.ERROR:
            return
        self.running = False
        self._status(Text(f"✖ fit failed: {event.worker.error}", style="red"))

    # -- what it shows ------------------------------------------------------------------------
    def best_table(self) -> dict | None:
        return None if self.best is None else self.job.table(self.best.values)

    def _status(self, override: Text | None = None) -> None:
        n, total = len(self.steps), self.job.steps
        if override is not None:
            t = override
        elif self.running and self._stop:
            t = Text("stopping after the step in flight…", style="yellow")
        elif self.running and self.reading is not None:
            done, of = self.reading
            count = f" {done}/{of}" if of else ""
            t = Text(f"reading the plan's tensors{count}…  Esc stops", style="bold")
        elif self.running:
            per = sum(s.seconds for s in self.steps) / n if n else 0.0
            t = Text(f"step {n}/{total} running…  Esc stops (the best so far is kept)", style="bold")
            if n:
                t.append(f"  ({per:.1f} s per step)", "dim")
        elif self.result is None:
            t = Text("stopped before the first step: nothing to take", style="yellow")
        elif self.result.stopped:
            t = Text(f"stopped after {max(0, n - 1)} steps", style="yellow")
        else:
            t = Text(f"✔ done: {max(0, len(self.result.history) - 1)} steps", style="green")
        if self.best is not None and self.start is not None and override is None:
            d = self.best.held - self.start.held
            t.append(
                f"  │  best: step {self.best.step}, held-out {self.best.held:.4f} bits/byte ({d:+.4f} vs the plan)"
            )
            if not self.running:
                t.append("  │  Enter takes it, Esc closes", "dim")
        self.query_one("#fit-status", Static).update(t)
        self.query_one("#fit-accept", Button).disabled = self.best is None
        self.query_one("#fit-stop", Button).label = "Stop (Esc)" if self.running else "Close (Esc)"

    def _draw(self) -> None:
        plot = self.query_one("#fit-plot", PlotextPlot)
        plt = plot.plt
        plt.clear_figure()
        if self.steps:
            xs = [s.step for s in self.steps]
            fit0, held0 = self.steps[0].fit, self.steps[0].held
            plt.plot(xs, [s.fit - fit0 for s in self.steps], label="fitted part", marker="hd")
            plt.plot(xs, [s.held - held0 for s in self.steps], label="held-out", marker="hd")
            if self.best is not None:
                plt.scatter([self.best.step], [self.best.held - held0], label="best", marker="●")
            plt.xticks(xs if len(xs) <= 10 else xs[:: max(1, len(xs) // 8)])
        plt.xlabel("step")
        plt.title("Δ mean bits per byte since the plan (lower is better)")
        plot.refresh()
        self.query_one("#fit-best", Static).update(self._best_text())

    def _best_text(self):
        if self.best is None:
            return Text("no step yet", style="dim")
        from mergescope.merge.plan.ratio_table import band_label
        from mergescope.tui.format import short_names

        space = self.job.space
        table = self.job.table(self.best.values)
        start = self.job.table(self.start.values) if self.start is not None else table
        grid = Table(box=None, header_style="bold", padding=(0, 1), title=f"best: step {self.best.step}")
        grid.add_column("weight")
        for s in short_names(space.models, 9):
            grid.add_column(s, justify="right")
        for key in table:
            group, band = key
            label = f"{group} {band_label(band)}" if band else ("final norm" if group == "norm" else group)
            cells = [Text(f"{v:.3f}", "bold" if abs(v - s) > 5e-4 else "dim") for v, s in zip(table[key], start[key])]
            grid.add_row(label, *cells)
        per = Text("\nheld-out bits/byte: plan → best\n", "bold")
        for text, v in self.best.per_text.items():
            was = self.start.per_text.get(text, v) if self.start is not None else v
            d = v - was
            per.append(f" {text} {was:.4f} → {v:.4f} ")
            per.append(f"{d:+.4f}\n", "green" if d < 0 else ("red" if d > 0 else ""))
        from rich.console import Group

        return Group(grid, per)

    # -- keys ---------------------------------------------------------------------------------
    def action_stop_or_close(self) -> None:
        if self.running:
            self._stop = True
            self._status()
        else:
            self.dismiss(None)

    def action_accept(self) -> None:
        if self.running:
            self.notify("the fit is running: Esc stops it, then Enter takes the best so far", severity="warning")
            return
        table = self.best_table()
        if table is None:
            self.notify("no step finished: nothing to take", severity="warning")
            return
        self.dismiss(table)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "fit-accept":
            self.action_accept()
        else:
            self.action_stop_or_close()
