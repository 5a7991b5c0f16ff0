"""The built-in forward pass of Llama-family causal LMs, over any mapping of Hugging Face-named tensors.

It scores checkpoints (memory-mapped, cast one weight at a time) and merges held in memory without
`transformers`, and it is what the bundled demo models train with (tinylm.LlamaLM runs it on its own
parameters). Numerics follow transformers' `LlamaForCausalLM`: RMSNorm in float32, rotary embeddings
with `rotate_half`, scaled-dot-product attention with scale head_dim^-0.5 and grouped KV heads, SwiGLU
MLP, optional q/k/v/o and MLP biases (Qwen2, `attention_bias`), tied embeddings.

Configs are read as transformers writes them today and did before: `rope_parameters` (v5) or
`rope_theta` + `rope_scaling` (v4), `head_dim` when it differs from hidden/heads, GQA, tie flags. RoPE
variants: default, linear, llama3. Anything else raises `Unsupported` with the reason, and the
transformers backend takes over.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mergescope.score.windows import head_nll

if TYPE_CHECKING:
    import torch

MODEL_TYPES = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3")


class Unsupported(ValueError):
    """This config is outside what the built-in forward implements (the message says why)."""


@dataclass(frozen=True)
class LlamaShape:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_positions: int
    tied: bool
    rope_theta: float
    rope: dict = field(default_factory=dict)  # rope_type and its parameters

    @classmethod
    def from_config(cls, cfg: Mapping) -> LlamaShape:
        mt = cfg.get("model_type")
        if mt not in MODEL_TYPES:
            raise Unsupported(f"model_type {mt!r} (the built-in forward runs {', '.join(MODEL_TYPES)})")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise Unsupported(f"hidden_act {act!r} (the built-in forward runs silu)")
        window = cfg.get("sliding_window")
        if window and (mt == "mistral" or cfg.get("use_sliding_window")):
            raise Unsupported(f"sliding-window attention (sliding_window {window})")
        try:
            hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
            layers, vocab = int(cfg["num_hidden_layers"]), int(cfg["vocab_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise Unsupported(f"config.json lacks {exc} (hidden_size, num_attention_heads, ...)") from None
        kv = int(cfg.get("num_key_value_heads") or heads)
        if heads % kv:
            raise Unsupported(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise Unsupported(f"rope_type {rope_type!r} (the built-in forward runs {', '.join(ROPE_TYPES)})")
        rope["rope_type"] = rope_type
        return cls(
            vocab_size=vocab,
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_positions=int(cfg.get("max_position_embeddings", 2048)),
            tied=bool(cfg.get("tie_word_embeddings", False)),
            rope_theta=float(theta),
            rope=rope,
        )

    def inv_freq(self, device=None) -> torch.Tensor:
        """Rotary inverse frequencies, with the config's scaling applied (as transformers computes them)."""
        import torch

        d = self.head_dim
        inv = 1.0 / (self.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
        kind = self.rope["rope_type"]
        if kind == "linear":
            return inv / float(self.rope["factor"])
        if kind == "llama3":
            factor = float(self.rope["factor"])
            low, high = float(self.rope["low_freq_factor"]), float(self.rope["high_freq_factor"])
            old = float(self.rope["original_max_position_embeddings"])
            low_wavelen, high_wavelen = old / low, old / high
            wavelen = 2 * math.pi / inv
            scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
            smooth = (old / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            return torch.where(medium, smoothed, scaled)
        return inv


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _Weights:
    """Stored tensors by name, cast to the compute dtype/device when used (one at a time)."""

    def __init__(self, tensors, dtype, device):
        self.tensors, self.dtype, self.device = tensors, dtype, device

    def __call__(self, name: str):
        return self.tensors[name].to(device=self.device, dtype=self.dtype)

    def maybe(self, name: str):
        return self(name) if name in self.tensors else None


def forward(
    tensors: Mapping, shape: LlamaShape, ids: torch.Tensor, *, dtype=None, device=None, targets=None
) -> torch.Tensor:
    """Logits [B, T, vocab] (float32) for token ids [B, T]; with `targets` [B, T], the negative
    log-likelihood of each target instead ([B, T], float32), computed a block of logits at a time
    (windows.head_nll) so scoring never holds a batch's whole logits. `tensors`: name -> tensor (a Checkpoint, a dict of
    merged tensors, a module's parameters); each weight is cast to `dtype` (float32) when used."""
    import torch
    import torch.nn.functional as F

    dtype = dtype or torch.float32
    device = device or ids.device
    w = _Weights(tensors, dtype, device)
    ids = ids.to(device)
    b, t = ids.shape
    x = F.embedding(ids, w("model.embed_tokens.weight"))
    pos = torch.arange(t, device=device, dtype=torch.float32)
    freqs = pos[:, None] * shape.inv_freq(device)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    nh, nkv, hd = shape.num_heads, shape.num_kv_heads, shape.head_dim

    def norm(h, name):
        h32 = h.float()
        h32 = h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + shape.rms_norm_eps)
        return w(name) * h32.to(dtype)

    def linear(h, name):
        return F.linear(h, w(name + ".weight"), w.maybe(name + ".bias"))

    for i in range(shape.num_layers):
        p = f"model.layers.{i}."
        h = norm(x, p + "input_layernorm.weight")
        q = linear(h, p + "self_attn.q_proj").view(b, t, nh, hd).transpose(1, 2)
        k = linear(h, p + "self_attn.k_proj").view(b, t, nkv, hd).transpose(1, 2)
        v = linear(h, p + "self_attn.v_proj").view(b, t, nkv, hd).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if nkv != nh:  # grouped KV heads: query head j reads KV head j // (nh / nkv)
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=hd**-0.5)
        x = x + linear(a.transpose(1, 2).reshape(b, t, nh * hd), p + "self_attn.o_proj")
        h = norm(x, p + "post_attention_layernorm.weight")
        x = x + linear(F.silu(linear(h, p + "mlp.gate_proj")) * linear(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = norm(x, "model.norm.weight")
    head = w("lm_head.weight" if "lm_head.weight" in tensors else "model.embed_tokens.weight")
    if targets is None:
        return F.linear(x, head).float()
    return head_nll(x, targets, lambda rows: F.linear(rows, head).float(), head.shape[0])


def check_tensors(tensors, shape: LlamaShape) -> None:
    """Raise Unsupported naming the first tensor the forward needs and the mapping lacks."""
    need = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(shape.num_layers):
        p = f"model.layers.{i}."
        need += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
        need += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
        need += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
    missing = [n for n in need if n not in tensors]
    if missing:
        raise Unsupported(f"no tensor {missing[0]} ({len(missing)} of the Llama layout missing)")
