"""The Evaluate tab: held-out texts; a score of the plan (merged in memory) against its base and inputs;
a sweep of the plan editor's cell under the cursor, with its plot; a greedy soup of the open models.

The app hands it the session (`show`) and a running job's result so far (`show_partial`); the view
posts `Run` for a job and computes nothing.
"""

from __future__ import annotations

from rich.console import Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Label, Static
from textual_plotext import PlotextPlot

from mergescope.tui.format import display_names, short_names
from mergescope.tui.state.evaluation import PLAN_ROW, default_values, join_paths, parse_paths
from mergescope.tui.widgets.inputs import AppInput

KINDS = ("score", "sweep", "soup")
TITLES = {"score": "Score", "sweep": "Sweep", "soup": "Greedy soup"}
KEYS = {"score": "s", "sweep": "w", "soup": "g"}
MARKERS = ("braille", "•", "+", "x", "*", "o")  # told apart without colour
MAX_PLOTS = 4  # texts plotted, one above the other
UNIT = "bits per byte, lower is better"


class EvalView(Vertical):
    HELP_TITLE = "Evaluate"
    PALETTE_GROUP = "Evaluate"
    DEFAULT_CSS = """
    EvalView { height: 1fr; }
    EvalView #eval-toolbar { height: auto; padding: 0 1; background: $boost; }
    EvalView .eval-form { height: auto; padding: 0 1; }
    EvalView .eval-form Label { padding: 0 1 0 0; }
    EvalView #eval-texts { width: 1fr; }
    EvalView #eval-target { width: 1fr; height: 1; }
    EvalView #eval-values { width: 20; }
    EvalView .eval-form Button { min-width: 10; height: 1; border: none; margin-left: 1; }
    EvalView #eval-status { height: auto; padding: 0 1; }
    EvalView #eval-body { height: 1fr; }
    EvalView #eval-results { width: 1fr; padding: 0 1; }
    EvalView #eval-results.-beside { max-width: 70%; }
    EvalView #eval-plot { width: 1fr; display: none; border-left: vkey $primary 50%; }
    EvalView #eval-plot.-shown { display: block; }
    """
    BINDINGS = [
        Binding("s", "run('score')", "score the plan", tooltip="score the plan, its base and inputs", id="eval.score"),
        Binding(
            "w",
            "run('sweep')",
            "sweep the cell",
            tooltip="sweep the plan editor's cell over the values",
            id="eval.sweep",
        ),
        Binding("g", "run('soup')", "greedy soup", tooltip="greedy soup of the open models", id="eval.soup"),
        Binding("t", "focus_field('eval-texts')", "edit texts", tooltip="edit the held-out texts", id="eval.texts"),
        Binding("r", "focus_field('eval-values')", "edit sweep values", id="eval.values"),
    ]

    class Run(Message):
        """Start a job: "score", "sweep" or "soup" (the app builds and runs it)."""

        def __init__(self, kind: str) -> None:
            super().__init__()
            self.kind = kind

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.session = None
        self._values: dict[str, str] = {}  # the values field per parameter, as the user left it
        self._param: str | None = None
        self._job = None  # the EvalJob under way
        self._so_far = None  # its result so far
        self._texts_set = False

    def compose(self) -> ComposeResult:
        yield Static("No analysis yet.", id="eval-toolbar")
        with Horizontal(classes="eval-form"):
            yield Label("texts")
            yield AppInput("", id="eval-texts", compact=True, placeholder="held-out text files, space-separated")
            yield Button("Score s", id="eval-score")
            yield Button("Sweep w", id="eval-sweep")
            yield Button("Soup g", id="eval-soup")
        with Horizontal(classes="eval-form"):
            yield Static("", id="eval-target")
            yield Label("values")
            yield AppInput("", id="eval-values", compact=True, placeholder="start:stop:step or a,b,c")
        yield Static("", id="eval-status")
        with Horizontal(id="eval-body"):
            with VerticalScroll(id="eval-results"):
                yield Static("", id="eval-tables")
            yield PlotextPlot(id="eval-plot")

    # -- what the app hands down ----------------------------------------------------------------
    @property
    def text_paths(self) -> list[str]:
        return parse_paths(self.query_one("#eval-texts", AppInput).value)

    @property
    def values(self) -> str:
        return self.query_one("#eval-values", AppInput).value.strip()

    def show(self, session, target=None, problem: str | None = None) -> None:
        """The session's plan and results; `target` is the plan editor's cell a sweep varies (None with
        `problem`: why there is none)."""
        self.session = session
        if not self._texts_set:
            self._texts_set = True
            self.query_one("#eval-texts", AppInput).value = join_paths(session.texts)
        state = session.plan_state
        if state is None:
            return
        self._toolbar(session)
        t = Text("sweep ", style="bold")
        if target is not None:
            t.append(target.label(state))
            t.append("  (the cursor in plan e)", "dim")
        else:
            t.append(problem or "no table cell", "yellow")
        self.query_one("#eval-target", Static).update(t)
        param = target.param if target is not None else None
        if param is not None and param != self._param:
            self._param = param
            self.query_one("#eval-values", AppInput).value = self._values.get(param) or default_values(state, param)
        self._draw()

    def _toolbar(self, session) -> None:
        st = session.plan_state
        t = Text()
        t.append("plan ", "dim")
        t.append(st.method, "bold cyan")
        t.append(" · " + (" + ".join(short_names([st.models[i] for i in st.chosen()], 14)) or "nothing"), "bold")
        t.append("  │  ", "dim")
        t.append("bits/byte, lower is better · plans merged in memory", "dim")
        self.query_one("#eval-toolbar", Static).update(t)

    def started(self, job) -> None:
        self._job, self._so_far = job, None
        verb = {"score": "scoring the plan", "sweep": f"sweeping {job.what}", "soup": f"greedy soup of {job.what}"}
        self.status(Text(f"{verb[job.kind]} on {', '.join(job.texts)}…  Esc cancels", style="bold"))
        self._draw()

    def show_partial(self, job, partial) -> None:
        if job is self._job:
            self._so_far = partial
            self._draw()

    def finished(self, job, seconds: float, text: str) -> None:
        if job is self._job:
            self._job, self._so_far = None, None
        self.status(Text(f"✔ {text} in {seconds:.1f} s", style="green"))

    def stopped(self, text: str, style: str = "yellow") -> None:
        self._job, self._so_far = None, None
        self.status(Text(text, style=style))
        self._draw()

    def status(self, text: Text | str) -> None:
        self.query_one("#eval-status", Static).update(text)

    # -- drawing ----------------------------------------------------------------------------------
    def _draw(self) -> None:
        session = self.session
        if session is None or session.report is None:
            return
        parts, sweep = [], None
        plan_key = session.eval_key("score")  # the plan's YAML: built once, not once per kind
        keys = {"score": plan_key, "sweep": plan_key, "soup": session.eval_key("soup")}
        for kind in KINDS:
            running = self._job is not None and self._job.kind == kind
            if running:
                if self._so_far is None:
                    continue
                job, result, stale, seconds = self._job, self._so_far, False, None
            else:
                entry, stale = session.evals.get(kind, keys[kind], session.texts)
                if entry is None:
                    continue
                job, result, seconds = entry.job, entry.result, entry.seconds
            parts.append(_heading(kind, job, stale, seconds, running))
            if kind == "score":
                parts.append(score_table(result, job.base))
            elif kind == "sweep":
                parts.append(sweep_table(result, job.now))
                sweep = (job, result, stale)
            else:
                parts.extend(soup_lines(result))
            parts.append(Text(""))
        if not parts:
            parts = [
                Text(
                    "Nothing scored for this plan yet: s scores it, w sweeps the plan editor's cell over the values, "
                    "g runs a greedy soup of the open models.",
                    style="dim",
                )
            ]
        self.query_one("#eval-tables", Static).update(Group(*parts))
        self._plot(sweep)
        # beside a plot, the tables take what they need and the plot the rest
        need = max(Measurement.get(self.app.console, self.app.console.options, p).maximum for p in parts) + 3
        results = self.query_one("#eval-results")
        results.set_class(sweep is not None, "-beside")
        results.styles.width = need if sweep else "1fr"

    def _plot(self, sweep) -> None:
        """One small plot per text (each on its own scale: texts differ by more than a sweep moves
        them), the best point of each marked ✱ as in the table."""
        plot = self.query_one("#eval-plot", PlotextPlot)
        plot.set_class(sweep is not None, "-shown")
        if sweep is None:
            return
        job, result, stale = sweep
        plt = plot.plt
        plt.clear_figure()
        texts = result.texts[:MAX_PLOTS]
        plt.subplots(len(texts), 1)
        for k, name in enumerate(texts):
            sub = plt.subplot(k + 1, 1)
            i = result.best(name)
            best = result.values[i]
            sub.plot(result.values, [row[name].value for row in result.scores], marker=MARKERS[k % len(MARKERS)])
            sub.scatter([best], [result.scores[i][name].value], marker="✱", color="red")
            sub.xticks(result.values, [f"{v:g}" for v in result.values])
            sub.title(f"{name}: best {result.param} = {best:g}" + ("  (stale)" if stale else ""))
            if k == len(texts) - 1:
                sub.xlabel(f"{result.param} · bits per byte")
        plot.refresh()

    # -- actions and events -----------------------------------------------------------------------
    def action_run(self, kind: str) -> None:
        self.post_message(self.Run(kind))

    def action_focus_field(self, wid: str) -> None:
        self.query_one(f"#{wid}").focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.Run(event.button.id.removeprefix("eval-")))

    def on_input_submitted(self, event: AppInput.Submitted) -> None:
        event.stop()
        self.post_message(self.Run("sweep" if event.input.id == "eval-values" else "score"))

    def on_input_changed(self, event: AppInput.Changed) -> None:
        event.stop()
        if event.input.id == "eval-values" and self._param is not None:
            self._values[self._param] = event.value.strip()


