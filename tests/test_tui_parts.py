"""The explorer's parts on their own: the session's decisions, the plan editor in a bare app, the
command palette built from the bindings, the heatmap's bounded strip cache."""

from __future__ import annotations

import pytest
from textual.app import App

from mergescope.stats.readiness import analyze
from mergescope.tui.state.heatdata import Grid
from mergescope.tui.state.plan_state import state_for_report
from mergescope.tui.state.recent import ModelSet
from mergescope.tui.state.session import Session
from mergescope.tui.widgets.heatmap import Heatmap
from mergescope.tui.widgets.plan_editor import PlanEditor

SIZE = (120, 40)
SAMPLE = {"method": "ties", "models": ["ft0", "ft1"], "weight": 1.0, "density": 0.5}


async def settled(app, pilot) -> None:
    """Workers done and their messages handled (the debounced what-if included)."""
    await pilot.pause(0.15)
    await app.workers.wait_for_complete()
    await pilot.pause()


def test_one_remeasure_target_for_every_plan(small_family, tmp_path):
    """`r` and the automatic re-measure read one decision: the plan's models, at the plan's density
    when the method trims by magnitude (else the analysis density); hand-written plans are resolved."""
    base, models = small_family
    report = analyze(base, models)
    session = Session(sample_plan=SAMPLE, auto_remeasure_bytes=1 << 30)
    session.model_set = ModelSet(base, models, None)
    assert session.analysed(report) is None
    target = session.remeasure_target()
    assert (target.models, target.density, target.uniform) == (models[:2], 0.5, True)
    assert session.auto_remeasure() == target  # a small set: measured unasked
    st = session.plan_state
    table = st.table("density")
    table[next(iter(table))][0] = 0.3  # one cell differs: no single density
    target = session.remeasure_target()
    assert not target.uniform and target.density == report.density
    st.choose_method("task_arithmetic")  # no trim: the density does not matter
    target = session.remeasure_target()
    assert target.uniform and target.density == report.density and not target.measured_by(report)
    st.included = [True] * 3
    assert session.remeasure_target().measured_by(report) and session.auto_remeasure() is None
    hand = tmp_path / "hand.yaml"
    hand.write_text(f"""merge_method: ties
base_model: {base}
parameters:
  density: 0.4
models:
  - model: {models[0]}
    parameters:
      weight: [{{filter: q_proj, value: 0.3}}, {{value: 1.0}}]
  - model: {models[2]}
    parameters:
      weight: 1.0
""")
    assert session.load_plan(str(hand)).custom is not None
    target = session.remeasure_target()
    assert (target.models, target.density) == ([models[0], models[2]], 0.4)
    assert session.auto_remeasure() is None  # hand-written plans are re-measured on request (r)


@pytest.mark.asyncio
async def test_plan_editor_is_handed_its_state_and_posts_messages(small_family):
    """The editor works in any app: it is handed a report and a PlanState, edits that state, and says
    what happened with messages; problems are shown through `show_problem`."""
    report = analyze(*small_family)
    state = state_for_report(report)

    class Host(App):
        def __init__(self) -> None:
            super().__init__()
            self.heard: list[str] = []

        def compose(self):
            yield PlanEditor()

        def on_plan_editor_changed(self, _):
            self.heard.append("changed")

        def on_plan_editor_remeasure_requested(self, _):
            self.heard.append("remeasure")

        def on_plan_editor_reset_requested(self, _):
            self.heard.append("reset")

    host = Host()
    async with host.run_test(size=SIZE) as pilot:
        editor = host.query_one(PlanEditor)
        editor.show(report, state)
        await pilot.pause()
        host.query_one("#ratio-table").focus()
        await pilot.press("down", "right", "plus", "t", "r", "R")
        await pilot.pause()
        assert state.value_at("weight", 0, "attn", 0) == pytest.approx(1.05)
        assert state.method == "ties"  # a sparsifying method starts at the analysis density
        assert state.value_at("density", 0, "mlp", 0) == pytest.approx(report.density)
        assert host.heard == ["changed", "changed", "remeasure", "reset"]
        editor.show_problem("weight: not a number")
        assert "✖ weight: not a number" in str(editor.query_one("#plan-error").render())


@pytest.mark.asyncio
async def test_command_palette_comes_from_the_bindings(small_family):
    """Every described binding of the app's views is a palette command (named by its tooltip or
    description) that runs the binding's action on its tab."""
    from mergescope.tui.app import MergeScopeApp
    from mergescope.tui.dialogs.help import key_label, palette_entries
    from mergescope.tui.screens.main import MainScreen
    from mergescope.tui.widgets.heatmap_view import HeatmapView
    from mergescope.tui.widgets.merge_view import MergeView

    app = MergeScopeApp(*small_family, blink=False, remember_set=False)
    async with app.run_test(size=SIZE) as pilot:
        await settled(app, pilot)
        entries = palette_entries(app.screen)
        offered = {(type(node), b.id) for _, _, node, b in entries}
        for cls in (MergeScopeApp, MainScreen, HeatmapView, PlanEditor, MergeView):
            for b in cls.BINDINGS:
                assert (cls, b.id) in offered, b
        assert all(help == f"key {key_label(b.key)}" for _, help, _, b in entries)
        commands = list(app.get_system_commands(app.screen))
        titles = [c.title for c in commands]
        assert len(titles) == len(set(titles))  # ours replace Textual's "Keys" and "Quit"
        for title in (
            "Keys",
            "Cancel the running job",
            "Show verdicts",
            "Heatmap: next model",
            "Heatmap: toggle module/group columns",
            "Plan: next method",
            "Plan: increase the selected ratio",
        ):
            assert title in titles
        await next(c for c in commands if c.title == "Plan: next method").callback()
        await settled(app, pilot)
        assert app.main.query_one("#tabs").active == "plan"
        assert app.plan_state.method == "ties"


@pytest.mark.asyncio
async def test_heatmap_strip_cache_stays_bounded():
    """Paging through a grid far taller than the screen keeps at most STRIP_CACHE_ROWS rendered rows."""
    rows = [f"L{i}" for i in range(2000)]
    grid = Grid("t", rows, ["all", "a", "b"], [[(r % 97) / 97, 0.5, None] for r in range(2000)])

    class HeatApp(App):
        def compose(self):
            yield Heatmap(grid)

    app = HeatApp()
    async with app.run_test(size=(40, 20)) as pilot:
        hm = app.query_one(Heatmap)
        hm.focus()
        await pilot.pause()
        await pilot.press(*["pagedown"] * 20)
        await pilot.pause()
        assert hm.cursor[0] > Heatmap.STRIP_CACHE_ROWS  # more rows were drawn than the bound
        assert 0 < len(hm._cache) <= Heatmap.STRIP_CACHE_ROWS
        assert hm.cursor[0] in hm._cache and 1 not in hm._cache  # the latest rows stay, the first went
