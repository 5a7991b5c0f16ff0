"""Pilot tests of the explorer's flows: open → analyse → verdicts → heatmap → plan → export → merge."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mergescope.io.progress import Cancelled
from mergescope.stats.findings import findings_for
from mergescope.tui.app import MergeScopeApp
from mergescope.tui.dialogs.error import ErrorDialog
from mergescope.tui.dialogs.help import HelpScreen
from mergescope.tui.dialogs.open import OpenDialog
from mergescope.tui.messages import WhatIfReady
from mergescope.tui.state.metrics import METRICS
from mergescope.tui.widgets.heatmap import Heatmap
from mergescope.tui.widgets.heatmap_view import HeatmapView
from mergescope.tui.widgets.inputs import PathInput

SIZE = (120, 40)
pytestmark = pytest.mark.asyncio


@pytest.fixture
def family(small_family):
    return small_family


def app_for(family, **kw) -> MergeScopeApp:
    base, models = family
    return MergeScopeApp(base, models, blink=False, **kw)


async def ready(app, pilot) -> None:
    from textual.worker import WorkerFailed

    try:
        await app.workers.wait_for_complete()
    except WorkerFailed:
        pass  # the app turns worker errors into its error dialog; tests check that, not the raise
    await pilot.pause()
    await pilot.pause()


def text_of(widget) -> str:
    """Plain text of a Static (or of the Statics inside a container): what a user would read."""
    import io

    from rich.console import Console
    from textual.widgets import Static

    console = Console(file=io.StringIO(), width=200, color_system=None)
    if not isinstance(widget, Static) and hasattr(widget, "renderable"):  # line-API panels
        console.print(widget.renderable)
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
    from mergescope.tui.suggest import complete_path

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
    save_file(
        {"model.embed_tokens.weight": torch.zeros(7, 5), "lm_head.weight": torch.zeros(3, 3)},
        str(other / "model.safetensors"),
    )
    app = MergeScopeApp(base, [models[0], str(other)], blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        assert not isinstance(app.screen, ErrorDialog)
        codes = {f.code for f in app.report.findings}
        assert {"missing-tensors", "shape-mismatch"} & codes
        assert "✖" in text_of(app.main.query_one("#verdicts-findings"))


async def test_analysis_can_be_cancelled(family, monkeypatch):
    import mergescope.stats.readiness as analyze_mod

    started = []

    def slow_analyze(base, models, *, progress=None, should_stop=None, **kw):
        started.append(True)
        for k in range(2000):
            if should_stop():
                raise Cancelled()
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
        # on screen: above the footer, not hidden under it (two bottom docks overlapped before)
        from textual.widgets import Footer

        footer = app.main.query_one(Footer)
        assert bar.region.height == 1 and bar.region.bottom == footer.region.y
        assert "/2000" in text_of(bar.query_one("#job-stats"))
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
        for m in family[1]:  # shown without the directory base and models share
            assert Path(m).name in summary and m not in summary
        assert "ready" in summary


async def test_late_timers_and_messages_after_exit_are_ignored(family):
    """A debounced what-if or a worker message that lands while the app shuts down must not raise
    (it did: the what-if timer fired after the main screen was gone)."""
    app = app_for(family)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        report = app.report
    assert app.report is report and not app._has_main()
    app._start_whatif()  # what the pending timer would do
    app.on_what_if_ready(WhatIfReady([], None, app._whatif_gen))


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
        for metric in [m for m in METRICS if not m.spectral]:
            await pilot.press(metric.key)
            await pilot.pause()
            assert view.metric_id == metric.id
        await pilot.press("2")
        await pilot.press("down", "right")  # L0, q_proj
        await pilot.pause(0.1)  # the detail panel follows the cursor when it rests
        assert hm.cursor == (1, 1)
        expected = rep.row_cell(0, None, module="q_proj").relative_norm(0)
        assert hm.value == pytest.approx(expected)
        detail = text_of(app.main.query_one("#heat-detail"))
        assert "layers.0.self_attn.q_proj.weight" in detail
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

    from mergescope.tui.state.heatdata import Grid

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
        await pilot.press(*["down"] * 10, "pagedown", "pagedown", "pagedown")
        elapsed = time.perf_counter() - t0
        seen = hm.scrollable_content_region.height  # the horizontal scrollbar covers the last line
        assert seen == hm.size.height - 1
        assert hm.cursor == (10 + 3 * (seen - 2), 0)
        assert hm.scroll_offset.y > 30
        assert elapsed < 20  # generous: the point is that it does not degrade with size
        await pilot.press("end", *["right"] * 9)
        await pilot.pause()
        assert hm.cursor == (125, 9)
        assert hm.scroll_offset.x > 0
        assert not any(r in hm._cache for r in range(90, 100))  # rows never in view were never rendered
        # the cursor's row (the last) is drawn above the scrollbar, not behind it
        lines = [hm.render_line(y).text for y in range(seen)]
        assert lines[-1].startswith("L125") and hm.scroll_offset.y == hm.max_scroll_y
        await pilot.press("up", "pageup", "pagedown", "down")
        await pilot.pause()
        assert hm.cursor[0] == 125 and hm.render_line(seen - 1).text.startswith("L125")


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
        # every action is in the command palette too
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Open a model set" in titles and "Show plan" in titles and "Merge now" in titles
        assert any(t.startswith("Heatmap metric: pairwise cosine") for t in titles)
        assert any(t.startswith("Plan: export") for t in titles)


async def test_usable_at_80x24(family):
    app = app_for(family)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        await pilot.press("h")
        await pilot.pause()
        hm = app.main.query_one(Heatmap)
        assert hm.size.height >= 6 and hm.size.width >= 40
        assert app.main.query_one(HeatmapView).has_class("-narrow")


# ---- plan editor, what-if, export / load, merge ---------------------------------------------------
async def settle(app, pilot) -> None:
    """Let the debounced what-if run and land."""
    await pilot.pause(0.15)
    await app.workers.wait_for_complete()
    await pilot.pause()


async def test_plan_edit_whatif_export_reload_merge(family, tmp_path):
    from mergescope.merge.plan import Plan
    from mergescope.merge.whatif import from_plan
    from mergescope.tui.dialogs.prompt import PathPrompt, ValuePrompt
    from mergescope.tui.widgets.plan_editor import PlanEditor

    base, models = family
    app = app_for(family)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("e")
        await settle(app, pilot)
        editor = app.main.query_one(PlanEditor)
        st = app.plan_state
        assert st.method == "task_arithmetic" and st.band_mode == 3 and st.included == [True] * 3
        assert app.focused.id == "ratio-table"
        # + / - steps on L0 · attn of the first model
        await pilot.press("down", "right", "plus", "plus", "minus", "plus")  # row L0 (after embed), column attn
        await settle(app, pilot)
        assert st.value_at("weight", 0, "attn", 0) == pytest.approx(0.6)  # from the starting 0.5
        assert st.value_at("weight", 0, "mlp", 0) == pytest.approx(0.5)
        # the what-if is the prediction for exactly this plan
        assert editor.preds is not None
        expected = from_plan(app.report, st.to_plan())
        r = [row[0] for row in editor.data.rows].index("L0")
        got = editor.preds[r][1]
        assert got.coeff[0] == pytest.approx(0.6)
        want = expected.cell(editor.data.sites("groups")[r][1])
        assert got.merged_norm == pytest.approx(want.merged_norm)
        # typed value, second model, leave the third out
        await pilot.press("m", "enter")
        await pilot.pause()
        assert isinstance(app.screen, ValuePrompt)
        inp = app.screen.query_one("#value-input")
        inp.value = "0.8"
        await pilot.press("enter")
        await settle(app, pilot)
        assert st.value_at("weight", 0, "attn", 1) == pytest.approx(0.8)
        await pilot.press("m", "i")
        await settle(app, pilot)
        assert st.included == [True, True, False]
        # method: next after task_arithmetic is ties; density starts at the analysis density
        await pilot.press("t")
        await settle(app, pilot)
        st = app.plan_state
        assert st.method == "ties"
        assert st.value_at("density", 1, "mlp", 0) == pytest.approx(app.report.density)
        assert st.value_at("weight", 0, "attn", 0) == pytest.approx(0.6)  # weights survive the switch
        # a global parameter, validated
        lam = editor.query_one("#global-lambda")
        lam.value = "abc"
        await pilot.pause()
        assert "number" in str(editor.query_one("#plan-error").render())
        lam.value = "0.9"
        await settle(app, pilot)
        assert st.globals["lambda"] == pytest.approx(0.9)
        plan_before = st.to_plan()
        # export
        app.main.query_one("#ratio-table").focus()
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, PathPrompt)
        out_yaml = tmp_path / "plans" / "my_plan.yaml"
        app.screen.query_one("#export-input").value = str(out_yaml)
        await pilot.press("enter")
        await pilot.pause()
        assert out_yaml.is_file()
        written = Plan.load(out_yaml)
        assert written.merge_method == "ties" and written.parameters == {"lambda": 0.9}
        assert [m.model for m in written.models] == models[:2]
        assert written.to_yaml() == plan_before.to_yaml()
        # change something, then load the file back
        await pilot.press("m", "plus", "b")  # back to the first model (the third is left out)
        await settle(app, pilot)
        assert app.plan_state.to_plan().to_yaml() != plan_before.to_yaml()
        await pilot.press("l")
        await pilot.pause()
        app.screen.query_one("#load-input").value = str(out_yaml)
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.plan_state.to_plan().to_yaml() == plan_before.to_yaml()
        assert app.plan_state.custom is None and app.plan_state.band_mode == 3
        # merge into a temporary directory
        await pilot.press("x")
        await pilot.pause()
        out_dir = tmp_path / "merged"
        app.main.query_one("#merge-output").value = str(out_dir)
        await pilot.press("ctrl+g")
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert not isinstance(app.screen, ErrorDialog), getattr(app.screen, "message", "")
        assert (out_dir / "model.safetensors").is_file()
        inside = Plan.from_yaml((out_dir / "merge_plan.yml").read_text())
        assert inside.to_yaml() == plan_before.to_yaml()
        assert app.last_merge is not None and app.last_merge.output_dir == out_dir
        result = text_of(app.main.query_one("#merge-result-body"))
        assert str(out_dir) in result


async def test_merge_cancel_leaves_no_output(family, tmp_path, monkeypatch):
    import mergescope.merge.run as merge_mod

    real = merge_mod.run_merge

    def slow_merge(plan, output_dir, *, progress=None, should_stop=None, **kw):
        def held(done, total, label):  # after the first tensor, hold until the user cancels (max 10 s)
            progress(done, total, label)
            if done:
                t0 = time.perf_counter()
                while not should_stop() and time.perf_counter() - t0 < 10:
                    time.sleep(0.01)

        return real(plan, output_dir, progress=held, should_stop=should_stop, **kw)

    monkeypatch.setattr(merge_mod, "run_merge", slow_merge)
    app = app_for(family)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("x")
        out_dir = tmp_path / "merged"
        app.main.query_one("#merge-output").value = str(out_dir)
        await pilot.press("ctrl+g")
        await pilot.pause(0.2)
        assert app.running_jobs()
        await pilot.press("escape")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert not out_dir.exists()
        assert not list(tmp_path.glob("*merged*"))  # no temporary directory either
        assert not isinstance(app.screen, ErrorDialog)
        assert "cancelled" in text_of(app.main.query_one("#merge-status"))


async def test_merge_into_an_input_is_one_error_dialog(family):
    app = app_for(family)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("x")
        app.main.query_one("#merge-output").value = family[1][0]  # an input model's directory
        await pilot.press("ctrl+g")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, ErrorDialog)
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(app.screen, ErrorDialog)


async def test_plan_given_on_the_command_line_and_mergekit_style_plan(family, tmp_path):
    """A hand-written mergekit config loads read-only; a table plan loads editable."""
    base, models = family
    hand = tmp_path / "hand.yaml"
    hand.write_text(f"""merge_method: task_arithmetic
