"""The Evaluate tab: score the plan in memory against its base and inputs (intervals, the plan against
each input, the passages where it lost), sweep the plan editor's cell with its plot and a greedy soup of
the open models (chosen on the selection split, reported on the report split), Esc, bad texts, results
kept per plan; snapshots at 120×40 and 80×24.

Tiny byte-level Llamas (vocab 256, no tokenizer files) and two short texts keep every job under a
second; the demo is only checked for the texts it preselects.
"""

from __future__ import annotations

import types

import pytest
from textual.worker import WorkerFailed

from mergescope.io.progress import Cancelled
from mergescope.stats.readiness import analyze
from mergescope.tui.app import MergeScopeApp
from mergescope.tui.dialogs.error import ErrorDialog
from mergescope.tui.state.evaluation import PLAN_ROW, EvalStore, Meter, default_values
from mergescope.tui.widgets.eval_view import EvalView
from tests.ckpt_utils import make_finetune, make_llama

SIZE = (120, 40)
SAMPLE = {"method": "task_arithmetic", "models": ["ft0", "ft1"], "weight": 1.0}
TEXTS = {
    "a": b"def add(a, b):\n    return a + b\n\n" * 12,
    "b": b"".join(
        f"The river ran {w} past the mill, and the miller watched it for {k} hours.\n\n".encode()
        for k, w in enumerate(["slowly", "fast", "high", "low", "cold", "dark", "clear", "wide"])
    ),
}


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    """base, three fine-tunes, a model of another base (left out of soups), and the texts: names
    relative to the returned directory."""
    root = tmp_path_factory.mktemp("evalfam")
    base = make_llama(root / "base", n_layers=2, hidden=16, vocab=256, seed=0)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (base / f).unlink(missing_ok=True)
    for i in range(3):
        make_finetune(base, root / f"ft{i}", scale=0.004 * (i + 1), seed=i + 1)
    make_llama(root / "other", n_layers=2, hidden=16, vocab=256, seed=9)
    for name, data in TEXTS.items():
        (root / f"{name}.txt").write_bytes(data)
    return root


@pytest.fixture
def here(fam, monkeypatch):
    monkeypatch.chdir(fam)
    return fam


def app_for(models=("ft0", "ft1", "ft2"), **kw) -> MergeScopeApp:
    kw.setdefault("sample_plan", SAMPLE)
    return MergeScopeApp("base", list(models), blink=False, remember_set=False, texts=["a.txt", "b.txt"], **kw)


async def ready(app, pilot) -> None:
    for _ in range(2):
        try:
            await app.workers.wait_for_complete()
        except WorkerFailed:
            pass
        await pilot.pause(0.15)  # the debounced what-if
    await pilot.pause()


def plain(widget) -> str:
    """What a user reads in a Static (its content) or a plot (its rendering)."""
    import io

    from rich.console import Console
    from textual.widgets import Static

    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(widget.content if isinstance(widget, Static) else widget.render())
    return console.file.getvalue()


def entry(app, kind: str):
    return app.session.evals.get(kind, app.session.eval_key(kind), app.session.texts)


# ---- the parts ---------------------------------------------------------------------------------
def test_default_sweep_ranges_come_from_the_spec():
    from mergescope.tui.state.plan_state import PlanState

    st = PlanState("base", ["a", "b"], 2, method="ties")
    assert default_values(st, "weight") == "0:1.5:0.25"
    assert default_values(st, "density") == "0.1:1:0.1"


def test_meter_counts_phases_across_restarts():
    seen = []
    m = Meter(4, lambda done, total, label: seen.append((done, total, label)))
    m.begin("one")
    m(0, 100, "merge")
    m(100, 100, "merge")
    m(5, 10, "score")  # a new total: the scoring phase
    m.begin("two")
    m(5, 10, "score")  # same total, but a new candidate
    assert [d for d, _, _ in seen] == [0.0, 1.0, 1.5, 2.5]
    assert seen[-1][1:] == (4, "two · score")


