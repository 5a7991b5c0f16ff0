"""Per-layer ratios in the app, driven as a user would: the sensitivity heatmap computed on demand (%: which
model's weight in which cell helps or hurts which text), the plan editor's first-order predicted change
per text beside the measured one after scoring, and the "fit this table" panel (F: Adam steps in a
worker, plotted; Enter loads the fitted table, Esc stops keeping the best so far, then closes).

The demo family with two 2 KB texts keeps a sensitivity pass near a second and a fit step near half of one.
"""

from __future__ import annotations

import copy
import io

import pytest
from rich.console import Console
from textual.worker import WorkerFailed, WorkerState

from mergescope.demo import family_dir, heldout_dir
from mergescope.score.candidate import Scorer
from mergescope.score.texts import read_texts
from mergescope.search.fit import Problem, prepare
from mergescope.search.sensitivity import sensitivity
from mergescope.tui.app import MergeScopeApp
from mergescope.tui.dialogs.error import ErrorDialog
from mergescope.tui.dialogs.fit import FitScreen
from mergescope.tui.state.sensitivity_map import SENSITIVITY
from mergescope.tui.state.tuning import state_table
from mergescope.tui.widgets.heatmap import DIVERGING, Heatmap, level
from mergescope.tui.widgets.heatmap_view import HeatmapView

SIZE = (120, 40)
MODELS = ["code", "prose", "dialog"]
SAMPLE = {"method": "task_arithmetic", "models": ["code", "prose"], "weight": 0.5}
TEXT_BYTES = 2000
pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    """The demo's base and three fine-tunes under short relative names, and two short held-out texts."""
    root = tmp_path_factory.mktemp("fittui")
    for name in ["base", *MODELS]:
        (root / name).symlink_to(family_dir() / name, target_is_directory=True)
    for d in ("code", "prose"):
        (root / f"{d}.txt").write_bytes((heldout_dir() / f"{d}.txt").read_bytes()[:TEXT_BYTES])
    return root


@pytest.fixture
def here(fam, monkeypatch):
    monkeypatch.chdir(fam)
    return fam


def app_for(texts=("code.txt", "prose.txt"), steps: int = 3, **kw) -> MergeScopeApp:
    kw.setdefault("sample_plan", SAMPLE)
    app = MergeScopeApp("base", MODELS, blink=False, remember_set=False, texts=list(texts), **kw)
    app.fit_steps = steps
    return app


async def settle(app, pilot) -> None:
    for _ in range(2):
        try:
            await app.workers.wait_for_complete()
        except WorkerFailed:
            pass
        await pilot.pause(0.15)  # the debounced what-if
    await pilot.pause()


def plain(renderable) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def direct_sensitivity(plan):
    """The core's sensitivity of the same plan on the same whole texts, without the app."""
    texts = read_texts(["code.txt", "prose.txt"])
    space, form = prepare(plan, granularity="layer")
    return sensitivity(Problem(plan, space, form, texts, granularity="layer"))


async def sensitivity_shown(app, pilot) -> HeatmapView:
    await settle(app, pilot)
    await pilot.press("h", "percent_sign")
    await settle(app, pilot)
    view = app.main.query_one(HeatmapView)
    assert view.metric_id == SENSITIVITY.id and app.session.sensitivity is not None
    return view