base_model: {base}
models:
  - model: {models[0]}
    parameters:
      weight: [{{filter: q_proj, value: 0.3}}, {{value: 1.0}}]
  - model: {models[1]}
    parameters:
      weight: 0.5
""")
    app = MergeScopeApp(base, models, str(hand), blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await settle(app, pilot)
        st = app.plan_state
        assert st.custom is not None  # q_proj is not a group filter: kept verbatim
        assert st.included == [True, True, False]
        assert st.to_plan().to_yaml() == st.custom.to_yaml()
        await pilot.press("e", "plus")
        await pilot.pause()
        assert st.custom is not None  # read-only: a notification, not an edit
        from mergescope.tui.widgets.plan_editor import PlanEditor

        preds = app.main.query_one(PlanEditor).preds
        assert preds is not None
        # the what-if honours the filter: q_proj of model 0 has weight 0.3
        r = app.report
        sites = [s for s in r.sites if s.layer == 1 and s.module == "q_proj"]
        from mergescope.merge.whatif import from_plan

        assert from_plan(r, st.custom).cell(sites).weight[0] == pytest.approx(0.3)
        await pilot.press("R")
        await settle(app, pilot)
        assert app.plan_state.custom is None


async def test_remeasure_at_the_plan_density(family, monkeypatch):
    """Large sets: the user presses r; the plan's models are measured at the plan's density."""
    import mergescope.tui.app as app_mod
    from mergescope.tui.widgets.plan_editor import PlanEditor

    monkeypatch.setattr(app_mod, "AUTO_REMEASURE_BYTES", 0)
    app = app_for(family, sample_plan={"method": "ties", "models": ["ft0", "ft1"], "weight": 1.0, "density": 0.5})
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("e")
        await settle(app, pilot)
        editor = app.main.query_one(PlanEditor)
        assert app.remeasured is None
        assert "r measures" in " ".join(text_of(editor.query_one("#whatif-detail")).split())
        await pilot.press("r")
        await pilot.pause()
        await app.workers.wait_for_complete()
        await settle(app, pilot)
        _check_remeasured(app, editor, family)


async def test_small_sets_are_remeasured_automatically(family):
    from mergescope.tui.widgets.plan_editor import PlanEditor

    app = app_for(family, sample_plan={"method": "ties", "models": ["ft0", "ft1"], "weight": 1.0, "density": 0.5})
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await settle(app, pilot)
        await settle(app, pilot)
        editor = app.main.query_one(PlanEditor)
        _check_remeasured(app, editor, family)
        assert "r measures" not in " ".join(text_of(editor.query_one("#whatif-detail")).split())


def _check_remeasured(app, editor, family):
    assert app.remeasured is not None and app.remeasured.density == 0.5
    assert app.remeasured.models == family[1][:2]
    assert editor.whatif.conflict_report is app.remeasured
    r = [row[0] for row in editor.data.rows].index("L1")
    assert editor.preds[r][0].measured_density == 0.5
    assert editor.preds[r][0].conflict == pytest.approx(app.remeasured.row_cell(1, None).trimmed_sign_conflict)


async def test_unfinished_plan_is_explained_inline(family):
    """slerp without t: the reason shows beside the form (and in the merge tab), not as a modal."""
    from mergescope.tui.widgets.plan_editor import PlanEditor

    app = app_for(family)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("e")
        await settle(app, pilot)
        app.main.query_one(PlanEditor).set_method("slerp")
        app.plan_state.included = [True, False, False]
        app.main.query_one(PlanEditor).changed()
        await settle(app, pilot)
        assert not isinstance(app.screen, ErrorDialog)
        assert "`t`" in text_of(app.main.query_one("#plan-error"))
        app.main.query_one("#global-t").value = "0.3"
        await settle(app, pilot)
        assert text_of(app.main.query_one("#plan-error")).strip() == ""
        assert app.main.query_one(PlanEditor).whatif.method == "slerp"


async def test_a_modules_plan_loads_read_only_with_its_what_if(family, tmp_path):
    base, models = family
    plan = tmp_path / "modules.yaml"
    plan.write_text(f"""merge_method: task_arithmetic
