"""What a newcomer meets in the app: the demo's plan merges, the starting plan and its keys, where merges
go, `r`'s answers (and the help's sections), and heatmap colours that mean the same in every view."""

from __future__ import annotations

import math

import pytest
from rich.text import Text

from mergescope.demo import family_dir
from mergescope.io.errors import InputError
from mergescope.tui.app import MergeScopeApp
from mergescope.tui.dialogs.error import ErrorDialog
from mergescope.tui.dialogs.prompt import ValuePrompt
from mergescope.tui.state.heatdata import Grid
from mergescope.tui.state.scales import DATA, Scale, conflict_scale, independent_conflict
from mergescope.tui.widgets.heatmap import DIVERGING, cell_styles, level
from mergescope.tui.widgets.legend import legend_text
from tests.test_tui import ready, text_of

SIZE = (120, 40)
FAM = family_dir()


async def settle(app, pilot) -> None:
    await ready(app, pilot)
    await pilot.pause(0.15)  # the debounced what-if
    await ready(app, pilot)


def notes(app) -> str:
    return "\n".join(str(n.message) for n in app._notifications)


# ---- the demo: plan → merge → result ------------------------------------------------------------
@pytest.mark.asyncio
async def test_the_demo_plan_merges_and_shows_the_result_and_card(tmp_path):
    """`mergescope demo` analyses five models and plans code + prose: other_ft (another base, not in the
    plan) must not refuse the merge, and the merge tab shows the result and the model card."""
    from mergescope.tui.commands.demo import build_app

    out = tmp_path / "merged"
    app = build_app(blink=False, output_dir=str(out))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert any(f.code == "different-base" for f in app.report.findings)  # the analysis saw other_ft
        await pilot.press("e")
        await settle(app, pilot)
        st = app.plan_state
        assert st.method == "ties" and [st.models[i].rsplit("/", 1)[-1] for i in st.chosen()] == ["code", "prose"]
        assert "demo's sample" in text_of(app.main.query_one("#plan-toolbar"))
        await pilot.press("x", "ctrl+g")
        await settle(app, pilot)
        assert not isinstance(app.screen, ErrorDialog), getattr(app.screen, "message", "")
        assert (out / "model.safetensors").is_file()
        shown = text_of(app.main.query_one("#merge-result-body"))
        assert f"merged into {out}" in shown
        assert "Analysed by mergescope" in shown and "code" in shown and "prose" in shown  # the card
        assert "other_ft" not in shown and "different-base" not in shown  # only the plan's inputs
        assert "done" in text_of(app.main.query_one("#merge-status"))
        # the findings name models, not paths, and count in words
        asym = next(f for f in app.report.findings if f.code == "magnitude-asymmetry")
        assert "the norm of code's" in asym.message
        cells = [f.message for f in app.report.findings if f.code == "high-sign-conflict" and f.model is None]
        assert all(m.startswith("1 cell keeps") or not m.startswith("1 ") for m in cells) and cells


