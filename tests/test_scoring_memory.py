"""Scoring in bounded memory: the loss from the final hidden states a block of logits at a time,
windows whose activations fit a budget, peak memory measured on a model with a large vocabulary and a
long context (built small with transformers' own classes), and the backend refused from the config
before any text is tokenised."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from mergescope.demo import family_dir
from mergescope.io.errors import InputError
from mergescope.score.backends import score_models
from mergescope.score.model import open_model
from mergescope.score.result import bits_per_byte
from mergescope.score.tokens import tokenizer_for
from mergescope.score.windows import ACTIVATIONS, LOSS_BLOCK, nll_from_logits, token_nll, window_budget

TEXT = ("The quick brown fox jumps over the lazy dog. " * 12 + "Ünïcödé — 🙂 done.\n").encode()
GEMMA_270M = {
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
}


def _save(hf, d):
    """A transformers model saved in float32 with the demo's byte-level tokenizer.json."""
    hf.save_pretrained(d)
    shutil.copyfile(family_dir() / "base" / "tokenizer.json", d / "tokenizer.json")
    return d


def _gemma3(d, vocab=300, context=64, softcap=30.0, seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=context,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=softcap,
    )
    hf = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # logits large enough that the softcapping changes them
        hf.get_output_embeddings().weight.mul_(8.0)
    return _save(hf, d), hf.eval()


def _reference(hf, path, window):
    """Bits per byte from the model's own [tokens, vocab] logits (the old backend's way)."""
    m = open_model(path)
    enc = tokenizer_for(m.tokenizer_dir, m.config, "t").encode(TEXT)
    m.close()
    nats = token_nll(nll_from_logits(lambda ids: hf(input_ids=ids).logits), enc.ids, window, window)
    return bits_per_byte(nats, enc, False).value


def test_window_budget_bounds_the_activations():
    window, batch = window_budget(GEMMA_270M, 32768)
    assert 1024 < window < 32768 and window % 64 == 0
    per_token = 4 * (3 * 2048 + 8 * 640 + 2 * (4 + 2) * 256)
    assert per_token * window + 8 * window**2 <= ACTIVATIONS < per_token * (window + 64) + 8 * (window + 64) ** 2
    assert batch == window  # one such window per batch
    assert window_budget(GEMMA_270M, 128)[0] == 128  # a short context is the window
    assert window_budget(GEMMA_270M, 32768, eager=True)[0] < window  # every head's scores count


def test_blocked_head_equals_the_models_own_logits_with_softcapping(tmp_path, monkeypatch):
    """Gemma-style final logit softcapping: the blocked loss equals the full logits' loss to 1e-5 bits per
    byte, and so does the fallback for a forward the probe does not recognise."""
    import mergescope.score.transformers_backend as tb
    import mergescope.score.windows as windows_mod

    path, hf = _gemma3(tmp_path / "g")
    with torch.no_grad():
        want = _reference(hf, path, 64)
    monkeypatch.setattr(windows_mod, "LOSS_BLOCK", 300 * 5)  # 5 rows per block: many blocks, a ragged last one
    got = score_models([str(path)], {"t": TEXT}, backend="transformers")[str(path)]["t"]
    assert abs(got.value - want) <= 1e-5, (got.value, want)
    assert (got.window, got.stride, got.context) == (64, 63, 64)
    m = open_model(path)
    assert tb.prepare(m, "cpu").blocked
    monkeypatch.setattr(tb, "_after_head", lambda config: lambda logits: logits)  # forget the softcapping
    fallback = tb.prepare(m, "cpu")
    m.close()
    assert not fallback.blocked  # the probe saw the difference: the model's own logits are used
    again = score_models([str(path)], {"t": TEXT}, backend="transformers")[str(path)]["t"]
    assert abs(again.value - want) <= 1e-5, (again.value, want)


