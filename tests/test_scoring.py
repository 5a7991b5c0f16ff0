"""Scores: bits per byte accounting, tokenizers, backends (built-in vs transformers), LoRA, `mergescope eval`."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mergescope.io.errors import InputError
from mergescope.score.backends import score_models
from mergescope.score.model import open_model
from mergescope.score.texts import read_text
from mergescope.score.tokens import ByteTokenizer, tokenizer_for
from mergescope.score.windows import nll_from_logits, token_nll, windows
from mergescope.tui.cli import main
from tests.ckpt_utils import llama_config, load_state, lora_delta, make_llama, make_lora, write_bpe_tokenizer

TEXT = ("The quick brown fox jumps over the lazy dog. " * 12 + "Ünïcödé — 🙂 done.\n").encode()


@pytest.fixture(scope="module")
def bytes_llama(tmp_path_factory):
    """A random byte-level Llama (vocab 256, no tokenizer files)."""
    d = make_llama(tmp_path_factory.mktemp("bl") / "m", n_layers=2, hidden=16, vocab=256, seed=3)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).unlink(missing_ok=True)
    return d


def _bpe_tokenizer(d: Path, bos: bool) -> int:
    return write_bpe_tokenizer(d, TEXT.decode(), bos)


def test_every_target_is_scored_once():
    for n, ctx, stride in [
        (300, 128, 64),
        (256, 128, 64),
        (1000, 100, 37),
        (50, 128, 64),
        (129, 128, 128),
        (1000, 128, 128),
        (700, 64, 64),
    ]:
        seen = []
        for s, first in windows(n, ctx, stride):
            seen += list(range(first, min(s + ctx, n)))
        assert seen == list(range(1, n)), (n, ctx, stride)


def test_uniform_model_scores_exactly_eight_bits_per_byte(bytes_llama):
    enc = ByteTokenizer().encode(TEXT)

    def flat(ids):
        return torch.zeros(*ids.shape, 256)

    nats = token_nll(nll_from_logits(flat), enc.ids, 64, 16)
    nll, count = float(np.nansum(nats)), int(np.isfinite(nats).sum())
    assert count == len(TEXT) - 1 == enc.scored_bytes
    assert nll / math.log(2) / enc.scored_bytes == pytest.approx(8.0, rel=1e-6)


@pytest.mark.parametrize("bos", [False, True])
def test_bpe_tokens_cover_the_right_bytes(tmp_path, bos):
    vocab = _bpe_tokenizer(tmp_path, bos)
    tok = tokenizer_for(tmp_path, {"vocab_size": vocab}, "m")
    enc = tok.encode(TEXT)
    assert tok.has_tokens and len(enc.ids) < len(TEXT) // 2  # merges happened
    if bos:
        assert enc.ids[0] == 1 and enc.scored_bytes == len(TEXT)  # BOS predicts every text token
    else:
        first = tok.tok.decode([enc.ids[0]]).encode()
        assert enc.unscored_bytes == len(first) > 0
    # a random model with this vocabulary: scored, tokens and bytes consistent
    m = make_llama(tmp_path / "m", n_layers=1, hidden=16, vocab=vocab, seed=1)
    (m / "tokenizer.json").write_bytes((tmp_path / "tokenizer.json").read_bytes())
    (s,) = score_models([str(m)], {"t": TEXT})[str(m)].values()
    assert s.tokens == len(enc.ids) - 1 and s.n_bytes == enc.scored_bytes
    assert s.token_perplexity == pytest.approx(math.exp(s.nll_nats / s.tokens))
    assert s.value == pytest.approx(s.nll_nats / math.log(2) / s.n_bytes)


def test_tokenizer_errors_say_what_is_missing(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"x")
    with pytest.raises(InputError, match="tokenizer.model but no tokenizer.json"):
        tokenizer_for(tmp_path, {"vocab_size": 32000}, "m")
    with pytest.raises(InputError, match="no tokenizer files .* vocab_size 50 is not byte-level"):
        tokenizer_for(tmp_path / "none", {"vocab_size": 50}, "m")
    assert isinstance(tokenizer_for(None, {"vocab_size": 256}, "m"), ByteTokenizer)


def test_lora_adapter_is_scored_as_base_plus_adapter(tmp_path, bytes_llama):
    ad = make_lora(bytes_llama, tmp_path / "lora", rank=2, seed=5, scale=0.3)
    merged = {k: v.clone() for k, v in load_state(bytes_llama).items()}
    for k, d in lora_delta(ad).items():
        merged[k] = merged[k].float() + d
    out = tmp_path / "merged"
    out.mkdir()
    save_file(merged, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(llama_config(2, 16, 256, torch.float32)))
    texts = {"t": TEXT}
    res = score_models([f"{bytes_llama}+{ad}", str(ad), str(out), str(bytes_llama)], texts)
    a, b, c, base = (res[k]["t"].value for k in res)
    assert a == b == pytest.approx(c, abs=1e-6)  # explicit BASE+ADAPTER and the adapter's own base_model
    assert abs(a - base) > 1e-3


def test_builtin_matches_module_forward_on_the_demo():
    from tinylm import load_model

    from mergescope.demo import family_dir
    from mergescope.score.llama import LlamaShape, forward

    model = load_model(family_dir() / "code")
    m = open_model(family_dir() / "code")
    ids = torch.tensor([list(TEXT[:100])])
    with torch.no_grad():
        a = model(ids)
        b = forward(m.tensors, LlamaShape.from_config(m.config), ids)
    m.close()
    assert torch.equal(a, b)


HF_CASES = {
    "llama-gqa-headdim-tied-llama3rope": dict(
        model_type="llama",
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        tie_word_embeddings=True,
        max_position_embeddings=64,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 50000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
    "llama-linear-rope-bias": dict(
        model_type="llama",
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=2,
        attention_bias=True,
        mlp_bias=True,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    ),
    "qwen2": dict(
        model_type="qwen2",
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        use_sliding_window=False,
    ),
}


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_builtin_forward_equals_transformers(tmp_path, case):
    """Optional (needs transformers): the same windows give the same bits per byte (<= 1e-4)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(vocab_size=256, **HF_CASES[case])
    hf = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # visible biases and norms, so a missed term shows
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / case)
    texts = {"t": TEXT}
    ours = score_models([str(tmp_path / case)], texts, backend="builtin")[str(tmp_path / case)]["t"]
    theirs = score_models([str(tmp_path / case)], texts, backend="transformers")[str(tmp_path / case)]["t"]
    assert ours.tokens == theirs.tokens
    assert abs(ours.value - theirs.value) <= 1e-4, (ours.value, theirs.value)


