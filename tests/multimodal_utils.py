"""Tiny multi-module checkpoints for tests: a Qwen2.5-VL-style vision-language model (text decoder,
vision tower, projector) with transformers' legacy tensor names (the ones mergekit 0.1.5 reads)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.ckpt_utils import LAYER_SHAPES, write_state

VISION_LAYER = {  # suffix -> shape in units of (vision width d, mlp width m)
    "norm1.weight": ("d",),
    "norm2.weight": ("d",),
    "attn.qkv.weight": ("3d", "d"),
    "attn.qkv.bias": ("3d",),
    "attn.proj.weight": ("d", "d"),
    "attn.proj.bias": ("d",),
    "mlp.gate_proj.weight": ("m", "d"),
    "mlp.gate_proj.bias": ("m",),
    "mlp.up_proj.weight": ("m", "d"),
    "mlp.up_proj.bias": ("m",),
    "mlp.down_proj.weight": ("d", "m"),
    "mlp.down_proj.bias": ("d",),
}


def vl_shapes(text_layers: int, vision_layers: int, hidden: int, vocab: int, width: int) -> dict:
    dims = {"h": hidden, "i": 2 * hidden, "d": width, "3d": 3 * width, "m": 2 * width, "4d": 4 * width}
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(text_layers):
        for suffix, s in LAYER_SHAPES.items():
            shapes[f"model.layers.{i}.{suffix}"] = tuple(dims[x] for x in s)
        for p in ("q_proj", "k_proj", "v_proj"):
            shapes[f"model.layers.{i}.self_attn.{p}.bias"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    shapes["visual.patch_embed.proj.weight"] = (width, 3, 2, 2, 2)
    for i in range(vision_layers):
        for suffix, s in VISION_LAYER.items():
            shapes[f"visual.blocks.{i}.{suffix}"] = tuple(dims[x] for x in s)
    shapes["visual.merger.ln_q.weight"] = (width,)
    shapes["visual.merger.mlp.0.weight"] = (4 * width, 4 * width)
    shapes["visual.merger.mlp.0.bias"] = (4 * width,)
    shapes["visual.merger.mlp.2.weight"] = (hidden, 4 * width)
    shapes["visual.merger.mlp.2.bias"] = (hidden,)
    return shapes


def vl_config(text_layers: int, vision_layers: int, hidden: int, vocab: int, width: int) -> dict:
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "vocab_size": vocab,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "text_config": {
            "model_type": "qwen2_5_vl_text",
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": text_layers,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": vocab,
        },
        "vision_config": {
            "model_type": "qwen2_5_vl",
            "depth": vision_layers,
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "out_hidden_size": hidden,
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": 2,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
        },
    }


def make_vl(
    d: str | Path,
    text_layers: int = 2,
    vision_layers: int = 3,
    hidden: int = 16,
    vocab: int = 32,
    width: int = 8,
    seed: int = 0,
) -> Path:
    """A random tiny Qwen2.5-VL-style checkpoint (float32; norms around 1, the rest ~ N(0, 0.02))."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in vl_shapes(text_layers, vision_layers, hidden, vocab, width).items():
        base = 1.0 if ("norm" in name or "ln_q" in name) and name.endswith("weight") else 0.0
        sd[name] = base + 0.02 * torch.randn(shape, generator=g)
    return write_state(d, sd, 1, vl_config(text_layers, vision_layers, hidden, vocab, width))
