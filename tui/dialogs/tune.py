"""Tune the plan editor's table: a panel that runs the trials in a worker (mergescope.search.tune through
`tuning.run`), plots each trial's score and the best so far, and shows the best table.

Esc stops a running search cleanly (the trials finished are kept); Enter takes the best table into the
editor (the panel is dismissed with it); Esc on a finished or stopped panel closes it and changes
nothing. The worker only posts messages; the panel draws.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static
from textual.worker import Worker, WorkerState, get_current_worker
from textual_plotext import PlotextPlot

from mergescope.tui.state.tuning import TuneJob


class TuneScreen(ModalScreen[dict | None]):
    """Dismissed with the best table ({(group, band): [value per plan model]}) on Enter, else None."""

    HELP_TITLE = "Tune the table"
    PALETTE_GROUP = "Tune"
    DEFAULT_CSS = """
    TuneScreen { align: center middle; }
    TuneScreen > Vertical { width: 110; max-width: 98%; height: 90%; border: thick $primary;
        background: $surface; padding: 0 1; }
    TuneScreen .title { text-style: bold; }
    TuneScreen #tune-status { height: auto; }
    TuneScreen #tune-body { height: 1fr; }
    TuneScreen #tune-plot { width: 1fr; }
    TuneScreen #tune-best { width: 44; padding: 0 1; }
    TuneScreen #tune-buttons { height: auto; }
    TuneScreen Button { margin-right: 2; }
    """
    BINDINGS = [
        Binding(
            "escape", "stop_or_close", "stop / close", tooltip="stop the search, or close the panel", id="tune.stop"
        ),
        Binding("enter", "accept", "take the best table", id="tune.accept", priority=True),
    ]

    class Trial(Message):
        def __init__(self, rec) -> None:
            super().__init__()
            self.rec = rec

    class Finished(Message):
        def __init__(self, result) -> None:
            super().__init__()
            self.result = result

    def __init__(self, job: TuneJob, seed: int | None = None) -> None:
        super().__init__()
        self.job = job
        self.seed = seed
        self.trials: list = []  # TrialRecords as they end
        self.result = None  # the TuneResult once the worker is done
        self.running = True
        self._stop = False
        self.worker: Worker | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Tune the table: {self.job.what}", classes="title")
            yield Static("", id="tune-status")
            with Horizontal(id="tune-body"):
                yield PlotextPlot(id="tune-plot")
                yield Static("", id="tune-best")
            with Horizontal(id="tune-buttons"):
                yield Button("Take the best (Enter)", variant="primary", id="tune-accept", disabled=True)
                yield Button("Stop (Esc)", id="tune-stop")

    def on_mount(self) -> None:
        self._status()
        self.worker = self.search()

    # -- the worker ---------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="tune", exit_on_error=False, name="tune", description="tune")
    def search(self) -> None:
        from mergescope.tui.state.tuning import run

        worker = get_current_worker()
        result = run(
            self.job,
            should_stop=lambda: self._stop or worker.is_cancelled,
            log=lambda rec: self.post_message(self.Trial(rec)),
            seed=self.seed,
        )
        self.post_message(self.Finished(result))

    def on_tune_screen_trial(self, message: Trial) -> None:
        self.trials.append(message.rec)
        self._status()
        self._draw()

    def on_tune_screen_finished(self, message: Finished) -> None:
        self.result = message.result
        self.running = False
        self._status()
        self._draw()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self.worker or event.state != WorkerState.ERROR:
            return
        self.running = False
        exc = event.worker.error
        self._status(Text(f"✖ tune failed: {exc}", style="red"))

    # -- what it shows ------------------------------------------------------------------------
    def best(self):
        """The best complete trial so far (None before the first)."""
        done = [t for t in self.trials if t.state == "complete" and t.value is not None]
        if not done:
            return None
        higher = self.job.scorer.higher_is_better
        return sorted(done, key=lambda t: (-t.value if higher else t.value, t.number))[0]

    def best_table(self) -> dict | None:
        best = self.best()
        return None if best is None else self.job.best_table(best.params)

    def _status(self, override: Text | None = None) -> None:
        n, total = len(self.trials), self.job.n_trials
        best = self.best()
        if override is not None:
            t = override
        elif self.running and self._stop:
            t = Text(f"stopping after the trial in flight… ({n}/{total} trials)", style="yellow")
        elif self.running:
            t = Text(f"trial {n + 1}/{total} running…  Esc stops (the best so far is kept)", style="bold")
        elif self.result is not None and self.result.stopped:
            t = Text(f"stopped after {n}/{total} trials", style="yellow")
        else:
            t = Text(f"✔ {n}/{total} trials done", style="green")
        if best is not None:
            t.append(f"  │  best: trial {best.number}, {best.value:.4f} bits/byte (lower is better)")
            if not self.running:
                t.append("  │  Enter takes it, Esc closes", "dim")
        elif not self.running:
            t.append("  │  no trial finished: Esc closes", "dim")
        self.query_one("#tune-status", Static).update(t)
        self.query_one("#tune-accept", Button).disabled = best is None
        self.query_one("#tune-stop", Button).label = "Stop (Esc)" if self.running else "Close (Esc)"

    def _draw(self) -> None:
        done = sorted((t for t in self.trials if t.state == "complete" and t.value is not None), key=lambda t: t.number)
        plot = self.query_one("#tune-plot", PlotextPlot)
        plt = plot.plt
        plt.clear_figure()
        if done:
            xs, ys = [t.number for t in done], [t.value for t in done]
            pick = max if self.job.scorer.higher_is_better else min
            plt.scatter(xs, ys, label="trial", marker="•")
            plt.plot(xs, [pick(ys[: i + 1]) for i in range(len(ys))], label="best so far", marker="braille")
            plt.xticks(xs if len(xs) <= 10 else xs[:: max(1, len(xs) // 8)])
        plt.xlabel("trial")
        plt.title("bits per byte per trial")
        plot.refresh()
        self.query_one("#tune-best", Static).update(self._best_text())

    def _best_text(self):
        best = self.best()
        if best is None:
            return Text("no trial finished yet", style="dim")
        from mergescope.merge.plan.ratio_table import band_label
        from mergescope.tui.format import short_names

        table = self.job.best_table(best.params)
        space = self.job.space
        t = Table(box=None, header_style="bold", padding=(0, 1), title=f"best: trial {best.number}")
        t.add_column(self.job.param)
        for s in short_names(space.models, 10):
            t.add_column(s, justify="right")
        for key in dict.fromkeys(d.key for d in space.dims):
            group, band = key
            label = f"{group} {band_label(band)}" if band else ("final norm" if group == "norm" else group)
            t.add_row(label, *(f"{v:.3f}" for v in table[key]))
        return t

    # -- keys ---------------------------------------------------------------------------------
    def action_stop_or_close(self) -> None:
        if self.running:
            self._stop = True
            self._status()
        else:
            self.dismiss(None)

    def action_accept(self) -> None:
        if self.running:
            self.notify("the search is running: Esc stops it, then Enter takes the best so far", severity="warning")
            return
        table = self.best_table()
        if table is None:
            self.notify("no trial finished: nothing to take", severity="warning")
            return
        self.dismiss(table)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "tune-accept":
            self.action_accept()
        else:
            self.action_stop_or_close()