# ---- the starting plan, f, where merges go ----------------------------------------------------------
@pytest.mark.asyncio
async def test_the_plan_starts_at_half_weight_and_f_sets_one_model_everywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    models = [str(FAM / m) for m in ("code", "prose", "other_ft")]
    app = MergeScopeApp(str(FAM / "base"), models, blink=False, remember_set=False)
    app.session.auto_remeasure_bytes = 0  # no re-measure at each new density: not what this test is about
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        st = app.plan_state
        assert st.method == "task_arithmetic" and st.included == [True, True, False]  # other_ft: an error
        assert {st.cell_value("weight", r, c, i) for r in st.rows() for c in st.columns() for i in range(3)} - {
            None
        } == {0.5}
        assert app.main.query_one("#merge-output").value == str(tmp_path / "merged")  # here, not beside the inputs
        await pilot.press("e")
        await settle(app, pilot)
        bar = text_of(app.main.query_one("#plan-toolbar"))
        assert "weight 0.5 each" in bar and "README" in bar and "other_ft" in bar
        # f: one model's weight in every cell
        await pilot.press("down", "right", "f")
        await pilot.pause()
        assert isinstance(app.screen, ValuePrompt) and "every cell" in text_of(app.screen)
        app.screen.query_one("#value-input").value = "0.3"
        await pilot.press("enter")
        await settle(app, pilot)
        cells = [(r, c) for r in st.rows() for c in st.columns() if st.keys_of(r, c)]
        assert {st.cell_value("weight", r, c, 0) for r, c in cells} == {0.3}
        assert {st.cell_value("weight", r, c, 1) for r, c in cells} == {0.5}
        assert "README" not in text_of(app.main.query_one("#plan-toolbar"))  # the note goes with the first edit
        # ... and the density when that is the table being edited
        await pilot.press("t")
        await settle(app, pilot)
        assert app.plan_state.method == "ties"
        await pilot.press("a")
        await settle(app, pilot)
        assert app.editor.param == "density"
        await pilot.press("f")
        await pilot.pause()
        app.screen.query_one("#value-input").value = "0.7"
        await pilot.press("enter")
        await settle(app, pilot)
        st = app.plan_state
        assert {st.cell_value("density", r, c, 0) for r, c in cells} == {0.7}
        assert {st.cell_value("density", r, c, 1) for r, c in cells} == {app.report.density}
        assert {st.cell_value("weight", r, c, 0) for r, c in cells} == {0.3}  # survived the method switch
        await pilot.press("f")
        await pilot.pause()
        app.screen.query_one("#value-input").value = "1.5"  # out of range: the prompt says so and stays
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ValuePrompt) and "out of range" in text_of(app.screen.query_one("#value-error"))
        await pilot.press("escape")
        await settle(app, pilot)
        assert {st.cell_value("density", r, c, 0) for r, c in cells} == {0.7}
        with pytest.raises(InputError, match="density must be ≤ 1"):  # and the state refuses it too
            st.set_everywhere("density", 0, 1.5)
        await pilot.press("x", "ctrl+g")
        await settle(app, pilot)
        assert not isinstance(app.screen, ErrorDialog), getattr(app.screen, "message", "")
        assert (tmp_path / "merged" / "model.safetensors").is_file()


