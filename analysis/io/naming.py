"""Tensor name -> Site(layer, group, module).

Architectures are data, not code: a handful of tables map the many spellings of the same role
(Llama, GPT-2, BERT/RoBERTa, T5, ViT/CLIP, ...) to one short module name, so every metric and
every merge ratio can talk about "layer 7, attention" whatever the checkpoint calls it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from mergescope.io.model_parts import matched

GROUPS = ("embed", "attn", "mlp", "router", "norm", "head", "vision", "projector", "other")
BLOCK_GROUPS = ("attn", "mlp", "norm")  # the groups inside a block (a ratio table's columns)
NON_BLOCK_GROUPS = ("embed", "norm", "head", "other")  # a ratio table's rows outside the blocks (norm: the final one)
PROJECTION_GROUPS = ("attn", "mlp")  # a block's projection matrices
END_GROUPS = ("embed", "head")  # the stack's two ends: the embeddings and the output head
# A vision-language model's vision tower and projector are one group each (their blocks are not the
# language model's layers). `vision_model.*` alone is a CLIP-style encoder and keeps its layers.
_PART_GROUP = {"vision_tower": "vision", "multi_modal_projector": "projector"}
PART_GROUPS = tuple(_PART_GROUP.values())  # ("vision", "projector")

# Components that introduce a transformer block index.
BLOCK_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|block|blocks|resblocks|encoder_layers|decoder_layers)\.(\d+)(?:\.|$)")
_FIRST_INT_RE = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")
_SUFFIXES = ("weight", "bias", "scale", "g", "b")

# Per-block tensors: the container component decides the group.
_ATTN_CONTAINERS = {
    "self_attn",
    "attention",
    "attn",
    "selfattention",
    "encdecattention",
    "self_attention",
    "cross_attn",
    "crossattention",
    "encoder_attn",
    "mixer",
}
_MLP_CONTAINERS = {"mlp", "feed_forward", "densereludense", "ffn", "intermediate", "block_sparse_moe", "experts"}

_ATTN_ROLES = {
    "q_proj": "q_proj",
    "query": "q_proj",
    "q": "q_proj",
    "wq": "q_proj",
    "k_proj": "k_proj",
    "key": "k_proj",
    "k": "k_proj",
    "wk": "k_proj",
    "v_proj": "v_proj",
    "value": "v_proj",
    "v": "v_proj",
    "wv": "v_proj",
    "o_proj": "o_proj",
    "out_proj": "o_proj",
    "o": "o_proj",
    "wo": "o_proj",
    "dense": "o_proj",
    "c_proj": "o_proj",
    "dense_proj": "o_proj",
    "qkv_proj": "qkv_proj",
    "c_attn": "qkv_proj",
    "query_key_value": "qkv_proj",
    "wqkv": "qkv_proj",
    "in_proj": "qkv_proj",
    "in_proj_weight": "qkv_proj",
    "out_proj_weight": "o_proj",
    "relative_attention_bias": "rel_bias",
}
_MLP_ROLES = {
    "gate_proj": "gate_proj",
    "w1": "gate_proj",
    "wi_0": "gate_proj",
    "up_proj": "up_proj",
    "w3": "up_proj",
    "wi_1": "up_proj",
    "wi": "up_proj",
    "c_fc": "up_proj",
    "fc1": "up_proj",
    "dense_h_to_4h": "up_proj",
    "fc_in": "up_proj",
    "down_proj": "down_proj",
    "w2": "down_proj",
    "wo": "down_proj",
    "c_proj": "down_proj",
    "fc2": "down_proj",
    "dense_4h_to_h": "down_proj",
    "fc_out": "down_proj",
    "gate_up_proj": "gate_up_proj",
    "gate": "router",
    "router": "router",
}
# Mixture-of-experts blocks: each expert's projections are modules of their own (`expert3.gate_proj`),
# a shared expert's too (`shared_expert.up_proj`); the router that picks the experts is its own group.
_EXPERT_LISTS = {"experts"}
_SHARED_EXPERTS = {"shared_expert", "shared_experts"}
_ROUTER_ROLES = {"gate": "router", "router": "router", "shared_expert_gate": "shared_expert_gate"}
# Per-block norms, by the component that names them.
_NORM_ROLES = {
    "input_layernorm": "input_layernorm",
    "ln_1": "input_layernorm",
    "layernorm_before": "input_layernorm",
    "layer_norm1": "input_layernorm",
    "ln1": "input_layernorm",
    "attention_norm": "input_layernorm",
    "post_attention_layernorm": "post_attention_layernorm",
    "ln_2": "post_attention_layernorm",
    "layernorm_after": "post_attention_layernorm",
    "layer_norm2": "post_attention_layernorm",
    "ln2": "post_attention_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "pre_feedforward_layernorm": "pre_feedforward_layernorm",
    "post_feedforward_layernorm": "post_feedforward_layernorm",
    "q_norm": "q_norm",
    "k_norm": "k_norm",
}

# Tensors outside the blocks: matched on the last meaningful component (and its parent).
_EMBED_ROLES = {
    "embed_tokens": "embed_tokens",
    "wte": "embed_tokens",
    "word_embeddings": "embed_tokens",
    "shared": "embed_tokens",
    "token_embedding": "embed_tokens",
    "tok_embeddings": "embed_tokens",
    "embed_in": "embed_tokens",
    "wpe": "pos_embed",
    "position_embeddings": "pos_embed",
    "position_embedding": "pos_embed",
    "embed_positions": "pos_embed",
    "token_type_embeddings": "type_embed",
    "patch_embeddings": "patch_embed",
    "patch_embedding": "patch_embed",
    "projection": "patch_embed",
    "class_embedding": "cls_embed",
    "cls_token": "cls_embed",
}
_HEAD_ROLES = {
    "lm_head": "lm_head",
    "embed_out": "lm_head",
    "output": "lm_head",
    "decoder": "lm_head",
    "classifier": "classifier",
    "score": "classifier",
    "pooler": "pooler",
    "visual_projection": "projection",
    "text_projection": "projection",
    "logit_scale": "logit_scale",
    "predictions": "lm_head",
}
_FINAL_NORMS = {
    "norm",
    "ln_f",
    "final_layer_norm",
    "final_layernorm",
    "layernorm",
    "post_layernorm",
    "pre_layrnorm",
    "pre_layernorm",
    "norm_f",
    "layer_norm",
}


@dataclass(frozen=True)
class Site:
    layer: int | None
    group: str
    module: str

    @property
    def cell(self) -> tuple[int | None, str]:
        return (self.layer, self.group)


def _components(name: str) -> list[str]:
    parts = name.split(".")
    while len(parts) > 1 and parts[-1] in _SUFFIXES:
        parts.pop()
    return parts


def _is_norm(comp: str) -> bool:
    c = comp.lower()
    return "norm" in c or c.startswith("ln_") or c in ("ln1", "ln2", "ln_f")


def _block_site(layer: int, rest: list[str]) -> Site:
    lowered = [p.lower() for p in rest]
    # Norms first: "attention.output.LayerNorm" is a norm, not attention.
    for i, comp in enumerate(lowered):
        if comp in _NORM_ROLES:
            return Site(layer, "norm", _NORM_ROLES[comp])
        if _is_norm(comp):
            if "attention" in lowered[:i]:
                return Site(layer, "norm", "post_attention_layernorm")
            if lowered[:i] == ["output"]:  # BERT: output.LayerNorm closes the MLP sub-block
                return Site(layer, "norm", "post_feedforward_layernorm")
            if lowered[:i] and lowered[0] == "layer" and len(lowered) > 1:  # T5 layer.K.layer_norm
                return Site(layer, "norm", {"0": "input_layernorm"}.get(lowered[1], "post_attention_layernorm"))
            return Site(layer, "norm", rest[i])
    moe = _moe_site(layer, lowered, rest)
    if moe is not None:
        return moe
    # BERT/ViT block layout: intermediate.dense / output.dense
    if lowered[:2] == ["intermediate", "dense"] or lowered[:2] == ["intermediate", "dense_act"]:
        return Site(layer, "mlp", "up_proj")
    if lowered[:2] == ["output", "dense"]:
        return Site(layer, "mlp", "down_proj")
    for i, comp in enumerate(lowered):
        if comp in _ATTN_CONTAINERS:
            tail = lowered[i + 1 :]
            for t in reversed(tail):
                if t in _ATTN_ROLES:
                    role = _ATTN_ROLES[t]
                    if comp in ("encdecattention", "cross_attn", "crossattention", "encoder_attn"):
                        role = "cross_" + role
                    return Site(layer, "attn", role)
            return Site(layer, "attn", rest[-1] if tail else comp)
        if comp in _MLP_CONTAINERS:
            tail = lowered[i + 1 :]
            for t in reversed(tail):
                if t in _MLP_ROLES:
                    return Site(layer, "mlp", _MLP_ROLES[t])
            return Site(layer, "mlp", rest[-1] if tail else comp)
    last = lowered[-1] if lowered else ""
    if last in _MLP_ROLES and last not in ("wo", "c_proj", "gate"):
        return Site(layer, "mlp", _MLP_ROLES[last])
    if last in _ATTN_ROLES and last not in ("dense", "o", "wo", "c_proj"):
        return Site(layer, "attn", _ATTN_ROLES[last])
    return Site(layer, "other", rest[-1] if rest else "block")


def _moe_site(layer: int, lowered: list[str], rest: list[str]) -> Site | None:
    """An expert's projection (`experts.3.w1` -> expert3.gate_proj), a shared expert's, or the router
    (`mlp.gate`, `block_sparse_moe.gate`, `shared_expert_gate`); None for anything else."""
    for i, comp in enumerate(lowered):
        if comp in _EXPERT_LISTS and i + 1 < len(lowered) and lowered[i + 1].isdigit():
            return Site(layer, "mlp", f"expert{int(lowered[i + 1])}.{_mlp_role(lowered[i + 2 :], rest[-1])}")
        if comp in _SHARED_EXPERTS:
            return Site(layer, "mlp", f"shared_expert.{_mlp_role(lowered[i + 1 :], rest[-1])}")
        if comp in _MLP_CONTAINERS and i + 1 < len(lowered) and lowered[i + 1] in _ROUTER_ROLES:
            return Site(layer, "router", _ROUTER_ROLES[lowered[i + 1]])
    return None


def _mlp_role(tail: list[str], fallback: str) -> str:
    return next((_MLP_ROLES[t] for t in reversed(tail) if t in _MLP_ROLES), tail[-1] if tail else fallback)


def _global_site(parts: list[str]) -> Site:
    lowered = [p.lower() for p in parts]
    last = lowered[-1]
    parent = lowered[-2] if len(lowered) > 1 else ""
    if "embeddings" in lowered and _is_norm(last):
        return Site(None, "norm", "embed_norm")
    if _is_norm(last):
        if last in _FINAL_NORMS or last.startswith("ln_f") or "final" in last or "post" in last or "pre" in last:
            if any(h in lowered for h in ("lm_head", "cls", "predictions", "transform")):
                return Site(None, "head", "head_norm")
            return Site(None, "norm", "final_norm")
        return Site(None, "norm", parts[-1])
    for comp in (last, parent):
        if comp in _EMBED_ROLES and not (comp == "projection" and "patch_embeddings" not in lowered):
            return Site(None, "embed", _EMBED_ROLES[comp])
    if "embeddings" in lowered:
        return Site(None, "embed", parts[-1])
    for comp in lowered:
        if comp in _HEAD_ROLES:
            return Site(None, "head", _HEAD_ROLES[comp])
    if "cls" in lowered:
        return Site(None, "head", parts[-1])
    return Site(None, "other", parts[-1])


@lru_cache(maxsize=65536)
def site_of(name: str) -> Site:
    """Where a tensor sits: block index, layer group and module role."""
    part = _PART_GROUP.get(matched(name))
    if part is not None:
        return Site(None, part, _stack_site(name).module)
    return _stack_site(name)


def _stack_site(name: str) -> Site:
    m = BLOCK_RE.search(name)
    if m:
        layer = int(m.group(1))
        rest = _components(name[m.end() :]) if m.end() < len(name) else []
        if rest and rest[-1] in _SUFFIXES:
            rest = rest[:-1]
        return _block_site(layer, rest)
    parts = _components(name)
    site = _global_site(parts)
    if site.group == "other":
        m = _FIRST_INT_RE.search(name)
        if m:
            return Site(int(m.group(1)), "other", parts[-1])
    return site


def layer_count(names) -> int:
    """Number of blocks: one more than the largest block index seen (0 when none)."""
    layers = [s.layer for s in map(site_of, names) if s.layer is not None]
    return max(layers) + 1 if layers else 0
