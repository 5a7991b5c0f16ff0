"""Tiny random checkpoints for tests/test_mergekit_suite.py: the model families mergekit's own test suite
merges (Llama "picollama", Granite, GPT-2, a LLaVA-style vision-language model) and the tokenizers with
added tokens its tokenizer tests need.

Models are instantiated by transformers from a config (so names, config.json and tied weights are the
real ones) under a fixed torch seed, then saved as safetensors. Everything is small enough that the whole
suite builds in a few seconds. transformers is imported lazily: it is only needed to build.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.ckpt_utils import load_state

PICO = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2}  # mergekit's "pico" sizes
GPT2_LAYERS = 4  # mergekit's test uses a full GPT-2 (12 layers, 124M parameters); the structure is what matters


def _save(model, d: str | Path) -> Path:
    from transformers.utils import logging

    logging.disable_progress_bar()
    d = Path(d)
    model.save_pretrained(str(d), safe_serialization=True)
    return d


def _seeded(build, seed: int):
    """Run `build()` under torch's global seed `seed` without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def make_picollama(d: str | Path, vocab_size: int = 64, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 32, 16 heads), float32, no tokenizer: mergekit's `make_picollama`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, num_attention_heads=16, **PICO)
    return _save(_seeded(lambda: LlamaForCausalLM(cfg), seed), d)


def make_picogranite(d: str | Path, vocab_size: int = 64, seed: int = 0) -> Path:
    """A 2-layer Granite (hidden 32, 2 heads), float32: mergekit's `make_picogranite`."""
    from transformers import GraniteConfig, GraniteForCausalLM

    cfg = GraniteConfig(vocab_size=vocab_size, num_attention_heads=2, num_key_value_heads=2, **PICO)
    return _save(_seeded(lambda: GraniteForCausalLM(cfg), seed), d)


def make_gpt2(d: str | Path, n_layer: int = GPT2_LAYERS, seed: int = 0) -> Path:
    """A tiny GPT-2 (tied head, Conv1D weights, `h.N.` layer names): the shape of mergekit's `make_gpt2size`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        n_ctx=64, n_positions=64, n_embd=32, n_head=2, n_layer=n_layer, vocab_size=64, bos_token_id=0, eos_token_id=0
    )
    return _save(_seeded(lambda: GPT2LMHeadModel(cfg), seed), d)


# transformers' legacy LLaVA names -> the current (v5) ones; the first matching prefix wins
LLAVA_V5_PREFIXES = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)


def llava_v5_name(name: str) -> str:
    for old, new in LLAVA_V5_PREFIXES:
        if name.startswith(old):
            return new + name[len(old) :]
    raise ValueError(f"not a legacy LLaVA tensor name: {name}")


def make_picollava(d: str | Path, seed: int = 0, layout: str = "legacy") -> Path:
    """mergekit's `make_picoLlaVa` (a 2-layer CLIP tower, a 2-layer picollama, the 2-linear projector).

    `layout="legacy"`: what transformers' save_pretrained writes (`language_model.model.layers.*`,
    `language_model.lm_head.weight`, `vision_tower.*`, `multi_modal_projector.*`); `"v5"`: the same
    tensors under the current in-memory names (`model.language_model.*`, `model.vision_tower.*`,
    `model.multi_modal_projector.*`, `lm_head.weight`), as newer exports and hub checkpoints have them."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        image_size=32, patch_size=4, num_hidden_layers=2, num_attention_heads=2, hidden_size=64, intermediate_size=128
    )
    text = LlamaConfig(vocab_size=64, num_attention_heads=16, **PICO)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_seq_length=16)
    d = _save(_seeded(lambda: LlavaForConditionalGeneration(config=cfg), seed), d)
    if layout == "v5":
        sd = {llava_v5_name(k): v for k, v in load_state(d).items()}
        for f in d.glob("*.safetensors*"):
            f.unlink()
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    elif layout != "legacy":
        raise ValueError(f"layout must be 'legacy' or 'v5', not {layout!r}")
    return d


SPECIALS = ("<unk>", "<s>", "</s>")


def tokenizer_tokens(vocab_size: int) -> list[str]:
    """The model vocabulary of mergekit's test tokenizers: `<unk> <s> </s> _tok_3 ... _tok_{n-1}`."""
    return [*SPECIALS, *(f"_tok_{i}" for i in range(len(SPECIALS), vocab_size))][:vocab_size]


def write_tokenizer(d: str | Path, vocab_size: int = 64, added_tokens: Sequence[str] = ()) -> Path:
    """A merge-free BPE tokenizer over `tokenizer_tokens(vocab_size)`, the three specials registered as
    special added tokens (ids 0-2, as a Llama tokenizer registers them) and `added_tokens` appended as plain
    added tokens (ids vocab_size, vocab_size + 1, ...), like mergekit's `make_tokenizer` + `add_tokens`."""
    from tokenizers import AddedToken, Tokenizer, models

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(tokenizer_tokens(vocab_size))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    if added_tokens:
        tok.add_tokens(list(added_tokens))
    tok.save(str(d / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 2048,
    }
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    return d


def make_tokenized_picollama(
    d: str | Path, model_vocab: int, tokenizer_vocab: int = 64, added_tokens: Sequence[str] = (), seed: int = 0
) -> Path:
    """A picollama with `model_vocab` embedding rows and a tokenizer of `tokenizer_vocab` + added tokens
    (the two may disagree on purpose: mergekit's `model_padded` has 68 tokens for 64 rows)."""
    d = make_picollama(d, vocab_size=model_vocab, seed=seed)
    return write_tokenizer(d, tokenizer_vocab, added_tokens)