def test_store_marks_the_latest_stale_for_another_plan():
    from mergescope.tui.state.evaluation import EvalEntry, EvalJob

    store = EvalStore(limit=2)
    e1 = EvalEntry(EvalJob("score", "plan-1", ("a.txt",)), {}, 1.0)
    store.put(e1)
    assert store.get("score", "plan-1", ["a.txt"]) == (e1, False)
    assert store.get("score", "plan-2", ["a.txt"]) == (e1, True)
    assert store.get("score", "plan-1", ["b.txt"]) == (e1, True)
    assert store.get("sweep", "plan-1", ["a.txt"]) == (None, False)
    for k in range(3):
        store.put(EvalEntry(EvalJob("score", f"p{k}", ("a.txt",)), {}, 1.0))
    assert store.get("score", "plan-1", ["a.txt"])[1]  # dropped: bounded


def _score(values, seed: int):
    """A bits-per-byte score with per-passage units (what an interval resamples)."""
    import random

    from mergescope.score.result import Score

    rng = random.Random(seed)
    num = tuple(v * 100 + rng.uniform(-5, 5) for v in values)
    den = (100.0,) * len(values)
    return Score(sum(num) / sum(den), False, 1.0, 10, 100 * len(values), None, num, den, tuple(range(len(values))))


def test_score_tables_bold_the_best_and_fit_80_columns():
    from rich.console import Console
    from rich.measure import Measurement

    from mergescope.tui.state.evaluation import Scored
    from mergescope.tui.widgets.eval_tables import scores_table

    texts = ["code", "dialog", "prose"]
    rows = {
        PLAN_ROW: {t: _score([2.0 + k] * 12, k) for k, t in enumerate(texts)},
        "base": {t: _score([2.1 + k] * 12, k + 5) for k, t in enumerate(texts)},
        "code": {t: _score([1.9 + k * 1.1] * 12, k + 9) for k, t in enumerate(texts)},
    }
    scored = Scored.of(rows, "whole texts")
    console = Console(width=200)
    widths = []
    for width, sep in ((120, " ± "), (72, "±")):  # too wide for 72 columns: the compact form
        group = scores_table(scored, "base", width)
        table = group.renderables[1]
        widths.append(Measurement.get(console, console.options, table).maximum)
        assert widths[-1] <= width
        for col in table.columns[1:]:
            cells = list(col._cells)
            values = [float(c.plain.split("±")[0]) for c in cells]
            assert all(sep in c.plain for c in cells)
            assert [c.style == "bold" for c in cells] == [v == min(values) for v in values]
    assert widths[0] > 72 > widths[1]
    assert "on the whole texts" in group.renderables[0].plain


def test_demo_preselects_its_held_out_texts():
    from mergescope.demo import heldout_dir
    from mergescope.tui.cli import build_parser
    from mergescope.tui.commands.demo import build_app

    app = build_app()
    assert sorted(p.rsplit("/", 1)[-1] for p in app.session.texts) == sorted(
        p.name for p in heldout_dir().glob("*.txt")
    )
    args = build_parser().parse_args(["ui", "base", "ft0", "--eval-text", "a.txt", "b.txt"])
    assert args.eval_text == ["a.txt", "b.txt"]


# ---- the tab -----------------------------------------------------------------------------------


def body(view) -> str:
    """Everything the tab's results column shows, as a user reads it."""
    return "\n".join(plain(w) for w in view.query("#eval-results > Static") if w.display)


def pm(value, iv) -> str:
    return f"{value:.4f} ± {iv.half:.3f}"


