"""Bad input in the app: one dialog with the same one-line message the CLI prints."""

import shutil

import pytest

from mergescope.demo import family_dir
from mergescope.tui.app import MergeScopeApp
from mergescope.tui.dialogs.error import ErrorDialog

pytestmark = pytest.mark.asyncio
SIZE = (120, 40)


async def _settle(app, pilot):
    for _ in range(400):
        await pilot.pause(0.02)
        if isinstance(app.screen, ErrorDialog) or app.report is not None:
            await app.workers.wait_for_complete()
            await pilot.pause()
            return
    raise AssertionError("neither a report nor an error dialog")


async def test_a_corrupt_checkpoint_is_one_dialog(tmp_path):
    bad = tmp_path / "code"
    shutil.copytree(family_dir() / "code", bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])  # a truncated download
    app = MergeScopeApp(str(family_dir() / "base"), [str(bad)], blink=False, remember_set=False)
    async with app.run_test(size=SIZE) as pilot:
        await _settle(app, pilot)
        assert isinstance(app.screen, ErrorDialog)
        msg = app.screen.message
        assert "model.safetensors" in msg and "truncated" in msg and len(msg.splitlines()) == 1


@pytest.mark.slow
async def test_a_merge_with_a_model_of_another_base_is_refused_in_a_dialog(tmp_path):
    fam = family_dir()
    models = [str(fam / m) for m in ("code", "other_ft")]
    app = MergeScopeApp(str(fam / "base"), models, blink=False, remember_set=False, output_dir=str(tmp_path / "out"))
    async with app.run_test(size=SIZE) as pilot:
        await _settle(app, pilot)
        assert app.plan_state.included == [True, False]  # the plan starts without it ...
        await pilot.press("e", "m", "i")  # ... the user puts it in
        await _settle(app, pilot)
        assert app.plan_state.included == [True, True]
        await pilot.press("x")
        await pilot.press("ctrl+g")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, ErrorDialog)
        assert "different-base" in app.screen.message and "leave that model out" in app.screen.message
        assert not (tmp_path / "out").exists()