def test_read_text_cuts_at_a_character_boundary(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("aé🙂".encode())
    assert read_text(p, max_bytes=4) == "aé".encode()
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe abc")
    with pytest.raises(InputError, match="not UTF-8"):
        read_text(tmp_path / "bad.txt")


def _cli(capsys, *args):
    rc = main(["eval", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_eval_command_table_json_and_errors(tmp_path, bytes_llama, capsys):
    (tmp_path / "a.txt").write_bytes(TEXT)
    (tmp_path / "b.txt").write_bytes(TEXT[::-1].decode(errors="ignore").encode())
    rc, out, _ = _cli(
        capsys, bytes_llama, "--text", tmp_path / "a.txt", tmp_path / "b.txt", "--json", tmp_path / "s.json"
    )
    assert rc == 0 and "bits per byte" in out and "mean" in out
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["metric"] == "bits_per_byte" and len(data["scores"]) == 2
    assert data["scores"][0]["bits_per_byte"] > 0 and data["scores"][0]["bytes"] == len(TEXT) - 1
    (tmp_path / "empty.txt").write_text("")
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    save_file({"wte.weight": torch.zeros(256, 8)}, str(gpt2 / "model.safetensors"))
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 256}))
    noisy = tmp_path / "noisy.py"
    noisy.write_text("print('done, no score here')\n")
    score = tmp_path / "score.py"
    score.write_text("import sys\nprint('loading', sys.argv[1])\nprint(0.75)\n")
    cases = [
        ((bytes_llama, "--text", tmp_path / "missing.txt"), "no such file"),
        ((bytes_llama, "--text", tmp_path / "empty.txt"), "is empty"),
        ((gpt2, "--text", tmp_path / "a.txt", "--backend", "builtin"), "no scoring backend runs this model"),
        ((bytes_llama, "--eval-cmd", f"{sys.executable} {noisy} {{model}}"), "not a number"),
        ((bytes_llama, "--eval-cmd", "true"), "must contain {model}"),
        ((bytes_llama,), "give at least one held-out text file"),
    ]
    for args, needle in cases:
        rc, _, err = _cli(capsys, *args)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and needle in lines[0], (args, err)
    rc, out, _ = _cli(capsys, bytes_llama, "--eval-cmd", f"{sys.executable} {score} {{model}}", "--higher-is-better")
    assert rc == 0 and "0.7500" in out and "higher is better" in out


def test_blocked_loss_equals_the_loss_of_whole_logits(monkeypatch):
    import mergescope.score.llama as llama
    import mergescope.score.windows as windows_mod
    from mergescope.demo import family_dir

    m = open_model(family_dir() / "prose")
    shape = llama.LlamaShape.from_config(m.config)
    x = torch.tensor([list(TEXT[:90]), list(TEXT[90:180])])
    whole = nll_from_logits(lambda ids: llama.forward(m.tensors, shape, ids))(x)
    monkeypatch.setattr(windows_mod, "LOSS_BLOCK", 256 * 7)  # 7 rows per block: many blocks, a ragged last one
    blocked = llama.forward(m.tensors, shape, x[:, :-1], targets=x[:, 1:])
    m.close()
    torch.testing.assert_close(blocked, whole, rtol=1e-6, atol=1e-6)