base_model: {base}
modules:
  default:
    parameters: {{weight: 0.25}}
    models:
      - model: {models[0]}
      - model: {models[1]}
""")
    app = MergeScopeApp(base, models, str(plan), blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await settle(app, pilot)
        st = app.plan_state
        assert st.custom is not None and st.custom.modules is not None
        from mergescope.merge.whatif import from_plan

        r = app.report
        sites = [s for s in r.sites if s.layer == 1 and s.module == "q_proj"]
        assert from_plan(r, st.custom).cell(sites).weight[0] == pytest.approx(0.25)


async def test_spectral_heatmaps_with_the_spectral_pass(family):
    """`ui --spectral K` runs the spectral pass with the analysis; ! @ # $ show its metrics per cell."""
    app = app_for(family, spectral=4)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("h")
        await pilot.pause()
        view, hm, rep = app.main.query_one(HeatmapView), app.main.query_one(Heatmap), app.report
        assert rep.spectral is not None and rep.spectral.rank == 4
        for key, metric_id in (
            ("exclamation_mark", "spectral_energy"),
            ("at", "subspace_overlap"),
            ("number_sign", "sti"),
            ("dollar_sign", "sar"),
        ):
            await pilot.press(key)
            await pilot.pause()
            assert view.metric_id == metric_id
        await pilot.press("exclamation_mark", "down", "right")  # L0, q_proj
        await pilot.pause(0.1)
        assert hm.value == pytest.approx(rep.spectral.module_cell(0, "q_proj").spectral_energy(0))
        assert 0 < hm.value <= 1


