"""SVG snapshots of the main views at fixed terminal sizes (pytest-textual-snapshot).

Deterministic by construction: the checkpoints are built from a fixed seed under relative paths
(the app shows paths as given), the analysis cache is warmed first (so the header says "from cache",
not a timing), and the cursor does not blink. Update after reviewing: `pytest --snapshot-update`.
"""

from __future__ import annotations

import pytest
import torch

from mergescope.stats.readiness import analyze
from mergescope.tui.app import MergeScopeApp
from tests.ckpt_utils import make_family

MODELS = ["ft0", "ft1", "ft2"]
SAMPLE = {"method": "ties", "models": ["ft0", "ft1"], "weight": 1.0, "density": 0.2}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    make_family(tmp_path, dtype=torch.float32, n_models=3)
    monkeypatch.chdir(tmp_path)
    analyze("base", MODELS)  # warm cache: no timings on screen
    return tmp_path


def app(**kw) -> MergeScopeApp:
    return MergeScopeApp("base", MODELS, blink=False, remember_set=False, **kw)


async def _settle(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.2)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def test_verdicts(workdir, snap_compare):
    assert snap_compare(app(), run_before=_settle, terminal_size=(120, 40))


def test_heatmap_modules_relative_norm(workdir, snap_compare):
    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("h", "2", "down", "down", "right", "right")
        await pilot.pause()

    assert snap_compare(app(), run_before=run_before, terminal_size=(120, 40))


def test_heatmap_groups_pair_cosine(workdir, snap_compare):
    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("h", "c", "6", "p", "down", "right")
        await pilot.pause()

    assert snap_compare(app(), run_before=run_before, terminal_size=(120, 40))


def test_heatmap_80x24(workdir, snap_compare):
    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("h", "3", "down")
        await pilot.pause()

    assert snap_compare(app(), run_before=run_before, terminal_size=(80, 24))


def test_plan_editor_with_whatif(workdir, snap_compare):
    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("e")
        await _settle(pilot)
        await pilot.press("down", "right", "plus", "plus")
        await _settle(pilot)

    assert snap_compare(app(sample_plan=SAMPLE), run_before=run_before, terminal_size=(120, 40))


def test_plan_editor_80x24(workdir, snap_compare):
    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("e")
        await _settle(pilot)

    assert snap_compare(app(sample_plan=SAMPLE), run_before=run_before, terminal_size=(80, 24))


def test_merge_tab(workdir, snap_compare):
    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("x")
        await _settle(pilot)

    # the default (./merged, absolute) holds the temporary directory's name: a fixed one here
    assert snap_compare(
        app(sample_plan=SAMPLE, output_dir="out/merged"), run_before=run_before, terminal_size=(120, 40)
    )


def test_open_dialog(workdir, snap_compare):
    async def run_before(pilot):
        await pilot.pause()
        pilot.app.screen.query_one("#open-base").value = "base"
        pilot.app.screen.query_one("#open-model-0").value = "ft0"
        await pilot.pause()

    assert snap_compare(MergeScopeApp(blink=False), run_before=run_before, terminal_size=(100, 32))


def test_help_screen(workdir, snap_compare):
    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("h", "question_mark")
        await pilot.pause()

    assert snap_compare(app(), run_before=run_before, terminal_size=(100, 40))


# ---- 80×24 (and the colour scales, the starting plan) ------------------------------------------------
def test_verdicts_80x24(workdir, snap_compare):
    """Two-line headers; the reasons wrap between codes, never inside one."""
    assert snap_compare(app(), run_before=_settle, terminal_size=(80, 24))


def test_heatmap_pair_sign_conflict_centred_on_unrelated(workdir, snap_compare):
    """A fixed scale centred on the 50 % unrelated deltas give: below it blue (✔ the good end), above red."""

    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("h", "8", "down", "right")
        await pilot.pause()

    assert snap_compare(app(), run_before=run_before, terminal_size=(120, 40))


