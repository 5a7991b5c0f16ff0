"""linear (model soup), as mergekit 0.1.5: Σ wᵢθᵢ, divided by Σ wᵢ when `normalize` (default true).

mergekit computes in float32 (float64 for float64 inputs) and returns the inputs' dtype.

The base: mergekit's linear ignores the *role* of a base model, but when a config names `base_model`
that is not among `models`, mergekit adds it as one more input, and then it needs a `weight` like any
other (usually from the top-level `parameters:`). So a plan resolver must pass the base model as an
ordinary entry of `tensors` (with its own resolved `weight`) in that case; `base` itself is not used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from mergescope.io.errors import InputError
from mergescope.merge.methods._util import align, check_shapes, common_dtype, global_params, model_params, where
from mergescope.merge.methods.base import BaseUse, Linear, MergeContext, MergeMethod, ParamSpec

PARAMS = (
    ParamSpec("weight", None, "float", per_model=True, required=True, help="this model's share"),
    ParamSpec("normalize", True, "bool", help="divide by the sum of the weights"),
)


def linear_merge(
    base: torch.Tensor | None,
    tensors: list[torch.Tensor],
    model_params_: list[dict] | None,
    params: dict | None,
    ctx: MergeContext | None = None,
) -> torch.Tensor:
    import torch

    ctx = ctx or MergeContext()
    if not tensors:
        raise InputError("merge method linear needs at least one model")
    check_shapes(None, tensors, ctx, "linear")
    device = torch.device(ctx.device)
    dtype = common_dtype(tensors)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    gp = global_params(PARAMS, params, ctx, "linear")
    mps = model_params(PARAMS, model_params_, len(tensors), params, ctx, "linear")
    # mergekit's weight tensor is in the working dtype
    weights = torch.tensor([float(mp["weight"]) for mp in mps], dtype=work).tolist()
    first = align(tensors[0], dtype, device)
    out = torch.mul(first, weights[0]) if dtype == work else first.to(work).mul_(weights[0])
    for t, w in zip(tensors[1:], weights[1:]):
        out.add_(align(t, dtype, device), alpha=w)
    if gp["normalize"]:
        total = torch.tensor(weights, dtype=work).sum()
        if float(total) == 0.0:
            # mergekit divides anyway and writes inf/NaN; refuse instead.
            raise InputError(
                f"merge method linear: the weights sum to 0{where(ctx)} with normalize: true; "
                "change the weights or set normalize: false"
            )
        out.div_(total.to(device))
    return out if out.dtype == dtype else out.to(dtype)


METHOD = MergeMethod(
    name="linear",
    merge=linear_merge,
    base=BaseUse.INPUT,
    linear=Linear.WEIGHTED_MEAN,
    min_models=1,
    max_models=None,
    params=PARAMS,
    description="weighted average of the models (normalized by the sum of weights by default)",
)
