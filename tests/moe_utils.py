"""Tiny mixture-of-experts checkpoints (Mixtral, Qwen3-MoE) in both of transformers' layouts.

`per_expert`: transformers' original format, what `save_pretrained` writes (one tensor per expert:
Mixtral's `block_sparse_moe.experts.E.w1/w2/w3.weight`, Qwen3-MoE's `mlp.experts.E.gate_proj/up_proj/
down_proj.weight`). `fused`: its in-memory modules, what `save_pretrained(save_original_format=False)`
writes (`mlp.experts.gate_up_proj` [E, 2·I, H], each expert's gate rows then its up rows;
`mlp.experts.down_proj` [E, H, I]; Mixtral's container renamed `mlp`). Built with safetensors from
these names and shapes (tests/test_moe.py checks them against transformers' own classes when it is
installed), so the tests need no transformers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from tests.ckpt_utils import load_state, write_state

ARCHS = ("mixtral", "qwen3_moe")
HIDDEN, INTER, EXPERTS, LAYERS, VOCAB, HEADS, HEAD_DIM = 16, 24, 4, 2, 32, 2, 8
# per arch: (block container, gate, up, down) in the per-expert layout
_NAMES = {"mixtral": ("block_sparse_moe", "w1", "w3", "w2"), "qwen3_moe": ("mlp", "gate_proj", "up_proj", "down_proj")}


def moe_config(arch: str) -> dict:
    """config.json as transformers writes it for these sizes (the keys its classes read)."""
    common = {
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "num_experts_per_tok": 2,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    if arch == "mixtral":
        return {
            **common,
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "intermediate_size": INTER,
            "num_local_experts": EXPERTS,
        }
    return {
        **common,
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "intermediate_size": 2 * INTER,
        "moe_intermediate_size": INTER,
        "num_experts": EXPERTS,
        "head_dim": HEAD_DIM,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    }


def per_expert_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    cont, gate, up, down = _NAMES[arch]
    qk = HEADS * HEAD_DIM if arch == "qwen3_moe" else HIDDEN
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (HIDDEN,)
        for proj in ("q_proj", "k_proj", "v_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (qk, HIDDEN)
        shapes[p + "self_attn.o_proj.weight"] = (HIDDEN, qk)
        if arch == "qwen3_moe":
            shapes[p + "self_attn.q_norm.weight"] = (HEAD_DIM,)
            shapes[p + "self_attn.k_norm.weight"] = (HEAD_DIM,)
        shapes[p + "post_attention_layernorm.weight"] = (HIDDEN,)
        shapes[f"{p}{cont}.gate.weight"] = (EXPERTS, HIDDEN)
        for e in range(EXPERTS):
            shapes[f"{p}{cont}.experts.{e}.{gate}.weight"] = (INTER, HIDDEN)
            shapes[f"{p}{cont}.experts.{e}.{up}.weight"] = (INTER, HIDDEN)
            shapes[f"{p}{cont}.experts.{e}.{down}.weight"] = (HIDDEN, INTER)
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    return shapes


def make_moe(d: str | Path, arch: str, seed: int = 0, layout: str = "per_expert") -> Path:
    """A random tiny MoE checkpoint directory (norms around 1, matrices ~ N(0, 0.02))."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in per_expert_shapes(arch).items():
        scale, offset = (0.1, 1.0) if name.endswith("norm.weight") else (0.02, 0.0)
        sd[name] = offset + scale * torch.randn(shape, generator=g)
    if layout == "fused":
        sd = fuse(sd, arch)
    return write_state(d, sd, config=moe_config(arch))


def fuse(sd: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """The per-expert state dict in the fused layout (transformers' conversion, as it loads one)."""
    cont, gate, up, down = _NAMES[arch]
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        m = re.match(rf"^(.*\.){cont}\.(experts\.\d+\..*|gate\.weight)$", name)
        if m is None:
            out[name] = t
            continue
        pre, rest = m.groups()
        if rest == "gate.weight":
            out[f"{pre}mlp.gate.weight"] = t
        elif rest == f"experts.0.{gate}.weight":
            ex = range(EXPERTS)
            gu = [
                torch.cat([sd[f"{pre}{cont}.experts.{e}.{gate}.weight"], sd[f"{pre}{cont}.experts.{e}.{up}.weight"]])
                for e in ex
            ]
            out[f"{pre}mlp.experts.gate_up_proj"] = torch.stack(gu)
            out[f"{pre}mlp.experts.down_proj"] = torch.stack([sd[f"{pre}{cont}.experts.{e}.{down}.weight"] for e in ex])
    return out


def unfuse(sd: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """The fused state dict in the per-expert layout (independent of mergescope's own split)."""
    cont, gate, up, down = _NAMES[arch]
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        m = re.match(r"^(.*\.)mlp\.(experts\.gate_up_proj|experts\.down_proj|gate\.weight)$", name)
        if m is None:
            out[name] = t
            continue
        pre, rest = m.groups()
        if rest == "gate.weight":
            out[f"{pre}{cont}.gate.weight"] = t
        elif rest == "experts.gate_up_proj":
            for e in range(t.shape[0]):
                g_, u_ = t[e].chunk(2)
                out[f"{pre}{cont}.experts.{e}.{gate}.weight"] = g_
                out[f"{pre}{cont}.experts.{e}.{up}.weight"] = u_
        else:
            for e in range(t.shape[0]):
                out[f"{pre}{cont}.experts.{e}.{down}.weight"] = t[e]
    return out


def fused_copy(src: str | Path, dst: str | Path, arch: str) -> Path:
    """The checkpoint at `src` (per-expert layout) written again in the fused layout."""
    src = Path(src)
    cfg = json.loads((src / "config.json").read_text())
    return write_state(dst, fuse(load_state(src), arch), config=cfg)
