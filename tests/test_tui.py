"""Pilot tests of the explorer's flows: open → analyse → verdicts → heatmap → plan → export → merge."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.test_metrics import make_family
from tui.app import MergeScopeApp
from tui.dialogs.error import ErrorDialog
from tui.dialogs.help import HelpScreen
from tui.dialogs.open import OpenDialog
from tui.heatdata import METRICS
from tui.widgets.heatmap import Heatmap
from tui.widgets.heatmap_view import HeatmapView
from tui.widgets.inputs import PathInput

SIZE = (120, 40)
pytestmark = pytest.mark.asyncio


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MERGESCOPE_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    base, models = make_family(root, dtype=torch.float32, n_models=3)
    return str(base), [str(m) for m in models]


def app_for(family, **kw) -> MergeScopeApp:
    base, models = family
    return MergeScopeApp(base, models, blink=False, **kw)


async def ready(app, pilot) -> None:
    await app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause()


def text_of(widget) -> str:
    """Plain text of a Static (or of the Statics inside a container): what a user would read."""
    import io

    from rich.console import Console
    from textual.widgets import Static

    console = Console(file=io.StringIO(), width=200, color_system=None)
    for st in [widget, *widget.query(Static)]:
        if isinstance(st, Static):
            content = st.content
            console.print(content if not isinstance(content, str) else content, markup=False)
    return console.file.getvalue()


# ---- open ---------------------------------------------------------------------------------------
async def test_open_dialog_analyses_and_remembers(family):
    base, models = family
    app = MergeScopeApp(blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, OpenDialog)
        app.screen.query_one("#open-base", PathInput).value = base
        app.screen.query_one("#open-model-0", PathInput).value = models[0]
        app.screen.query_one("#open-model-1", PathInput).value = models[1]
        await pilot.press("ctrl+n")  # a third model input
        app.screen.query_one("#open-model-2", PathInput).value = models[2]
        await pilot.press("enter")
        await ready(app, pilot)
        assert app.report is not None and app.report.models == models
    # the set is remembered and offered next time
    app = MergeScopeApp(blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, OpenDialog)
        assert dialog.recent and dialog.recent[0].models == models
        await pilot.press("ctrl+r", "enter")
        await ready(app, pilot)
        assert app.report is not None and app.report.models == models


async def test_open_dialog_rejects_a_missing_path_inline(tmp_path):
    app = MergeScopeApp(blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.screen.query_one("#open-base", PathInput).value = str(tmp_path / "nope")
        app.screen.query_one("#open-model-0", PathInput).value = str(tmp_path / "nope2")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, OpenDialog)
        assert "no such file" in str(app.screen.query_one("#open-error").render())


async def test_path_completion(tmp_path):
    from tui.suggest import complete_path

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "llama-base").mkdir()
    (tmp_path / "models" / "notes.txt").write_text("x")
    assert complete_path(str(tmp_path / "mod")) == str(tmp_path / "models") + "/"
    assert complete_path(str(tmp_path / "models" / "ll")) == str(tmp_path / "models" / "llama-base") + "/"
    assert complete_path(str(tmp_path / "models" / "no")) == str(tmp_path / "models" / "notes.txt")
    assert complete_path(str(tmp_path / "models" / "no"), dirs_only=True) is None
    assert complete_path(str(tmp_path / "zzz")) is None


async def test_bad_path_becomes_one_error_dialog(tmp_path, family):
    base, _ = family
    app = MergeScopeApp(base, [str(tmp_path / "missing")], blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        assert isinstance(app.screen, ErrorDialog)
        assert "missing" in app.screen.message
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, OpenDialog)  # nothing was open: back to the open dialog
        assert app.report is None


async def test_incompatible_model_shows_findings_not_a_crash(tmp_path, family):
    base, models = family
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"model.embed_tokens.weight": torch.zeros(7, 5), "lm_head.weight": torch.zeros(3, 3)},
              str(other / "model.safetensors"))
    app = MergeScopeApp(base, [models[0], str(other)], blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        assert not isinstance(app.screen, ErrorDialog)
        codes = {f.code for f in app.report.findings}
        assert {"missing-tensors", "shape-mismatch"} & codes
        assert "✖" in text_of(app.main.query_one("#verdicts-findings"))


async def test_analysis_can_be_cancelled(family, monkeypatch):
    import analysis.analyze as analyze_mod
    from analysis.metrics import AnalysisCancelled

    started = []

    def slow_analyze(base, models, *, progress=None, should_stop=None, **kw):
        started.append(True)
        for k in range(2000):
            if should_stop():
                raise AnalysisCancelled()
            progress(k, 2000, f"{k}/2000 tensor")
            time.sleep(0.005)
        raise AssertionError("not cancelled")

    monkeypatch.setattr(analyze_mod, "analyze", slow_analyze)
    app = app_for(family)
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(50):
            await pilot.pause(0.02)
            if started:
                break
        await pilot.pause(0.1)
        assert app.running_jobs()
        bar = app.main.query_one("#job-progress")
        assert bar.has_class("-running")
        await pilot.press("escape")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert not app.running_jobs()
        assert not bar.has_class("-running")
        assert app.report is None
        assert not isinstance(app.screen, ErrorDialog)


# ---- verdicts & heatmap -------------------------------------------------------------------------
async def test_verdicts_list_findings_and_model_summary(family):
    app = app_for(family)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        summary = text_of(app.main.query_one("#verdicts-summary"))
        for m in family[1]:
            assert m in summary
        assert "ready" in summary


async def test_heatmap_metrics_cursor_and_detail(family):
    app = app_for(family)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("h")
        await pilot.pause()
        view = app.main.query_one(HeatmapView)
        hm = app.main.query_one(Heatmap)
        assert app.focused is hm
        rep = app.report
        assert hm.grid.row_labels[0] == "embed" and "L0" in hm.grid.row_labels
        assert hm.grid.col_labels[:4] == ["all", "q_proj", "k_proj", "v_proj"]
        # every metric key switches the map and the numbers follow the report
        for metric in METRICS:
            await pilot.press(metric.key)
            await pilot.pause()
            assert view.metric_id == metric.id
        await pilot.press("2")
        await pilot.press("down", "right")  # L0, q_proj
        await pilot.pause()
        assert hm.cursor == (1, 1)
        expected = rep.row_cell(0, None, module="q_proj").relative_norm(0)
        assert hm.value == pytest.approx(expected)
        detail = text_of(app.main.query_one("#heat-detail"))
        assert "model.layers.0.self_attn.q_proj.weight" in detail
        # model / pair selection
        await pilot.press("m")
        await pilot.pause()
        assert view.model == 1
        assert hm.value == pytest.approx(rep.row_cell(0, None, module="q_proj").relative_norm(1))
        await pilot.press("p")  # switches to a pair metric (cosine), pair (0, 1)
        await pilot.pause()
        assert view.metric_id == "cosine"
        assert hm.value == pytest.approx(rep.row_cell(0, None, module="q_proj").cosine(0, 1))
        await pilot.press("p")
        await pilot.pause()
        assert hm.value == pytest.approx(rep.row_cell(0, None, module="q_proj").cosine(0, 2))
        # group columns
        await pilot.press("c", "4")
        await pilot.pause()
        assert hm.grid.col_labels == ["all", "attn", "mlp", "norm"]
        assert hm.value == pytest.approx(rep.row_cell(0, None, column_group="attn").trimmed_sign_conflict)
        # the cursor walks to the last row and stays inside the grid
        await pilot.press("end", "down", "right", "right", "right", "right")
        await pilot.pause()
        assert hm.cursor == (len(hm.grid.row_labels) - 1, 3)
        assert hm.grid.row_labels[-1] == "head"


async def test_heatmap_scrolls_with_the_cursor_on_many_layers():
    """A 126-layer grid renders only what is visible; the cursor drags the view along."""
    from textual.app import App

    from tui.heatdata import Grid

    rows = [f"L{i}" for i in range(126)]
    cols = ["all"] + [f"c{k}" for k in range(9)]
    grid = Grid("t", rows, cols, [[(r * 10 + c) / 1260 for c in range(10)] for r in range(126)])

    class HeatApp(App):
        def compose(self):
            yield Heatmap(grid)

    app = HeatApp()
    async with app.run_test(size=(60, 20)) as pilot:  # narrower than the grid: both axes scroll
        hm = app.query_one(Heatmap)
        hm.focus()
        await pilot.pause()
        t0 = time.perf_counter()
        await pilot.press(*["down"] * 30, "pagedown", "pagedown")
        elapsed = time.perf_counter() - t0
        assert hm.cursor == (30 + 2 * (hm.size.height - 2), 0)
        assert hm.scroll_offset.y > 30
        assert elapsed < 20  # generous: the point is that it does not degrade with size
        await pilot.press("right", "right", "right", "right", "right", "right", "right", "right", "right")
        await pilot.pause()
        assert hm.cursor[1] == 9
        assert hm.scroll_offset.x > 0
        assert len(hm._cache) < 70  # rows never scrolled into view were never rendered


async def test_help_screen_lists_bindings(family):
    app = app_for(family)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("h", "question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        body = text_of(app.screen.query_one("#help-body"))
        for word in ("next model", "modules/groups", "verdicts", "keys"):
            assert word in body
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


async def test_command_palette_has_the_actions(family):
    app = app_for(family)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Open a model set" in titles
        assert any(t.startswith("Heatmap metric: pairwise cosine") for t in titles)
        assert "Show plan" in titles


async def test_usable_at_80x24(family):
    app = app_for(family)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        await pilot.press("h")
        await pilot.pause()
        hm = app.main.query_one(Heatmap)
        assert hm.size.height >= 6 and hm.size.width >= 40
        assert app.main.query_one(HeatmapView).has_class("-narrow")