async def test_spectral_keys_without_the_pass_run_it_on_demand(family, monkeypatch):
    """A spectral key with no spectral pass yet runs it in a worker with progress (the analysis comes
    from the cache), then shows the metric, with its reading in the cell detail and the pass's findings."""
    from mergescope.tui.widgets.progress import JobProgress

    shown = []
    real = JobProgress.update_progress
    monkeypatch.setattr(JobProgress, "update_progress", lambda self, *a, **k: (shown.append(a[2]), real(self, *a, **k)))
    app = app_for(family)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("h")
        await pilot.pause()
        view, hm = app.main.query_one(HeatmapView), app.main.query_one(Heatmap)
        assert app.report.spectral is None
        await pilot.press("dollar_sign")
        assert any("spectral pass" in str(n.message) for n in app._notifications)
        await ready(app, pilot)
        await pilot.pause(0.1)
        assert app.report.spectral is not None and app.report.spectral.rank == 64
        assert view.metric_id == "sar" and shown  # progress was reported
        assert not app.main.query_one(JobProgress).has_class("-running")
        await pilot.press("down", "right")  # L0, q_proj
        await pilot.pause(0.1)
        assert hm.value == pytest.approx(app.report.spectral.module_cell(0, "q_proj").sar(0))
        detail = text_of(app.main.query_one("#heat-detail"))
        assert "subspace alignment ratio" in detail and "good: high" in detail
        codes = {f.code for f in app.report.findings}
        assert codes == {f.code for f in findings_for(app.report)}  # the verdicts now hold the pass's findings
        # a second spectral key shows its metric at once: the pass is not run again
        await pilot.press("number_sign")
        await pilot.pause()
        assert view.metric_id == "sti" and not app.running_jobs()
