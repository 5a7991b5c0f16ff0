"""Fused expert tensors read as one tensor per expert, under the names of the per-expert layout.

A mixture-of-experts layer is stored one of two ways. The per-expert layout (transformers' original
format, what `save_pretrained` writes and mergekit reads) has a tensor per expert and projection:
`mlp.experts.3.gate_proj.weight`, Mixtral's `block_sparse_moe.experts.3.w1.weight`. The fused layout
(transformers' in-memory modules, written with `save_original_format=False`) stacks the experts in the
first dimension: `mlp.experts.gate_up_proj` [E, 2·I, H] (each expert's gate rows, then its up rows) and
`mlp.experts.down_proj` [E, H, I].

A checkpoint holding fused tensors reads as the per-expert layout: every expert slice (each half of
gate_up) is a tensor of its own, a zero-copy view of the stored one, under the name the per-expert
layout gives it (Mixtral-family configs: `block_sparse_moe.…w1/w3/w2`, the router renamed with them;
others: `mlp.experts.E.gate_proj/up_proj/down_proj.weight`). So the analysis sums each expert on its
own, a merge trims each expert as it does per-expert tensors, filters such as `experts.3.` address an
expert in both layouts, and the same model merges to the same weights in either. Fused tensors of
another orientation ([E, H, 2·I]) are split per expert only (`experts.3.gate_up_proj`). The merge
writes its output back in its reference model's layout (merge/experts.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FUSED_RE = re.compile(r"^(?P<pre>.*?)(?P<cont>[^.]+)\.experts\.(?P<proj>gate_up_proj|down_proj)(?P<suf>\.weight)?$")
# model_type -> (the block's container, gate, up, down) in transformers' original format
_ORIGINAL = {
    "mixtral": ("block_sparse_moe", "w1", "w3", "w2"),
    "minimax": ("block_sparse_moe", "w1", "w3", "w2"),
}
_DEFAULT = (None, "gate_proj", "up_proj", "down_proj")  # None: the container keeps its name
_ROUTER_RE = re.compile(r"^(?P<pre>.*?)(?P<cont>[^.]+)\.(?P<rest>gate\.[^.]+)$")


@dataclass(frozen=True)
class Slot:
    """Where a per-expert tensor lies in a stored one: expert `expert` (None: the whole tensor, only
    renamed), rows [start, stop) of that expert's slice (None: all of them)."""

    stored: str
    expert: int | None
    rows: tuple[int, int] | None
    shape: tuple[int, ...]  # of the per-expert tensor

    def view(self, t):
        """The per-expert tensor as a view of the stored tensor `t`."""
        if self.expert is None:
            return t
        t = t[self.expert]
        return t if self.rows is None else t[self.rows[0] : self.rows[1]]

    def offset(self, stored_shape: tuple[int, ...]) -> int:
        """Its first element's index in the flattened stored tensor."""
        if self.expert is None:
            return 0
        row = 1
        for s in stored_shape[2:]:
            row *= s
        per_expert = row * (stored_shape[1] if len(stored_shape) > 1 else 1)
        return self.expert * per_expert + (self.rows[0] * row if self.rows else 0)


def expert_slots(shapes: dict[str, tuple[int, ...]], model_type: str | None) -> dict[str, Slot]:
    """{per-expert name: Slot} for every fused expert tensor in `shapes` (name -> stored shape), and the
    router beside them when the per-expert layout renames its container; {} when there is none."""
    cont_new, gate, up, down = _ORIGINAL.get(model_type or "", _DEFAULT)
    out: dict[str, Slot] = {}
    renamed: set[str] = set()
    for name, shape in shapes.items():
        m = _FUSED_RE.match(name)
        if m is None or len(shape) != 3:
            continue
        pre, cont, proj, suf = m["pre"], m["cont"], m["proj"], m["suf"] or ""
        gu, dn = (shapes.get(f"{pre}{cont}.experts.{p}{suf}") for p in ("gate_up_proj", "down_proj"))
        # transformers' orientation: gate_up [E, 2·I, H], down [E, H, I] (a lone gate_up is not split in halves)
        if gu is None or dn is None or len(gu) != 3 or len(dn) != 3:
            standard = proj == "down_proj"
        else:
            standard = gu[1] == 2 * dn[2] and gu[2] == dn[1]
        if standard and cont_new is not None:
            renamed.add(f"{pre}{cont}.")
        base = f"{pre}{cont_new or cont}.experts."
        for e in range(shape[0]):
            if not standard:
                out[f"{base}{e}.{proj}"] = Slot(name, e, None, tuple(shape[1:]))
            elif proj == "down_proj":
                out[f"{base}{e}.{down}.weight"] = Slot(name, e, None, tuple(shape[1:]))
            else:
                half = shape[1] // 2
                out[f"{base}{e}.{gate}.weight"] = Slot(name, e, (0, half), (half, shape[2]))
                out[f"{base}{e}.{up}.weight"] = Slot(name, e, (half, shape[1]), (half, shape[2]))
    for name, shape in shapes.items():  # the router moves with the experts (mlp.gate -> block_sparse_moe.gate)
        m = _ROUTER_RE.match(name)
        if m is not None and f"{m['pre']}{m['cont']}." in renamed:
            out[f"{m['pre']}{cont_new}.{m['rest']}"] = Slot(name, None, None, tuple(shape))
    return out
