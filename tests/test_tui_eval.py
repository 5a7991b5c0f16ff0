"""The Evaluate tab: score the plan in memory against its base and inputs, sweep the plan editor's cell
with its plot, a greedy soup of the open models, Esc, bad texts, results kept per plan; one snapshot.

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
from mergescope.tui.widgets.eval_view import EvalView, score_table
from tests.ckpt_utils import make_finetune, make_llama

SIZE = (120, 40)
SAMPLE = {"method": "task_arithmetic", "models": ["ft0", "ft1"], "weight": 1.0}
TEXTS = {
    "a": b"def add(a, b):\n    return a + b\n\n" * 12,
    "b": b"The river ran slowly past the mill, and the miller watched it. " * 6,
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


@pytest.mark.asyncio
async def test_score_table_plan_base_and_inputs(here):
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
        assert not stale and list(got.result) == [PLAN_ROW, "base", "ft0", "ft1"]
        assert all(set(row) == {"a", "b"} for row in got.result.values())
        body = plain(view.query_one("#eval-tables"))
        for word in ("Score", "plan (merged)", "base", "ft0", "ft1", "mean", "bits per byte"):
            assert word in body
        # the best of each column is bold
        table = score_table(got.result, "base")
        for col in table.columns[1:]:
            cells = col._cells
            values = [float(c.plain) for c in cells]
            assert [c.style == "bold" for c in cells] == [v == min(values) for v in values]
        assert "scored the plan and 3 model(s)" in plain(view.query_one("#eval-status"))


@pytest.mark.asyncio
async def test_sweep_varies_the_cell_under_the_cursor_with_a_plot(here):
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
        await pilot.press("s")
        await ready(app, pilot)
        await pilot.press("w")
        await ready(app, pilot)
        got, stale = entry(app, "sweep")
        result = got.result
        assert not stale and result.values == [0.0, 0.5, 1.0] and result.param == "weight"
        # at the plan's own value the sweep's plan is the plan: the same score
        score = entry(app, "score")[0].result[PLAN_ROW]
        assert all(abs(result.scores[2][t].value - score[t].value) < 1e-9 for t in score)
        # only ft0's parameters change from point to point
        plans = got.job.plans
        assert plans[0].models[1].parameters == plans[2].models[1].parameters
        assert plans[0].models[0].parameters != plans[2].models[0].parameters
        # the plot beside the table, the best marked in both
        plot = view.query_one("#eval-plot")
        assert plot.display and plot.has_class("-shown") and plot.region.width > 20
        best = result.values[result.best()]
        assert f"best weight = {result.values[result.best('a')]:g}" in plot.render().plain
        body = plain(view.query_one("#eval-tables"))
        assert "Sweep" in body and "✱" in body and "◂" in body
        assert f"best weight = {best:g}" in plain(view.query_one("#eval-status"))
        await pilot.press("h")  # away and back: drawn again, beside each other
        await ready(app, pilot)
        await pilot.press("u")
        await ready(app, pilot)
        results = view.query_one("#eval-results")
        assert plot.display and results.region.width > 40 and plot.region.x >= results.region.right


@pytest.mark.asyncio
async def test_greedy_soup_lists_its_steps_as_they_happen(here, monkeypatch):
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
        assert [s.model for s in got.result.steps] and "other" not in [s.model for s in got.result.steps]
        assert len(got.result.steps) == 3 and seen[-1] == [s.action for s in got.result.steps]
        assert [len(s) for s in seen] == [1, 2, 3] and seen[0] == ["start"]
        body = plain(app.main.query_one("#eval-tables"))
        assert "left out: other: different-base" in body and "start" in body
        assert ("added" in body or "rejected" in body) and "best single model" in body


@pytest.mark.asyncio
async def test_escape_cancels_an_evaluation(here, monkeypatch):
    import time

    import mergescope.score.backends as scorers

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
        tables = app.main.query_one("#eval-tables")
        first = plain(tables)
        await pilot.press("h")
        await ready(app, pilot)
        await pilot.press("u")
        await ready(app, pilot)
        assert runs == ["score"] and plain(tables) == first and "stale" not in first
        await pilot.press("e", "plus")  # the plan changes: the old table is marked stale
        await ready(app, pilot)
        await pilot.press("u")
        await ready(app, pilot)
        assert "stale" in plain(tables) and "plan (merged)" in plain(tables)
        await pilot.press("e", "minus")  # back to the scored plan: its table again
        await ready(app, pilot)
        await pilot.press("u")
        await ready(app, pilot)
        assert plain(tables) == first and runs == ["score"]


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


# ---- snapshot ----------------------------------------------------------------------------------
def test_evaluate_tab_after_a_sweep(here, monkeypatch, snap_compare):
    import mergescope.tui.actions.evaluate as eval_jobs

    monkeypatch.setattr(eval_jobs, "time", types.SimpleNamespace(perf_counter=lambda: 0.0))  # "0.0 s"
    analyze("base", ["ft0", "ft1", "ft2"])  # warm cache

    async def run_before(pilot):
        await ready(pilot.app, pilot)
        await pilot.press("e", "down")
        await ready(pilot.app, pilot)
        await pilot.press("u")
        await pilot.pause()
        pilot.app.main.query_one("#eval-values").value = "0:1.5:0.25"
        await pilot.press("w")
        await ready(pilot.app, pilot)

    assert snap_compare(app_for(), run_before=run_before, terminal_size=SIZE)