# ---- the sensitivity heatmap ---------------------------------------------------------------------
async def test_sensitivity_heatmap_maps_each_models_gradient_to_its_row_and_group(here):
    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        view = await sensitivity_shown(app, pilot)
        hm = app.main.query_one(Heatmap)
        grid = hm.grid
        assert grid.col_labels == ["all", "attn", "mlp", "norm"]
        assert grid.row_labels[0] == "embed" and grid.row_labels[1] == "L0" and "head" in grid.row_labels
        sens = direct_sensitivity(app.session.current_plan())
        scale = 10 ** grid.meta["power"]
        code, prose = 0, 1
        for text, model in (("code", code), ("prose", code), ("prose", prose)):
            while (view.text, view.model) != (text, model):
                await pilot.press("t" if view.text != text else "m")
                await pilot.pause()
            grid = hm.grid
            scale = 10 ** grid.meta["power"]
            g = dict(zip(sens.names, sens.grad[text]))
            mi = ["code", "prose"].index(MODELS[model])
            l2 = grid.row_labels.index("L2")
            assert grid.values[l2][2] * scale == pytest.approx(g[f"weight.mlp.L2.m{mi}"], rel=1e-4, abs=1e-9)
            assert grid.values[l2][0] * scale == pytest.approx(
                sum(g[f"weight.{k}.L2.m{mi}"] for k in ("attn", "mlp", "norm")), rel=1e-4, abs=1e-9
            )
            head = grid.row_labels.index("head")
            assert grid.values[head][0] * scale == pytest.approx(g[f"weight.head.m{mi}"], rel=1e-4, abs=1e-9)
            assert grid.values[head][1] is None  # outside the blocks only "all" has a cell
        # one colour for "more helps" (negative: the palette's blue end), another for "hurts" (red)
        vals = [v for row in hm.grid.values for v in row if v is not None]
        lo, hi = hm.grid.bounds()
        assert lo < 0 < hi and lo == -hi  # diverging, centred on 0
        neg, pos = min(vals), max(vals)
        assert neg < 0 < pos
        blue, red = DIVERGING[-1], DIVERGING[0]
        assert hm._styles[level(lo, lo, hi, hm.grid.scale)][0].color.name == blue
        assert hm._styles[level(hi, lo, hi, hm.grid.scale)][0].color.name == red
        legend = plain(app.main.query_one("#heat-legend").content)
        assert "more of the model here helps the text" in legend and "0 = no effect" in legend
        # the cell detail explains the number under the cursor
        await pilot.press("down", "down", "right")  # L1 · attn
        await pilot.pause(0.2)
        detail = plain(app.main.query_one("#heat-detail").renderable)
        g = dict(zip(sens.names, sens.grad[view.text]))[f"weight.attn.L1.m{view.model}"]
        assert f"{g:.5g}" in detail and ("helps" in detail if g < 0 else "hurts" in detail)
        assert "to first order" in detail and "all texts (mean)" in detail
        # dialog is analysed but not in the plan: no gradient, and the map says how to get one
        await pilot.press("m")
        await pilot.pause()
        assert view.model == 2 and all(v is None for row in hm.grid.values for v in row)
        assert "not in the plan" in hm.grid.note


async def test_sensitivity_goes_stale_when_the_plan_changes_and_percent_recomputes(here):
    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        view = await sensitivity_shown(app, pilot)
        first = app.session.sensitivity
        await pilot.press("e", "down", "plus")
        await settle(app, pilot)
        assert "plan as it was" in view.sensitivity_note
        await pilot.press("h")
        await pilot.pause()
        assert "plan as it was" in app.main.query_one(Heatmap).grid.note
        await pilot.press("percent_sign")
        await settle(app, pilot)
        assert app.session.sensitivity is not first and view.sensitivity_note == ""
        assert app.session.sensitivity.key == app.session.current_plan().to_yaml()


async def test_sensitivity_without_texts_names_eval_text(here):
    app = app_for(texts=())
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("h", "percent_sign")
        await settle(app, pilot)
        assert app.main.query_one(HeatmapView).metric_id != SENSITIVITY.id
        assert any("--eval-text" in n.message for n in app._notifications)


# ---- the plan editor's prediction ----------------------------------------------------------------
async def test_editor_predicts_each_edit_and_shows_the_measured_change_after_scoring(here):
    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await sensitivity_shown(app, pilot)
        smap = app.session.sensitivity
        g = {t: dict(zip(smap.result.names, smap.result.grad[t])) for t in smap.texts}
        await pilot.press("e")
        await settle(app, pilot)
        line = app.editor.query_one("#plan-predicted")
        assert line.display and "+0.0000" in plain(line.content)  # nothing edited yet
        # thirds on 4 layers: L0 | L1-2 | L3; + on L1-2 · all raises code's weight in 6 cells by 0.05
        await pilot.press("down", "down", "plus")
        await settle(app, pilot)
        want = {
            t: 0.05 * sum(g[t][f"weight.{k}.{lay}.m0"] for k in ("attn", "mlp", "norm") for lay in ("L1", "L2"))
            for t in smap.texts
        }
        text = plain(line.content)
        for t, v in want.items():
            assert f"{t} {v:+.4f}" in text
        assert "score the plan" in text  # no measurement yet
        # score the edited plan in the Evaluate tab: the editor shows the measured change beside
        await pilot.press("u", "s")
        await settle(app, pilot)
        await pilot.press("e")
        await settle(app, pilot)
        entry, stale = app.session.evals.get("score", app.session.current_plan().to_yaml(), smap.text_paths)
        assert entry is not None and not stale
        scored = entry.result.scored.rows["plan"]
        text = plain(line.content)
        for t, v in want.items():
            meas = scored[t].value - smap.scored[t]
            assert f"measured {t} {meas:+.4f}" in text or f"{t} {meas:+.4f}" in text.split("measured", 1)[1]
            assert abs(meas - v) < 0.25 * abs(v) + 2e-4, (t, meas, v)  # first order, one small step


