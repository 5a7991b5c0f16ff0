"""passthrough, as mergekit 0.1.5: copy the tensor of the single input model, optionally times `scale`.

Used for layer stacking ("frankenmerges") with `slices:`. Exactly one input: `base` is not used (a
config naming a `base_model` besides one model gives mergekit two inputs and it refuses). The result
may be the input tensor itself (no copy) when no scaling or dtype change is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from mergescope.io.errors import InputError
from mergescope.merge.methods._util import align, common_dtype, model_params
from mergescope.merge.methods.base import BaseUse, Linear, MergeContext, MergeMethod, ParamSpec

PARAMS = (ParamSpec("scale", None, "float", per_model=True, help="multiply the tensor by this (unset: copy as is)"),)


def passthrough_merge(
    base: torch.Tensor | None,
    tensors: list[torch.Tensor],
    model_params_: list[dict] | None,
    params: dict | None,
    ctx: MergeContext | None = None,
) -> torch.Tensor:
    import torch

    ctx = ctx or MergeContext()
    if len(tensors) != 1:
        raise InputError(f"merge method passthrough takes exactly one model per slice (got {len(tensors)})")
    scale = model_params(PARAMS, model_params_, 1, params, ctx, "passthrough")[0]["scale"]
    t = align(tensors[0], common_dtype(tensors), torch.device(ctx.device))
    return t if scale is None else t * float(scale)


METHOD = MergeMethod(
    name="passthrough",
    merge=passthrough_merge,
    base=BaseUse.INPUT,
    linear=Linear.SCALE,
    min_models=1,
    max_models=1,
    params=PARAMS,
    description="copy one model's tensors (optionally scaled): layer stacking with slices",
)
