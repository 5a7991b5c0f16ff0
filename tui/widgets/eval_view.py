"""The Evaluate tab: held-out texts; a score of the plan (merged in memory) against its base and inputs,
with where it lost against each input; a sweep of the plan editor's cell under the cursor, with its
plot; a greedy soup of the open models. Sweep and soup choose on the selection split and report on the
report split. Everything scrolls in one column, so that an 80×24 terminal shows it whole.

The app hands it the session (`show`) and a running job's result so far (`show_partial`); the view
posts `Run` for a job and computes nothing (the tables are in eval_tables.py).
"""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Label, Static
from textual_plotext import PlotextPlot

from mergescope.tui.format import short_names
from mergescope.tui.plots import MAX_TEXTS, draw_sweep
from mergescope.tui.state.evaluation import SearchResult, default_values, join_paths, parse_paths
from mergescope.tui.widgets.eval_tables import (
    outcome_section,
    pairs_section,
    scores_table,
    soup_steps,
    sweep_table,
)
from mergescope.tui.widgets.inputs import AppInput

KINDS = ("score", "sweep", "soup")
TITLES = {"score": "Score", "sweep": "Sweep", "soup": "Greedy soup"}
KEYS = {"score": "s", "sweep": "w", "soup": "g"}
PLOT_ROWS = 8  # per text plotted: a title, the box, the ticks (as the CLI draws it)
SECTIONS = ("eval-hint", "eval-scores", "eval-sweep-points", "eval-sweep-report", "eval-soup-steps")


class EvalView(Vertical):
    HELP_TITLE = "Evaluate"
    PALETTE_GROUP = "Evaluate"
    DEFAULT_CSS = """
    EvalView { height: 1fr; }
    EvalView .eval-line { height: 1; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    EvalView #eval-toolbar { background: $boost; }
    EvalView .eval-form { height: 1; padding: 0 1; }
    EvalView .eval-form Label { padding: 0 1 0 0; }
    EvalView #eval-texts { width: 1fr; }
    EvalView #eval-target { width: 1fr; height: 1; text-wrap: nowrap; text-overflow: ellipsis; }
    EvalView #eval-values { width: 18; }
    EvalView .eval-form Button { min-width: 9; height: 1; border: none; margin-left: 1; }
    EvalView #eval-results { height: 1fr; padding: 0 1; scrollbar-size-vertical: 1; }
    EvalView #eval-results > Static { height: auto; margin-bottom: 1; }
    EvalView #eval-results > .-empty { display: none; }
    EvalView #eval-results > #eval-sweep-points { margin-bottom: 0; }
    EvalView #eval-plot { height: 8; max-width: 110; margin-bottom: 1; }
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
        yield Static("No analysis yet.", id="eval-toolbar", classes="eval-line")
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
        yield Static("", id="eval-status", classes="eval-line")
        with VerticalScroll(id="eval-results"):
            for wid in SECTIONS:
                yield Static("", id=wid, classes="-empty")
                if wid == "eval-sweep-points":
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
        t.append("merged in memory · bits per byte, lower is better", "dim")
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
    def on_resize(self, _) -> None:
        self._draw()  # the tables pick their width

    def _draw(self) -> None:
        session = self.session
        if session is None or session.report is None:
            return
        results = self.query_one("#eval-results")
        width = results.content_region.width or None
        shown: dict[str, list] = {wid: [] for wid in SECTIONS}
        sweep = None
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
            head = _heading(kind, job, stale, seconds, running)
            if kind == "score":
                shown["eval-scores"] = [head, scores_table(result.scored, job.base, width)]
                shown["eval-scores"] += [Text(""), pairs_section(result.pairs, width)]
                continue
            final = result if isinstance(result, SearchResult) else None
            search = final.search if final else result
            if kind == "sweep":
                shown["eval-sweep-points"] = [head, sweep_table(search, job.now)]
                sweep = (search, stale)
                report = "eval-sweep-report"
            else:
                shown["eval-soup-steps"] = [
                    head,
                    soup_steps(search if isinstance(search, list) else search.steps, width),
                ]
                report = "eval-soup-steps"
            if final is not None:
                shown[report] += [*([Text("")] if kind == "soup" else []), outcome_section(final, width)]
            elif running:
                shown[report] += [Text("then the report split…", style="dim italic")]
        if not any(shown.values()):
            shown["eval-hint"] = [
                Text(
                    "Nothing scored for this plan yet: s scores it, w sweeps the plan editor's cell over the values, "
                    "g runs a greedy soup of the open models.",
                    style="dim",
                )
            ]
        for wid, parts in shown.items():
            static = self.query_one(f"#{wid}", Static)
            static.set_class(not parts, "-empty")
            static.update(Group(*parts) if parts else "")
        self._plot(sweep)

    def _plot(self, sweep) -> None:
        """The sweep's plot under its table, drawn as the CLI draws it: one small plot per text, each
        at least PLOT_ROWS rows high (the column scrolls, so small terminals keep them readable)."""
        plot = self.query_one("#eval-plot", PlotextPlot)
        plot.display = sweep is not None
        if sweep is None:
            return
        result, stale = sweep
        plot.styles.height = PLOT_ROWS * len(result.texts[:MAX_TEXTS])
        plot.plt.clear_figure()
        draw_sweep(plot.plt, result, stale)
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
