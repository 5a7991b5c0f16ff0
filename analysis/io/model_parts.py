"""Which module of a multi-module checkpoint a tensor belongs to (mergekit's `modules:` names).

Vision-language and encoder-decoder checkpoints hold several stacks with their own layer numbering:
a LLaVA-style model's vision tower has layers 0..23 beside the language model's 0..31. mergekit names
those stacks per architecture (`text_decoder`, `vision_tower`, `multi_modal_projector`, `encoder`,
`decoder`, `shared`); here they are recognised from tensor names alone, in transformers' legacy and v5
layouts, so any checkpoint that follows the conventions works without an architecture table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT = "default"  # the whole checkpoint: mergekit's single module of a plain model


@dataclass(frozen=True)
class Part:
    name: str
    pattern: re.Pattern
    layer_keys: tuple[str, ...]  # config.json keys (dotted) holding its layer count, first present wins


# First match wins: the projector before the vision tower it sits in (Qwen2-VL's `visual.merger`).
PARTS = (
    Part(
        "multi_modal_projector",
        re.compile(r"^(?:model\.)?(?:multi_modal_projector|visual\.merger|visual\.deepstack_merger_list)\."),
        (),
    ),
    Part(
        "vision_tower",
        re.compile(r"^(?:model\.)?(?:vision_tower|visual)\."),
        ("vision_config.num_hidden_layers", "vision_config.depth"),
    ),
    Part("vision_model", re.compile(r"^(?:model\.)?vision_model\."), ("vision_config.num_hidden_layers",)),
    Part(
        "text_decoder",
        re.compile(r"^(?:model\.)?language_model\."),
        ("text_config.num_hidden_layers", "num_hidden_layers"),
    ),
    Part("encoder", re.compile(r"^(?:model\.)?encoder\."), ("encoder_layers", "num_layers")),
    Part("decoder", re.compile(r"^(?:model\.)?decoder\."), ("decoder_layers", "num_decoder_layers")),
    Part("shared", re.compile(r"^(?:model\.)?shared\."), ()),
)
_BY_NAME = {p.name: p for p in PARTS}
_VISION = {"multi_modal_projector", "vision_tower", "vision_model", "text_decoder"}
_SEQ2SEQ = {"encoder", "decoder"}


def matched(name: str) -> str | None:
    for p in PARTS:
        if p.pattern.match(name):
            return p.name
    return None


def rest_module(found: Iterable[str]) -> str:
    """The module of the tensors no pattern claims (`lm_head`, Qwen2-VL's `model.layers.*`): the text
    decoder of a vision-language model, the decoder of an encoder-decoder, else the whole model."""
    found = set(found)
    if found & _VISION:
        return "text_decoder"
    if found & _SEQ2SEQ:
        return "decoder"
    return DEFAULT


def split(names: Iterable[str]) -> dict[str, list[str]]:
    """{module name: tensor names in checkpoint order}; a plain model is one `default` module."""
    names = list(names)
    tagged = [(n, matched(n)) for n in names]
    rest = rest_module(m for _, m in tagged if m)
    out: dict[str, list[str]] = {}
    for n, m in tagged:
        out.setdefault(m or rest, []).append(n)
    return out


def module_of(name: str, listed: Iterable[str]) -> str:
    """The module of one tensor name, given the module names a plan lists (for name-only lookups)."""
    listed = list(listed)
    if listed == [DEFAULT]:
        return DEFAULT
    return matched(name) or rest_module(listed)


def layer_count_from_config(config: dict, module: str) -> int | None:
    """A module's layer count from config.json (the keys transformers uses), or None."""
    part = _BY_NAME.get(module)
    for key in part.layer_keys if part else ():
        v = config_value(config, key)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def config_value(config: dict, key: str):
    node = config
    for k in key.split("."):
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def set_layer_count(config: dict, module: str, n: int) -> bool:
    """Set a module's layer count in a config dict (the first of its keys that exists); False if none."""
    part = _BY_NAME.get(module)
    keys = part.layer_keys if part else ("num_hidden_layers", "n_layer", "num_layers")
    for key in keys:
        *parents, last = key.split(".")
        node = config
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(last), int):
            node[last] = n
            return True
    return False