@pytest.mark.asyncio
async def test_score_shows_intervals_and_where_the_plan_lost(here):
    from mergescope.score.stats import interval, reduced, verdict
    from mergescope.tui.state.evaluation import ScoreResult

    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("u")
        await pilot.pause()
        view = app.main.query_one(EvalView)
        assert view.text_paths == ["a.txt", "b.txt"]
        await pilot.press("s")
        await ready(app, pilot)
        got, stale = entry(app, "score")
        assert not stale and isinstance(got.result, ScoreResult)
        rows = got.result.scored.rows
        assert list(rows) == [PLAN_ROW, "base", "ft0", "ft1"]
        assert all(set(row) == {"a", "b"} for row in rows.values())
        text = body(view)
        for word in ("Score", "plan (merged)", "base", "ft0", "ft1", "mean", "bits per byte", "whole texts"):
            assert word in text
        # every score with the half-width of its own 95 % interval; the mean with the objective's
        for row in rows.values():
            for score in row.values():
                iv = interval(score)
                assert iv is not None and iv.lo < score.value < iv.hi
                assert pm(score.value, iv) in text
            mean = reduced(row, lambda v: (v["a"] + v["b"]) / 2)
            assert pm(mean.value, mean) in text
        # the plan against each input (not the base), per text, with the paired verdict
        pairs = got.result.pairs
        assert [(p.text, p.parent) for p in pairs] == [("a", "ft0"), ("a", "ft1"), ("b", "ft0"), ("b", "ft1")]
        assert "The plan against each input" in text and "plan − input" in text
        for p in pairs:
            assert p.diff is not None and p.verdict == verdict(p.diff)
            assert len(p.passages) == {"a": 12, "b": 8}[p.text]  # blank-line paragraphs of the texts
            assert f"{p.diff.value:+.4f} [{p.diff.lo:+.4f}, {p.diff.hi:+.4f}]" in text
            assert f"{len(p.regressed)}/{len(p.passages)} ({p.regressed_share:.0%})" in text
        lines = text.splitlines()
        for parent in ("ft0", "ft1"):
            worst = sorted(
                ((q, p.text) for p in pairs if p.parent == parent for q in p.passages if q.bits > 0),
                key=lambda x: -x[0].bits,
            )
            k = lines.index(next(x for x in lines if x.startswith(f"lost most against {parent}")))
            if not worst:
                assert "no passage got worse" in lines[k]
                continue
            q, t = worst[0]
            assert lines[k + 1].split()[:5] == [f"{q.delta:+.3f}", "×", str(q.bytes), "B", t]
            assert f"#{q.index}" in lines[k + 1] and q.snippet[:40] in lines[k + 1]
        assert "scored the plan and 3 model(s)" in plain(view.query_one("#eval-status"))


@pytest.mark.asyncio
async def test_sweep_chooses_on_selection_and_reports_on_the_rest(here):
    from mergescope.tui.state.evaluation import SearchResult

    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("e", "down")  # the L0 row, "all" column, weight of ft0
        await ready(app, pilot)
        await pilot.press("u")
        await pilot.pause()
        view = app.main.query_one(EvalView)
        assert "weight of ft0 at L0" in plain(view.query_one("#eval-target"))
        assert view.values == "0:1.5:0.25"  # from the parameter's spec
        view.query_one("#eval-values").value = "0,0.5,1"
        await pilot.press("w")
        await ready(app, pilot)
        got, stale = entry(app, "sweep")
        assert not stale and isinstance(got.result, SearchResult)
        result, out = got.result.search, got.result.outcome
        assert result.values == [0.0, 0.5, 1.0] and result.param == "weight" and result.outcome is out
        # only ft0's parameters change from point to point; at the plan's own value it is the plan
        plans = got.job.plans
        assert plans[0].models[1].parameters == plans[2].models[1].parameters
        assert plans[0].models[0].parameters != plans[2].models[0].parameters
        assert plans[2].to_yaml() == app.session.current_plan().to_yaml()
        # chosen on the selection split, reported on the rest: together they cover each text once
        best = result.values[result.best()]
        assert out.chosen == f"weight = {best:g}" and out.reference == "the plan (weight = 1)"
        for t, data in TEXTS.items():
            sel = result.scores[0][t].n_bytes + 1  # the first token is never predicted
            rep = out.rows[out.reference][t].n_bytes + 1
            assert sel + rep == len(data) and rep < sel
        text = body(view)
        assert "Sweep" in text and "✱" in text and "◂" in text
        assert "on the selection (first 75% of each text, used to choose)" in text
        assert "on the report (last 25% of each text, not used to choose)" in text
        assert out.summary() in " ".join(text.split())
        assert f"best weight = {best:g} on the selection split" in plain(view.query_one("#eval-status"))
        if out.verdict != "same candidate":
            assert out.verdict in ("better", "worse", "within noise") and out.diff is not None
            assert f"{out.diff.value:+.4f} [{out.diff.lo:+.4f}, {out.diff.hi:+.4f}]" in text
            for label in (out.chosen, out.reference):
                iv = out.interval(label)
                assert pm(out.value(label), iv) in text
        # the plot under the table, one panel per text, each several rows high
        plot = view.query_one("#eval-plot")
        assert plot.display and plot.region.height >= 16 and plot.region.width > 60
        assert f"best weight = {result.values[result.best('a')]:g}" in plot.render().plain
        await pilot.press("h")  # away and back: drawn again
        await ready(app, pilot)
        await pilot.press("u")
        await ready(app, pilot)
        assert plot.display and body(view) == text