def _heading(kind: str, job, stale: bool, seconds: float | None, running: bool) -> Text:
    t = Text()
    t.append(TITLES[kind], "bold underline")
    if job.what:
        t.append(f"  {job.what}", "bold")
    if running:
        t.append("  running…", "italic")
    elif stale:
        t.append(f"  stale: for another plan or other texts ({KEYS[kind]} recomputes)", "yellow")
    elif seconds is not None:
        t.append(f"  {seconds:.1f} s", "dim")
    if job.note:
        t.append(f"\n{job.note}", "dim")
    return t


def _mean(row) -> float:
    return sum(s.value for s in row.values()) / len(row)


def _best(values: list[float], higher: bool) -> float:
    return max(values) if higher else min(values)


def score_table(rows, base: str | None = None) -> Table:
    """Models × texts with the mean; the best of each column in bold."""
    texts = list(next(iter(rows.values())))
    higher = next(iter(next(iter(rows.values())).values())).higher_is_better
    refs = [r for r in rows if r != PLAN_ROW]
    shown = display_names(refs)
    t = Table(box=None, header_style="bold", padding=(0, 1), caption=UNIT, caption_justify="left")
    t.add_column("model", no_wrap=True)
    for name in [*texts, "mean"]:
        t.add_column(name, justify="right")
    cols = {n: [row[n].value for row in rows.values()] for n in texts}
    cols["mean"] = [_mean(row) for row in rows.values()]
    best = {n: _best(v, higher) for n, v in cols.items()}
    for i, ref in enumerate(rows):
        label = "plan (merged)" if ref == PLAN_ROW else shown[ref]
        if ref == base and label != "base":
            label += " (base)"
        cells = [Text(f"{cols[n][i]:.4f}", style="bold" if cols[n][i] == best[n] else "") for n in cols]
        t.add_row(Text(label, style="bold cyan" if ref == PLAN_ROW else ""), *cells)
    return t


