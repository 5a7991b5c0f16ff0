"""Merging models whose vocabularies differ: tokenizer_source base/union/model, the tokenizer: block,
chat templates; against an independent computation and against mergekit 0.1.5 (by token string)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergescope.io.errors import InputError
from mergescope.merge.plan import Plan
from mergescope.merge.run import run_merge
from tests.ckpt_utils import llama_config, make_llama
from tests.mergekit_utils import mergekit_available, run_mergekit

CORPUS = ["the quick brown fox jumps over the lazy dog", "a merge of models with more tokens", "hello world"] * 20
H = 8


def _tokenizer(extra_added=(), extra_plain=()):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    if extra_plain:
        tok.add_tokens(list(extra_plain))
    if extra_added:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in extra_added])
    return tok


def _model(d: Path, tok, seed: int, base_sd=None, scale=0.01) -> Path:
    """A 2-layer Llama whose embedding/head rows match `tok`; rows of tokens the base has are the base's
    rows plus a small delta, so fine-tunes stay fine-tunes."""
    vocab = tok.get_vocab_size()
    tmp = make_llama(d.parent / f"_{d.name}", n_layers=2, hidden=H, vocab=vocab, seed=seed)
    sd = load_file(str(tmp / "model.safetensors"))
    if base_sd is not None:
        g = torch.Generator().manual_seed(seed + 100)
        for name, t in base_sd.items():
            if name in ("model.embed_tokens.weight", "lm_head.weight"):
                rows = min(t.shape[0], sd[name].shape[0])
                sd[name][:rows] = t[:rows] + scale * torch.randn(t[:rows].shape, generator=g)
            else:
                sd[name] = t + scale * torch.randn(t.shape, generator=g)
    d.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(llama_config(2, H, vocab, torch.float32)))
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 128, "unk_token": "<unk>"})
    )
    return d


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    base = _model(root / "base", _tokenizer(), seed=0)
    bsd = load_file(str(base / "model.safetensors"))
    chat = _model(root / "chat", _tokenizer(extra_added=("<|im_start|>", "<|im_end|>")), 1, bsd)
    code = _model(root / "code", _tokenizer(extra_plain=("def_", "return_")), 2, bsd)
    return root, base, chat, code


def _plan(fam, method="linear", **extra) -> Plan:
    root, base, chat, code = fam
    models = [{"model": str(m), "parameters": {"weight": 1.0}} for m in (chat, code)]
    d = {"merge_method": method, "models": models, "dtype": "float32", **extra}
    if method != "linear":
        d["base_model"] = str(base)
    else:
        d["models"] = [{"model": str(base), "parameters": {"weight": 1.0}}, *models]
    return Plan.from_dict(d)


def _vocab(d: Path) -> dict[str, int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(d / "tokenizer.json")).get_vocab(with_added_tokens=True)


def _rows_by_token(d: Path, name="model.embed_tokens.weight") -> dict[str, torch.Tensor]:
    t = load_file(str(d / "model.safetensors"))[name]
    return {tok: t[i] for tok, i in _vocab(d).items() if i < t.shape[0]}


def test_differing_vocabularies_are_refused_without_a_tokenizer_key(fam):
    with pytest.raises(InputError, match="vocabularies differ .* `tokenizer_source: union`"):
        _plan(fam).validate(open_models=True)


def test_union_aligns_rows_by_token_and_fills_missing_ones(fam, tmp_path):
    root, base, chat, code = fam
    out = tmp_path / "out"
    run_merge(_plan(fam, tokenizer_source="union"), out)
    vocab = _vocab(out)
    assert {"<|im_start|>", "<|im_end|>", "def_", "return_"} <= set(vocab)
    rows = _rows_by_token(out)
    src = {m: _rows_by_token(m) for m in (base, chat, code)}
    cfg = json.loads((out / "config.json").read_text())
    assert (
        cfg["vocab_size"]
        == len(vocab)
        == load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"].shape[0]
    )
    for tok in vocab:
        have = [m for m in (base, chat, code) if tok in src[m]]
        # linear: base, chat and code each contribute; a model lacking the token gets the base's row when the
        # base has it, the only model's row when one has it, the average otherwise
        fill = src[have[0]][tok] if len(have) == 1 else (src[base][tok] if base in have else None)
        parts = [src[m][tok] if tok in src[m] else fill for m in (base, chat, code)]
        torch.testing.assert_close(rows[tok], sum(parts) / 3, rtol=1e-6, atol=1e-7)
    cfg_tok = json.loads((out / "tokenizer_config.json").read_text())
    assert any(e["content"] == "<|im_start|>" and e["special"] for e in cfg_tok["added_tokens_decoder"].values())


def test_base_and_model_sources_and_token_rules(fam, tmp_path):
    root, base, chat, code = fam
    run_merge(_plan(fam, "task_arithmetic", tokenizer_source="base"), tmp_path / "b")
    assert _vocab(tmp_path / "b") == _vocab(base)
    run_merge(_plan(fam, "task_arithmetic", tokenizer_source=str(chat)), tmp_path / "c")
    assert _vocab(tmp_path / "c") == _vocab(chat)
    spec = {
        "source": "union",
        "tokens": {
            "<|im_start|>": {"source": {"kind": "zero"}},
            "hell": {"source": {"kind": "model_token", "model": str(code), "token": "\u0120the"}, "force": True},
            "<new>": {"source": str(base)},
        },
        "pad_to_multiple_of": 64,
    }
    with pytest.raises(InputError, match="has no token '<new>'"):
        run_merge(_plan(fam, "task_arithmetic", tokenizer=spec), tmp_path / "x")
    spec["tokens"]["<new>"] = {"source": {"kind": "zero"}}
    run_merge(_plan(fam, "task_arithmetic", tokenizer=spec), tmp_path / "t")
    vocab = _vocab(tmp_path / "t")
    emb = load_file(str(tmp_path / "t" / "model.safetensors"))["model.embed_tokens.weight"]
    assert emb.shape[0] % 64 == 0 and emb.shape[0] >= len(vocab) and "<new>" in vocab
    assert json.loads((tmp_path / "t" / "config.json").read_text())["vocab_size"] == emb.shape[0]
    torch.testing.assert_close(emb[len(vocab) :], emb[: len(vocab)].mean(0).expand(emb.shape[0] - len(vocab), -1))
    # forced: every model's row is code's row of "Ġthe", so task arithmetic gives that row
    torch.testing.assert_close(emb[vocab["hell"]], _rows_by_token(code)["\u0120the"], rtol=1e-6, atol=1e-7)
    # zero source: only chat has the token, so base + (chat - 0) + (0 - 0) is chat's row
    torch.testing.assert_close(emb[vocab["<|im_start|>"]], _rows_by_token(chat)["<|im_start|>"], rtol=1e-6, atol=1e-7)


def test_chat_template_lands_in_tokenizer_config(fam, tmp_path):
    run_merge(_plan(fam, "task_arithmetic", tokenizer_source="union", chat_template="chatml"), tmp_path / "o")
    tpl = json.loads((tmp_path / "o" / "tokenizer_config.json").read_text())["chat_template"]
    assert "<|im_start|>" in tpl
    literal = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    root, base, chat, code = fam
    plan = Plan.from_dict(
        {
            "merge_method": "task_arithmetic",
            "base_model": str(base),
            "models": [{"model": str(base), "parameters": {"weight": 1.0}}] * 0
            + [{"model": str(chat), "parameters": {"weight": 0.5}}],
            "tokenizer_source": str(chat),
            "chat_template": literal,
        }
    )
    run_merge(plan, tmp_path / "l")
    assert json.loads((tmp_path / "l" / "tokenizer_config.json").read_text())["chat_template"] == literal


@pytest.mark.mergekit
@pytest.mark.parametrize("source", ["union", "base", "chat", "block"])
def test_matches_mergekit_by_token(fam, tmp_path, source):
    ok, why = mergekit_available()
    if not ok:
        pytest.skip(why)
    root, base, chat, code = fam
    if source == "block":
        block = {
            "source": "union",
            "tokens": {
                "<|im_start|>": {"source": {"kind": "zero"}},
                "hell": {"source": {"kind": "model_token", "model": str(code), "token": "\u0120the"}, "force": True},
                "Ġtoken": {"source": str(chat), "force": True},
            },
            "pad_to_multiple_of": 16,
        }
        plan = _plan(fam, "task_arithmetic", tokenizer=block)
    else:
        plan = _plan(fam, "task_arithmetic", tokenizer_source=str(chat) if source == "chat" else source)
    cfg = tmp_path / "p.yml"
    cfg.write_text(plan.to_yaml())
    run_mergekit([(cfg, tmp_path / "mk")])
    run_merge(plan, tmp_path / "ms")
    assert set(_vocab(tmp_path / "ms")) == set(_vocab(tmp_path / "mk"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        ours, theirs = _rows_by_token(tmp_path / "ms", name), _rows_by_token(tmp_path / "mk", name)
        assert set(ours) == set(theirs)
        for tok in ours:
            torch.testing.assert_close(ours[tok], theirs[tok], rtol=0, atol=0, msg=f"{name} {tok!r}")
        a = load_file(str(tmp_path / "ms" / "model.safetensors"))[name]
        b = load_file(str(tmp_path / "mk" / "model.safetensors"))[name]
        n = len(_vocab(tmp_path / "ms"))
        assert a.shape == b.shape and torch.equal(a[n:], b[n:])  # padding rows
    a, b = load_file(str(tmp_path / "ms" / "model.safetensors")), load_file(str(tmp_path / "mk" / "model.safetensors"))
    for name in a:
        if name not in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(a[name], b[name]), name
    assert (
        json.loads((tmp_path / "ms" / "config.json").read_text())["vocab_size"]
        == json.loads((tmp_path / "mk" / "config.json").read_text())["vocab_size"]
    )


def test_analysis_compares_vocabulary_tensors_on_shared_tokens(fam):
    from mergescope.stats.readiness import analyze

    root, base, chat, code = fam
    rep = analyze(str(base), [str(chat), str(code)])
    f = [x for x in rep.findings if x.code == "vocab-mismatch"]
    assert f and all(x.severity == "warning" for x in f) and "tokenizer_source: union" in f[0].message
    assert "<|im_start|>" in next(x.message for x in f if x.model == str(chat))
    embed = [s for s in rep.sites if s.module == "embed_tokens"]
    assert embed and embed[0].numel == 300 * H  # the 300 shared tokens' rows
    assert not any(x.severity == "error" for x in rep.findings)
