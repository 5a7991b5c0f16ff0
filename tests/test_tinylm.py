"""The bundled demo family (analysis/demo/) and the pure-torch Llama forward / evaluation code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tinylm import (
    LlamaConfig,
    LlamaLM,
    bytes_to_unicode,
    decode,
    encode,
    load_model,
    save_model,
    tokenizer_json,
)

from mergescope.demo import DEMO_MODELS, SIBLING_BASE, SIBLING_MODELS, SOUP_MODELS
from mergescope.io.checkpoint import open_checkpoint
from mergescope.score.backends import score_models
from mergescope.score.model import Model
from mergescope.score.texts import load_texts

DEMO = Path(__file__).resolve().parents[1] / "analysis" / "demo"
FAMILY = DEMO / "family"
MEMBERS = [
    "base",
    "code",
    "prose",
    "dialog",
    "overtrained",
    "other_base",
    "other_ft",
    "code_b",
    "code_c",
    "sibling_base",
    "sib_code",
    "sib_prose",
    "sib_dialog",
]
PARENT = {
    "code": "base",
    "prose": "base",
    "dialog": "base",
    "overtrained": "base",
    "other_ft": "other_base",
    "code_b": "base",
    "code_c": "base",
    "sibling_base": "base",
    "sib_code": "sibling_base",
    "sib_prose": "sibling_base",
    "sib_dialog": "sibling_base",
}
DOMAINS = ["code", "prose", "dialog"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny matmuls: one thread is as fast, and far faster than two when the CPUs are shared.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models():
    return {m: load_model(FAMILY / m) for m in MEMBERS}


@pytest.fixture(scope="module")
def heldout():
    return load_texts(DEMO / "heldout")


def hf_names(n_layers: int) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        names |= {p + f"self_attn.{x}_proj.weight" for x in "qkvo"}
        names |= {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
    return names


def test_family_files_and_config():
    total = 0
    for m in MEMBERS:
        d = FAMILY / m
        for f in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
            assert (d / f).is_file(), f"{m}/{f} missing"
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
        assert cfg["vocab_size"] == 256 and cfg["tie_word_embeddings"] is False
        assert cfg["torch_dtype"] == "bfloat16"
        for key in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "rms_norm_eps",
            "rope_theta",
        ):
            assert key in cfg, key
        ck = open_checkpoint(d)
        assert set(ck.names()) == hf_names(cfg["num_hidden_layers"])
        assert {i.dtype for i in ck.infos()} == {torch.bfloat16}
        assert ck.info("model.layers.0.self_attn.k_proj.weight").shape == (
            cfg["num_key_value_heads"] * cfg["hidden_size"] // cfg["num_attention_heads"],
            cfg["hidden_size"],
        )
        assert ck.declared_base == (f"mergescope-demo/{PARENT[m]}" if m in PARENT else None)
        assert ck.config["_name_or_path"] == f"mergescope-demo/{m}"
        ck.close()
        total += sum(p.stat().st_size for p in d.iterdir())
    assert total <= 6_500_000
    held = load_texts(DEMO / "heldout")
    assert sorted(held) == sorted(DOMAINS)
    assert all(8_000 <= len(t) <= 40_000 for t in held.values())


def test_config_round_trip(tmp_path):
    cfg = LlamaConfig.from_json(FAMILY / "base" / "config.json")
    cfg.to_json(tmp_path / "c.json")
    assert LlamaConfig.from_json(tmp_path / "c.json") == cfg
    assert cfg.extra.get("_name_or_path") == "mergescope-demo/base"


def test_family_loads_and_forward_is_deterministic(models):
    x = encode(b"def f(x):\n    return x + 1\n")[None].repeat(2, 1)
    for m, model in models.items():
        assert isinstance(model, LlamaLM) and not model.training
        with torch.no_grad():
            a, b = model(x), model(x)
        assert a.shape == (2, x.shape[1], 256) and a.dtype == torch.float32
        assert torch.equal(a, b) and torch.isfinite(a).all(), m
    # Loading again gives bit-identical weights.
    again = load_model(FAMILY / "code")
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), models["code"].parameters()))


def test_finetunes_beat_base_on_their_domain(heldout):
    texts = {d: heldout[d][:12_000] for d in DOMAINS}
    res = score_models([str(FAMILY / m) for m in ("base", *DOMAINS)], texts)
    base = res[str(FAMILY / "base")]
    for d in DOMAINS:
        ft = res[str(FAMILY / d)][d].value
        assert ft < 0.985 * base[d].value, f"{d}: fine-tune {ft:.3f} vs base {base[d].value:.3f} bits per byte"


def test_soup_ingredients_are_finetunes_of_base_that_beat_it_on_code(heldout):
    assert len(SOUP_MODELS) >= 3 and set(SOUP_MODELS) <= set(MEMBERS)
    assert not set(SOUP_MODELS) - {"code"} & set(DEMO_MODELS)  # the explorer's model list is unchanged
    base_ck = open_checkpoint(FAMILY / "base")
    base = {n: base_ck.get(n).float() for n in base_ck.names()}
    base_ck.close()
    thetas = {}
    for m in SOUP_MODELS:
        ck = open_checkpoint(FAMILY / m)
        assert ck.declared_base == "mergescope-demo/base", m
        thetas[m] = {n: ck.get(n).float() for n in ck.names()}
        ck.close()
        tau2 = sum(float(((thetas[m][n] - base[n]) ** 2).sum()) for n in base)
        rel = (tau2 / sum(float((v**2).sum()) for v in base.values())) ** 0.5
        assert 0.01 < rel < 0.2, f"{m}: task vector norm {rel:.3f} x the base's: not a moderate fine-tune"
    # Same task, different runs: the ingredients differ from each other.
    a, b = SOUP_MODELS[:2]
    assert any(not torch.equal(thetas[a][n], thetas[b][n]) for n in base)
    soup = {n: (sum(t[n] for t in thetas.values()) / len(thetas)).to(torch.bfloat16) for n in base}
    config = json.loads((FAMILY / "base" / "config.json").read_text())
    texts = {"code": heldout["code"]}
    res = score_models(
        [str(FAMILY / m) for m in ("base", *SOUP_MODELS)] + [Model("soup", soup, config, FAMILY / "base")], texts
    )
    base_bpb = res[str(FAMILY / "base")]["code"].value
    single = {m: res[str(FAMILY / m)]["code"].value for m in SOUP_MODELS}
    for m, v in single.items():
        assert v < 0.95 * base_bpb, f"{m}: {v:.4f} vs base {base_bpb:.4f} bits per byte on held-out code"
        assert v < 1.02 * min(single.values()), f"{m}: {v:.4f} is far from the best ingredient"
    # The point of the ingredients: their uniform soup is at least as good as the best of them.
    assert res["soup"]["code"].value <= min(single.values()), (res["soup"]["code"].value, single)


def test_sibling_base_is_a_small_offset_of_base():
    assert set(SIBLING_MODELS) <= set(MEMBERS) and not set(SIBLING_MODELS) & set(DEMO_MODELS)
    cks = [open_checkpoint(FAMILY / m) for m in ("base", SIBLING_BASE)]
    base, sib = ({n: ck.get(n).float() for n in ck.names()} for ck in cks)
    for ck in cks:
        ck.close()
    diff = sum(float(((sib[n] - base[n]) ** 2).sum()) for n in base)
    rel = (diff / sum(float((v**2).sum()) for v in base.values())) ** 0.5
    assert 0.02 < rel < 0.08, f"sibling_base differs from base by {rel:.3f} of its norm: not a sibling"


def test_save_model_round_trip(tmp_path, models):
    out = save_model(models["prose"], tmp_path / "m", name="x/prose", base_model="x/base", description="test")
    again = load_model(out)
    for (n, p), (_, q) in zip(models["prose"].named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), n  # the family is already bf16-exact
    assert open_checkpoint(out).declared_base == "x/base"


def test_tokenizer_json_mapping():
    tok = json.loads((FAMILY / "base" / "tokenizer.json").read_text(encoding="utf-8"))
    assert tok == json.loads(json.dumps(tokenizer_json()))
    assert tok["model"]["type"] == "BPE" and tok["model"]["merges"] == []
    assert tok["pre_tokenizer"]["type"] == "ByteLevel" and tok["decoder"]["type"] == "ByteLevel"
    b2u = bytes_to_unicode()
    assert sorted(tok["model"]["vocab"].values()) == list(range(256))
    assert all(tok["model"]["vocab"][b2u[b]] == b for b in range(256))
    s = "héllo\n\tworld 🙂"
    assert encode(s).tolist() == list(s.encode()) and decode(encode(s)) == s


def test_tokenizer_json_round_trips_with_tokenizers():
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(FAMILY / "base" / "tokenizer.json"))
    assert tok.get_vocab_size() == 256
    for s in ["def f(x):\n    return x  # hi\n", "héllo\n\tworld 🙂", "  Alice: Hi!\r\n\x00\x7f"]:
        ids = tok.encode(s).ids
        assert ids == list(s.encode("utf-8")), s
        assert tok.decode(ids) == s


def test_matches_transformers_llama(models):
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaForCausalLM.from_pretrained(str(FAMILY / "code"), torch_dtype=torch.float32)
    hf.eval()
    x = torch.randint(0, 256, (2, 96), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(x).logits
        ours = models["code"](x)
    assert (ours - ref).abs().max().item() < 1e-4


def test_import_is_light():
    code = (
        "import sys, tinylm, mergescope.score.backends; "
        "bad = [m for m in ('textual', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "scripts")}
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