@pytest.mark.asyncio
async def test_greedy_soup_lists_its_steps_with_their_intervals(here, monkeypatch):
    from mergescope.score.stats import verdict

    seen = []
    shown = EvalView.show_partial

    def spy(self, job, partial):
        seen.append([s.action for s in partial])
        shown(self, job, partial)

    monkeypatch.setattr(EvalView, "show_partial", spy)
    app = app_for(models=("ft0", "ft1", "ft2", "other"))
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("u", "g")
        await ready(app, pilot)
        got, _ = entry(app, "soup")
        soup, out = got.result.search, got.result.outcome
        assert [s.model for s in soup.steps] and "other" not in [s.model for s in soup.steps]
        assert len(soup.steps) == 3 and seen[-1] == [s.action for s in soup.steps]
        assert [len(s) for s in seen] == [1, 2, 3] and seen[0] == ["start"]
        text = body(app.main.query_one(EvalView))
        assert "left out: other: different-base" in text and "start" in text
        assert "on the selection (first 75% of each text, used to choose)" in text
        assert "on the report (last 25% of each text, not used to choose)" in text
        for step in soup.steps[1:]:  # every step's change with its interval and verdict
            g = step.gain
            assert g is not None and step.noise == verdict(g)
            line = next(x for x in text.splitlines() if f"{g.value:+.4f} [{g.lo:+.4f}, {g.hi:+.4f}]" in x)
            assert step.action in line and step.noise in line
        first = soup.steps[0].model
        assert out.reference == f"best single ({first})" and out.chosen == f"greedy soup of {len(soup.kept)}"
        assert out.summary() in " ".join(text.split())
        if len(soup.kept) == 1:
            assert out.verdict == "same candidate" and "nothing beat it" in text


@pytest.mark.asyncio
@pytest.mark.parametrize("key", ["w", "g"])
async def test_a_text_too_short_to_split_is_one_error_dialog(here, tmp_path, key):
    short = tmp_path / "short.txt"
    short.write_bytes(b"x")
    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("e", "down")
        await ready(app, pilot)
        await pilot.press("u")
        await pilot.pause()
        app.main.query_one("#eval-texts").value = f"a.txt {short}"
        await pilot.press(key)
        await pilot.pause()
        assert isinstance(app.screen, ErrorDialog) and not app.running_jobs()
        assert "too short to split" in plain(app.screen.query_one("#error-message"))


@pytest.mark.asyncio
async def test_escape_cancels_an_evaluation(here, monkeypatch):
    import time

    import mergescope.score.candidate as scorers

    started = []

    def slow_plan(self, plan, label="plan"):
        started.append(True)
        for k in range(2000):
            if self.should_stop():
                raise Cancelled()
            self.progress(k, 2000, f"{k}/2000")
            time.sleep(0.005)
        raise AssertionError("not cancelled")

    monkeypatch.setattr(scorers.Scorer, "plan", slow_plan)
    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("u", "w")
        for _ in range(100):
            await pilot.pause(0.02)
            if started:
                break
        await pilot.pause(0.1)
        assert app.running_jobs()
        bar = app.main.query_one("#job-progress")
        assert bar.has_class("-running") and "sweep" in plain(bar.query_one("#job-stats"))
        await pilot.press("escape")
        await ready(app, pilot)
        assert not app.running_jobs() and not bar.has_class("-running")
        assert entry(app, "sweep") == (None, False)
        assert "cancelled" in plain(app.main.query_one("#eval-status"))
        assert not isinstance(app.screen, ErrorDialog)