def sweep_table(result, now: float | None) -> Table:
    """Value × texts with the mean; ✱ and bold mark the best of each column, ◂ the plan's value."""
    multi = len(result.texts) > 1
    t = Table(box=None, header_style="bold", padding=(0, 1))
    t.add_column(result.param, justify="right", no_wrap=True)
    for name in [*result.texts, *(["mean"] if multi else [])]:
        t.add_column(name, justify="right")
    best = {n: result.best(n) for n in result.texts}
    best_mean = result.best()
    for i, (v, row) in enumerate(zip(result.values, result.scores)):
        cells = [_marked(row[n].value, best[n] == i) for n in result.texts]
        if multi:
            cells.append(_marked(_mean(row), best_mean == i))
        mark = " ◂" if now is not None and abs(v - now) < 1e-9 else "  "
        t.add_row(Text(f"{v:g}{mark}", style="bold" if best_mean == i else ""), *cells)
    return t


def _marked(value: float, best: bool) -> Text:
    return Text(f"{value:.4f} ✱" if best else f"{value:.4f}  ", style="bold" if best else "")


def soup_lines(result) -> list[Text]:
    """One line per step (start / added / rejected: the model alone, the soup with it; mean bits per
    byte), then the outcome against the best single model."""
    steps = result if isinstance(result, list) else result.steps
    names = dict(zip([s.model for s in steps], short_names([s.model for s in steps], 14)))
    styles = {"start": "bold", "added": "green", "rejected": "yellow"}
    lines = []
    for s in steps:
        t = Text(f"{s.action:>8} ", style=styles[s.action])
        t.append(f"{names[s.model]:<14} alone {_mean(s.own):.4f}")
        if s.action != "start":
            t.append(f"  soup of {len(s.kept) + (s.action == 'rejected')}: {_mean(s.soup):.4f}")
        lines.append(t)
    if not isinstance(result, list):
        single = min(_mean(s.own) for s in steps)
        soup = _mean(result.score)
        verdict = "better than" if soup < single else ("as good as" if soup == single else "worse than")
        lines.append(Text(f"soup of {len(result.kept)}: {soup:.4f}, {verdict} the best single model ({single:.4f})"))
    return lines