# ---- r -----------------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_remeasure_always_answers(small_family):
    from mergescope.tui.dialogs.help import binding_sections

    base, models = small_family
    app = MergeScopeApp(base, models, blink=False, remember_set=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.session.auto_remeasure_bytes = 0  # as for a big set: nothing is re-measured unasked
        await pilot.press("e", "r")
        await settle(app, pilot)
        assert "already measured: the analysis measured ft0 + ft1 + ft2 at density 0.2" in notes(app)
        await pilot.press("m", "m", "i")  # ft2 out: the analysis measured more models than the plan's
        await settle(app, pilot)
        assert app.session.remeasured is None
        await pilot.press("r")
        assert "measuring ft0 + ft1 at density 0.2" in notes(app)
        await settle(app, pilot)
        assert "re-measured ft0 + ft1 at density 0.2" in notes(app)
        assert app.session.remeasured is not None and app.session.conflict_report() is app.session.remeasured
        await pilot.press("r")
        await pilot.pause()
        assert "already measured: the what-if uses ft0 + ft1 at density 0.2" in notes(app)
        # and the help lists each section once (the heatmap view and its map used to share a title)
        titles = [t for t, _ in binding_sections(app.main)]
        assert len(titles) == len(set(titles)) and "Heatmap" in titles and "Plan editor" in titles
        assert any(t.startswith("Moving in a map") for t in titles)


# ---- colour scales ------------------------------------------------------------------------------------
def test_unrelated_deltas_conflict_by_the_number_of_models():
    assert independent_conflict([1.0, 1.0]) == pytest.approx(0.5)
    assert independent_conflict([1.0] * 5) == pytest.approx(1 - 2**-4)
    assert independent_conflict([0.2, 0.2]) == pytest.approx(0.5)  # among coordinates both keep
    # five models each keeping 20 %: mostly two kept (50 %), sometimes three (75 %) ...
    assert 0.5 < independent_conflict([0.2] * 5) < 0.6
    assert independent_conflict([1.0, 0.0]) == pytest.approx(0.5)  # nothing to compare: the two-model value


def test_a_sign_conflict_below_unrelated_reads_as_agreement_not_as_the_maximum():
    """40 % pairwise conflict, the view's highest, used to be its brightest colour; on the fixed scale
    centred on 50 % it is on the agreeing (good, blue) side, in 16 colours too, with its glyph."""
    scale = conflict_scale([1.0, 1.0])
    grid = Grid("t", ["L0", "L1"], ["all"], [[0.38], [0.40]], pct=True, scale=scale)
    lo, hi = grid.bounds()
    assert (lo, hi) == (0.0, 1.0)
    old = level(0.40, *Grid("t", ["L0", "L1"], ["all"], [[0.38], [0.40]], scale=DATA).bounds(), DATA)
    assert old == 7  # the data scale: the top of the palette
    mid = len(DIVERGING) // 2
    assert level(0.40, lo, hi, scale) < mid == level(0.5, lo, hi, scale) < level(0.6, lo, hi, scale)
    styles = cell_styles(True, flipped=scale.flipped)
    blues, reds = set(DIVERGING[mid + 1 :]), set(DIVERGING[:mid])
    assert styles[level(0.10, lo, hi, scale)][0].color.name in blues
    assert styles[level(0.90, lo, hi, scale)][0].color.name in reds
    low = cell_styles(True, low=True, flipped=scale.flipped)
    assert low[level(0.10, lo, hi, scale)][0].color.name in ("blue", "bright_blue", "cyan")
    assert low[level(0.90, lo, hi, scale)][0].color.name in ("red", "bright_red", "magenta")
    legend = legend_text(grid).plain
    assert legend.startswith("✔ 0% ") and "100%" in legend and "50% = unrelated deltas" in legend
    assert "high: conflict" in legend


def test_scales_fixed_centred_and_data():
    cos = Scale(-1.0, 1.0, centre=0.0, good="high")
    assert cos.position(0.0, -1, 1) == 0.5 and cos.position(0.5, -1, 1) == 0.75
    ratio = Scale(0.1, 10.0, centre=1.0, log=True)
    assert ratio.position(1.0, 0.1, 10) == 0.5 and ratio.position(10.0, 0.1, 10) == 1.0
    assert ratio.position(0.5, 0.1, 10) == pytest.approx(0.5 - 0.5 * math.log10(2))
    assert ratio.position(math.inf, 0.1, 10) == 1.0
    norm = Scale(lo=0.0)
    assert norm.ends([0.2, 0.8]) == (0.0, 0.8)
    legend = legend_text(Grid("t", ["a"], ["all"], [[0.8]], scale=Scale(lo=0.0, good="low"))).plain
    assert "scaled to this view" in legend and legend.startswith("✔ ")
    assert Text.from_markup("x")  # rich is importable (legend renders Text)


def test_every_metric_says_how_to_read_it_and_where_it_is_good(small_family):
    from mergescope.stats.readiness import analyze
    from mergescope.tui.state.metrics import METRICS

    base, models = small_family
    report = analyze(base, models)
    for m in METRICS:
        sc = m.scale_for(report, 0, 1)
        assert m.reading and (sc.low_word or sc.high_word), m.id
    pair = next(m for m in METRICS if m.id == "sign_conflict_pair").scale_for(report, 0, 1)
    assert pair.centre == pytest.approx(0.5, abs=0.01)  # dense deltas
    whole = next(m for m in METRICS if m.id == "sign_conflict").scale_for(report, 0, 1)
    assert whole.centre == pytest.approx(0.75, abs=0.01)  # three dense models