def test_a_merge_in_memory_scores_like_its_directory(tmp_path):
    """The transformers model built from tensors in memory (a merge, nothing written) scores the same."""
    from mergescope.score.model import Model

    path, _ = _gemma3(tmp_path / "g", softcap=None)
    m = open_model(path)
    mem = Model("in memory", {k: m.tensors[k] for k in m.tensors.names()}, m.config, m.tokenizer_dir)
    a = score_models([str(path)], {"t": TEXT}, backend="transformers")[str(path)]["t"]
    b = score_models([mem], {"t": TEXT}, backend="transformers")["in memory"]["t"]
    m.close()
    assert abs(a.value - b.value) <= 1e-6


def test_builtin_refuses_an_unsupported_architecture_before_tokenising(tmp_path, monkeypatch):
    """No tokenizer files and a vocabulary that is not byte-level: tokenising would fail, so the error
    that comes must be the architecture's, decided first."""
    from safetensors.torch import save_file

    import mergescope.score.backends as backends

    d = tmp_path / "gemma"
    d.mkdir()
    save_file({"model.embed_tokens.weight": torch.zeros(300, 8)}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "gemma3_text", "vocab_size": 300}))
    calls = []
    monkeypatch.setattr(backends, "tokenizer_for", lambda *a: calls.append(a))
    with pytest.raises(InputError, match="no scoring backend runs this model.*gemma3_text"):
        score_models([str(d)], {"t": TEXT}, backend="builtin")
    assert calls == []


CHILD = r"""
import json, resource, sys
import transformers.models.llama.modeling_llama  # imported before the baseline: code, not scoring
from mergescope.score.backends import score_models
path, n = sys.argv[1], int(sys.argv[2])
text = (b"The quick brown fox jumps over the lazy dog. " * (n // 45 + 1))[:n]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
s = score_models([path], {"t": text}, backend="transformers")[path]["t"]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"base": base, "peak": peak, "window": s.window, "stride": s.stride, "bpb": s.value}))
"""


@pytest.mark.slow
def test_peak_memory_is_the_weights_plus_a_fixed_budget(tmp_path):
    """Vocabulary 200 000 and a 32 768-token context, built small (a wide MLP, so that the activation
    budget, not the context, sets the window): scoring 2 048 tokens peaks within twice the weights plus a
    fixed budget. Taking the loss from the whole logits of one window of the text would need 1.6 GB for
    them and as much again for their log-softmax."""
    transformers = pytest.importorskip("transformers")
    if sys.platform != "linux":
        pytest.skip("ru_maxrss is in kilobytes on Linux only")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=200_000,
        hidden_size=16,
        intermediate_size=32768,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=32768,
    )
    path = _save(transformers.AutoModelForCausalLM.from_config(cfg), tmp_path / "wide")
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), "2048"], capture_output=True, text=True, timeout=600, check=True
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    budget = ACTIVATIONS + 4 * 4 * LOSS_BLOCK  # activations, and a block of logits with its softmax and copies
    used = r["peak"] - r["base"]
    assert used <= 2 * weights + budget, (
        f"{used / 2**20:.0f} MB > 2 x {weights / 2**20:.0f} MB + {budget / 2**20:.0f} MB"
    )
    window = window_budget(cfg.to_dict(), 32768)[0]
    assert r["window"] == window < 2048 and r["stride"] == window - 1  # two windows: the budget chose them


def test_eval_prints_the_windows(tmp_path, capsys):
    from mergescope.tui.cli import main

    (tmp_path / "t.txt").write_bytes(TEXT)
    base = family_dir() / "base"
    assert main(["eval", str(base), "--text", str(tmp_path / "t.txt")]) == 0
    assert "windows of 128 tokens every 127 (the model's context)" in capsys.readouterr().out
    assert (
        main(
            [
                "eval",
                str(base),
                "--text",
                str(tmp_path / "t.txt"),
                "--context",
                "64",
                "--json",
                str(tmp_path / "s.json"),
            ]
        )
        == 0
    )
    assert "windows of 64 tokens every 63 (--context; the model's context is 128)" in capsys.readouterr().out
    score = json.loads((tmp_path / "s.json").read_text())["scores"][0]
    assert (score["window"], score["stride"], score["context"]) == (64, 63, 128)