# ---- fit this table --------------------------------------------------------------------------------
async def open_fit(app, pilot) -> FitScreen:
    await settle(app, pilot)
    await pilot.press("e", "F")
    await pilot.pause()
    assert isinstance(app.screen, FitScreen)
    return app.screen


async def test_fit_panel_states_memory_steps_and_enter_loads_the_fitted_table(here):
    app = app_for(steps=3)
    async with app.run_test(size=SIZE) as pilot:
        panel = await open_fit(app, pilot)
        memory = plain(panel.query_one("#fit-memory").content)
        assert (
            "holds" in memory and "of weights" in memory and "for a step (activations" in memory and "on cpu" in memory
        )
        assert panel.job.band_mode == app.plan_state.band_mode and panel.job.param == "weight"
        await settle(app, pilot)
        assert not panel.running and panel.result is not None and not panel.result.stopped
        assert [s.step for s in panel.steps] == [0, 1, 2, 3]
        assert panel.best is not None and panel.best.held <= panel.start.held
        assert panel.best.step == panel.result.best_step
        assert panel.best.values == pytest.approx(panel.result.best)
        shown = plain(panel.query_one("#fit-best").content)
        assert f"best: step {panel.best.step}" in shown and "code" in shown and "L1-2" in shown
        want = panel.best_table()
        before = state_table(app.plan_state, panel.job)
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(app.screen, FitScreen)
        got = state_table(app.plan_state, panel.job)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-6)
        assert (got != before) == (panel.best.step != 0)
        # the loaded table is the one the fit measured: its plan scores the best step's held-out loss
        plan = app.session.current_plan()
        plan.dtype = plan.out_dtype = "float32"  # as fit computes (the demo's own dtype is bfloat16)
        held = Scorer(_held(panel.job.texts)).plan(plan)
        mean = sum(held[t].value for t in panel.best.per_text) / len(panel.best.per_text)
        assert mean == pytest.approx(panel.best.held, abs=1e-4)
        assert any("fitted weight table loaded" in n.message for n in app._notifications)


def _held(texts):
    from mergescope.score.texts import split_texts
    from mergescope.search.fit import HELD

    return split_texts(texts, fraction=HELD)[1]


async def test_fit_esc_stops_keeping_the_best_and_a_second_esc_closes_without_a_change(here):
    app = app_for(steps=200)
    async with app.run_test(size=SIZE) as pilot:
        panel = await open_fit(app, pilot)
        before = copy.deepcopy(app.plan_state.tables)
        for _ in range(400):
            if panel.steps:
                break
            await pilot.pause(0.05)
        assert panel.steps and panel.running
        await pilot.press("escape")
        assert isinstance(app.screen, FitScreen)  # the first Esc stops, it does not close
        await settle(app, pilot)
        assert panel.worker.state == WorkerState.SUCCESS
        assert not panel.running and panel.result.stopped and len(panel.steps) < 50
        assert panel.best is not None and panel.best_table() is not None  # Enter would take the best so far
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, FitScreen)
        assert app.plan_state.tables == before


async def test_fit_refusals_are_one_line_each(here, monkeypatch):
    import mergescope.search.fit as fitmod

    app = app_for(texts=())
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("e", "F")
        await pilot.pause()
        assert not isinstance(app.screen, FitScreen)
        assert any("--eval-text" in n.message for n in app._notifications)
    with monkeypatch.context() as m:
        m.setattr(fitmod, "available_bytes", lambda device: 1000)
        app = app_for()
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("e", "F")
            await pilot.pause()
            assert isinstance(app.screen, ErrorDialog) and "needs about" in app.screen.message
    app = app_for(sample_plan={"method": "slerp", "models": ["code"]})
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("e", "F")
        await pilot.pause()
        assert isinstance(app.screen, ErrorDialog) and "weight table" in app.screen.message


async def test_fit_and_sensitivity_keys_are_in_help(here):
    from mergescope.tui.dialogs.help import binding_sections

    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("e")
        await pilot.pause()
        ids = {b.id for _, bindings in binding_sections(app.screen) for b in bindings}
        assert {"plan.fit", "plan.tune", "heatmap.metric.sensitivity", "heatmap.next_text"} <= ids