def test_heatmap_100x24_last_row_above_the_scrollbar(workdir, snap_compare):
    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("h", "end", *["right"] * 9)
        await pilot.pause()

    assert snap_compare(app(), run_before=run_before, terminal_size=(100, 24))


def test_plan_editor_starting_plan(workdir, snap_compare):
    """No sample: task arithmetic at 0.5 each, and the note saying where that comes from."""

    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("e")
        await _settle(pilot)

    assert snap_compare(app(), run_before=run_before, terminal_size=(120, 40))


def test_plan_editor_80x24_measured(workdir, snap_compare):
    """At 80 columns w alternates between the prediction and its measured counterpart."""

    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("e")
        await _settle(pilot)
        await pilot.press("w")
        await _settle(pilot)

    assert snap_compare(app(sample_plan=SAMPLE), run_before=run_before, terminal_size=(80, 24))


def test_merge_tab_80x24(workdir, snap_compare):
    """The output directory has a row of its own."""

    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("x")
        await _settle(pilot)

    assert snap_compare(app(sample_plan=SAMPLE, output_dir="out/merged"), run_before=run_before, terminal_size=(80, 24))


def test_help_screen_80x24(workdir, snap_compare):
    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("e", "question_mark")
        await pilot.pause()

    assert snap_compare(app(), run_before=run_before, terminal_size=(80, 24))


# ---- per-layer ratios from gradients: the sensitivity heatmap and the fit panel (the demo family) ------
DEMO_MODELS = ["code", "prose", "dialog"]
DEMO_SAMPLE = {"method": "task_arithmetic", "models": ["code", "prose"], "weight": 0.5}


@pytest.fixture
def demo_workdir(tmp_path, monkeypatch):
    """The demo's checkpoints under short relative names, two 2 KB held-out texts, a warm analysis cache,
    and a fixed amount of free memory (the panels state it)."""
    import mergescope.search.fit as fit
    from mergescope.demo import family_dir, heldout_dir

    for name in ["base", *DEMO_MODELS]:
        (tmp_path / name).symlink_to(family_dir() / name, target_is_directory=True)
    for d in ("code", "prose"):
        (tmp_path / f"{d}.txt").write_bytes((heldout_dir() / f"{d}.txt").read_bytes()[:2000])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fit, "available_bytes", lambda device: 16 << 30)
    analyze("base", DEMO_MODELS)
    return tmp_path


def demo_app(steps: int = 3) -> MergeScopeApp:
    a = MergeScopeApp(
        "base", DEMO_MODELS, blink=False, remember_set=False, sample_plan=DEMO_SAMPLE, texts=["code.txt", "prose.txt"]
    )
    a.fit_steps = steps
    return a


async def _sensitivity(pilot) -> None:
    await _settle(pilot)
    await pilot.press("h", "percent_sign")
    await _settle(pilot)
    await pilot.press("t", "down", "down", "right")  # prose; L1 · attn
    await pilot.pause(0.2)
    pilot.app.clear_notifications()
    await pilot.pause()


async def _fit(pilot) -> None:
    await _settle(pilot)
    await pilot.press("e", "F")
    await _settle(pilot)
    pilot.app.clear_notifications()
    await pilot.pause()


def test_sensitivity_heatmap(demo_workdir, snap_compare):
    """Blue where more of code's weight lowers prose's bits per byte, red where it raises them."""
    assert snap_compare(demo_app(), run_before=_sensitivity, terminal_size=(120, 40))


def test_sensitivity_heatmap_80x24(demo_workdir, snap_compare):
    assert snap_compare(demo_app(), run_before=_sensitivity, terminal_size=(80, 24))


def test_fit_panel(demo_workdir, snap_compare):
    """Memory stated, the loss per step on the fitted and held-out parts, the best table and each text's change."""
    assert snap_compare(demo_app(), run_before=_fit, terminal_size=(120, 40))


def test_fit_panel_80x24(demo_workdir, snap_compare):
    assert snap_compare(demo_app(), run_before=_fit, terminal_size=(80, 24))
