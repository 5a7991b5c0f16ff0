"""The plan editor offers the vocabulary choice when the models' vocabularies differ (key k)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergescope.demo import family_dir
from mergescope.tui.app import MergeScopeApp

pytestmark = pytest.mark.asyncio


def _chat_model(tmp_path):
    d = tmp_path / "chat"
    shutil.copytree(family_dir() / "code", d)
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["added_tokens"] = [
        {
            "id": 256,
            "content": "<|im_start|>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
    ]
    (d / "tokenizer.json").write_text(json.dumps(tok))
    sd = load_file(str(d / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        sd[name] = torch.cat([sd[name], sd[name][:1]])
    save_file(sd, str(d / "model.safetensors"))
    cfg = json.loads((d / "config.json").read_text())
    cfg["vocab_size"] = 257
    (d / "config.json").write_text(json.dumps(cfg))
    return d


async def test_vocabulary_key_cycles_donor_union_base(tmp_path):
    fam = family_dir()
    app = MergeScopeApp(
        str(fam / "base"), [str(fam / "prose"), str(_chat_model(tmp_path))], blink=False, remember_set=False
    )
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(400):
            await pilot.pause(0.02)
            if app.report is not None:
                break
        await app.workers.wait_for_complete()
        await pilot.press("e")
        await pilot.pause()
        toolbar = str(app.main.query_one("#plan-toolbar").render())
        assert "vocab: donor (k)" in toolbar
        await pilot.press("k")
        await pilot.pause()
        assert app.session.current_plan().tokenizer_source == "union"
        await pilot.press("k")
        assert app.session.current_plan().tokenizer_source == "base"
        await pilot.press("k")
        assert app.session.current_plan().tokenizer_source is None
