"""The plan editor's "tune this table" panel (O): trials run in a worker and are plotted as they end,
Enter loads the best table into the editor, Esc stops a running search and then closes without a change.

Tiny byte-level Llamas (vocab 256, no tokenizer files: the `small_family` fixture's vocab-40 models
cannot be scored) and short texts keep a trial near 0.1 s."""

from __future__ import annotations

import copy

import pytest
from textual.worker import WorkerFailed, WorkerState

pytest.importorskip("optuna", reason="the tune extra is not installed: pip install -e '.[tune]'")

from mergescope.tui.app import MergeScopeApp  # noqa: E402
from mergescope.tui.dialogs.tune import TuneScreen  # noqa: E402
from mergescope.tui.state.tuning import state_table  # noqa: E402
from tests.ckpt_utils import make_finetune, make_llama  # noqa: E402

SIZE = (120, 40)
SAMPLE = {"method": "task_arithmetic", "models": ["ft0", "ft1"], "weight": 1.0}
TEXT = b"def add(a, b):\n    return a + b\n\n" * 8
pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("tunetui")
    base = make_llama(root / "base", n_layers=2, hidden=16, vocab=256, seed=0)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (base / f).unlink(missing_ok=True)
    for i in range(2):
        make_finetune(base, root / f"ft{i}", scale=0.01 * (i + 1), seed=i + 1)
    (root / "a.txt").write_bytes(TEXT)
    return root


@pytest.fixture
def here(fam, monkeypatch):
    monkeypatch.chdir(fam)
    return fam


def app_for(texts=("a.txt",), trials: int = 3) -> MergeScopeApp:
    app = MergeScopeApp("base", ["ft0", "ft1"], blink=False, remember_set=False, sample_plan=SAMPLE, texts=list(texts))
    app.tune_trials, app.tune_seed = trials, 0
    return app


async def settle(app, pilot) -> None:
    for _ in range(2):
        try:
            await app.workers.wait_for_complete()
        except WorkerFailed:
            pass
        await pilot.pause(0.15)  # the debounced what-if
    await pilot.pause()


async def open_panel(app, pilot) -> TuneScreen:
    await settle(app, pilot)
    await pilot.press("e", "O")
    await pilot.pause()
    assert isinstance(app.screen, TuneScreen)
    return app.screen


async def test_tune_panel_runs_trials_and_enter_loads_the_best_table(here):
    app = app_for(trials=3)
    async with app.run_test(size=SIZE) as pilot:
        panel = await open_panel(app, pilot)
        assert panel.job.param == "weight" and panel.job.band_mode == app.plan_state.band_mode
        await settle(app, pilot)
        assert not panel.running and panel.result is not None and not panel.result.stopped
        assert len(panel.trials) == 3
        best = panel.best()
        assert best is not None and best.value == panel.result.best.value
        plotted = panel.query_one("#tune-plot").plt
        assert plotted is not None
        want = panel.best_table()
        before = state_table(app.plan_state, panel.job)
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(app.screen, TuneScreen)
        got = state_table(app.plan_state, panel.job)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-6)
        assert (got != before) == (best.number != 0)  # trial 0 is the table as it was
        assert any(
            "tuned weight table loaded" in n.message and f"{best.value:.4f}" in n.message for n in app._notifications
        )


async def test_esc_stops_the_search_and_a_second_esc_closes_without_a_change(here):
    app = app_for(trials=200)
    async with app.run_test(size=SIZE) as pilot:
        panel = await open_panel(app, pilot)
        before = copy.deepcopy(app.plan_state.tables)
        for _ in range(200):
            if panel.trials:
                break
            await pilot.pause(0.05)
        assert panel.trials and panel.running
        await pilot.press("escape")
        assert isinstance(app.screen, TuneScreen)  # the first Esc stops, it does not close
        await settle(app, pilot)
        assert panel.worker.state == WorkerState.SUCCESS
        assert not panel.running and panel.result.stopped and len(panel.trials) < 200
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, TuneScreen)
        assert app.plan_state.tables == before


async def test_no_texts_says_so_naming_eval_text(here):
    app = app_for(texts=())
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("e", "O")
        await pilot.pause()
        assert not isinstance(app.screen, TuneScreen)
        assert any("--eval-text" in n.message for n in app._notifications)
