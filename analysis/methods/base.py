"""What a merge method declares: its inputs, its parameters, and a pure tensor function.

The registry (`analysis.methods.REGISTRY`) maps a mergekit method name to a `MergeMethod`; the plan
validates against `params` and the executor calls `merge` once per output tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class ParamSpec:
    """One parameter. `per_model` ones come from `models[i].parameters` (mergekit's tensor parameters);
    the others are global (`parameters:` at top level). `default=None` with `required=True` means the
    plan must set it."""

    name: str
    default: Any = None
    kind: str = "float"  # float | int | bool | str
    per_model: bool = False
    required: bool = False
    min: float | None = None
    max: float | None = None
    help: str = ""


@dataclass
class MergeContext:
    """What a method may know besides the tensors: the tensor's name and a seeded generator."""

    tensor_name: str = ""
    seed: int | None = None
    device: str | torch.device = "cpu"
    generator: torch.Generator | None = None
    # release(start, stop): streaming kernels call it when elements [start, stop) of the flattened
    # stored inputs will not be read again soon (the executor drops their memory-mapped pages).
    release: Callable[[int, int], None] | None = None


@dataclass(frozen=True)
class MergeMethod:
    name: str
    # merge(base, tensors, model_params, params, ctx) -> tensor
    #   base: the base model's tensor (float32) or None; tensors: the fine-tunes' tensors (float32),
    #   same order as model_params (one dict of resolved per-model params each); params: global params.
    merge: Callable[..., torch.Tensor]
    needs_base: bool | None  # True: required; False: not used; None: optional
    min_models: int = 1  # number of non-base models
    max_models: int | None = None
    params: tuple[ParamSpec, ...] = field(default_factory=tuple)
    randomized: bool = False
    description: str = ""
    # Optional streaming CPU kernel: stream(raw_base, raw_tensors, model_params, params, ctx, out_dtype)
    # gets the STORED tensors (any float dtype, e.g. memory-mapped bf16), computes in float32 exactly
    # like `merge` and returns the result in out_dtype, or None when it does not handle the case
    # (then the executor calls `merge` on float32 copies). Used only on CPU with a float32 compute dtype.
    stream: Callable[..., torch.Tensor | None] | None = None

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)