@pytest.mark.asyncio
@pytest.mark.parametrize("content, needle", [(None, "no such file"), (b"  \n", "is empty")])
async def test_a_bad_text_file_is_one_error_dialog(here, tmp_path, content, needle):
    bad = tmp_path / "held-out.txt"
    if content is not None:
        bad.write_bytes(content)
    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("u")
        await pilot.pause()
        app.main.query_one("#eval-texts").value = f"a.txt {bad}"
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, ErrorDialog)
        message = plain(app.screen.query_one("#error-message")).strip()
        assert needle in message and str(bad) in message and "\n" not in message
        assert "evaluate: bad input" in plain(app.screen.query_one("#error-title"))
        assert not app.running_jobs()
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ErrorDialog)


@pytest.mark.asyncio
async def test_results_are_kept_per_plan_across_tabs(here, monkeypatch):
    import mergescope.tui.state.evaluation as evaluation

    runs = []
    real = evaluation.run

    def counted(job, **kw):
        runs.append(job.kind)
        return real(job, **kw)

    monkeypatch.setattr(evaluation, "run", counted)
    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("u", "s")
        await ready(app, pilot)
        view = app.main.query_one(EvalView)
        first = body(view)
        await pilot.press("h")
        await ready(app, pilot)
        await pilot.press("u")
        await ready(app, pilot)
        assert runs == ["score"] and body(view) == first and "stale" not in first
        await pilot.press("e", "plus")  # the plan changes: the old table is marked stale
        await ready(app, pilot)
        await pilot.press("u")
        await ready(app, pilot)
        assert "stale" in body(view) and "plan (merged)" in body(view)
        await pilot.press("e", "minus")  # back to the scored plan: its table again
        await ready(app, pilot)
        await pilot.press("u")
        await ready(app, pilot)
        assert body(view) == first and runs == ["score"]


@pytest.mark.asyncio
async def test_evaluate_is_in_help_and_the_palette(here):
    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Show evaluate" in titles and "Evaluate: greedy soup of the open models" in titles
        await next(c for c in app.get_system_commands(app.screen) if c.title.startswith("Evaluate: score")).callback()
        await ready(app, pilot)
        assert app.main.query_one("TabbedContent").active == "evaluate"
        assert entry(app, "score")[0] is not None


# ---- snapshots ---------------------------------------------------------------------------------
@pytest.fixture
def frozen(here, monkeypatch):
    import mergescope.tui.actions.evaluate as eval_jobs

    monkeypatch.setattr(eval_jobs, "time", types.SimpleNamespace(perf_counter=lambda: 0.0))  # "0.0 s"
    analyze("base", ["ft0", "ft1", "ft2"])  # warm cache


async def _score_and_sweep(pilot):
    await ready(pilot.app, pilot)
    await pilot.press("e", "down")
    await ready(pilot.app, pilot)
    await pilot.press("u")
    await pilot.pause()
    pilot.app.main.query_one("#eval-values").value = "0:1.5:0.25"
    await pilot.press("s")
    await ready(pilot.app, pilot)
    await pilot.press("w")
    await ready(pilot.app, pilot)


def test_evaluate_tab_after_a_score_and_a_sweep(frozen, snap_compare):
    assert snap_compare(app_for(), run_before=_score_and_sweep, terminal_size=SIZE)


def test_evaluate_tab_80x24(frozen, snap_compare):
    assert snap_compare(app_for(), run_before=_score_and_sweep, terminal_size=(80, 24))


def test_evaluate_tab_80x24_sweep_plot(frozen, snap_compare):
    async def run_before(pilot):
        await _score_and_sweep(pilot)
        view = pilot.app.main.query_one(EvalView)
        view.query_one("#eval-results").scroll_to_widget(view.query_one("#eval-plot"), top=True, animate=False)
        await pilot.pause()

    assert snap_compare(app_for(), run_before=run_before, terminal_size=(80, 24))
