"""nearswap, as mergekit 0.1.5: take the other model's value wherever it is near the base's.

`base` (required) is a, `tensors[0]` (exactly one model) is b; `t` (required, global) is the distance
under which an entry is swapped. Per entry:

    w = clamp(t / max(|a − b|, 1e-6), 0, 1);   result = w·b + (1 − w)·a

i.e. a + clip(b − a, −t, t): entries of the task vector within ±t are taken whole, larger ones are
cut to ±t (for t >= 1e-6). Computed in the inputs' dtype with mergekit's roundings (t / x is
torch's reciprocal(x)·t; every product and sum rounded on its own), in chunks so the temporaries
stay small. t < 0 would always give the base (refused here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from mergescope.merge.methods._util import base_and_one, flat, global_params, scratch
from mergescope.merge.methods.base import BaseUse, Linear, MergeContext, MergeMethod, ParamSpec

PARAMS = (
    ParamSpec(
        "t",
        None,
        "float",
        required=True,
        min=0.0,
        help="swap distance: entries within ±t of the base take the model's value, larger moves are cut to ±t",
    ),
)

_MIN_DIFF = 1e-6
_CHUNK = 1 << 20


def nearswap_merge(
    base: torch.Tensor | None,
    tensors: list[torch.Tensor],
    model_params: list[dict] | None,
    params: dict | None,
    ctx: MergeContext | None = None,
) -> torch.Tensor:
    import torch

    ctx = ctx or MergeContext()
    device, dtype, a, b = base_and_one(base, tensors, ctx, "nearswap")
    t = float(global_params(PARAMS, params, ctx, "nearswap")["t"])
    a, b = flat(a), flat(b)
    n = a.numel()
    out = torch.empty(n, dtype=dtype, device=device)
    w = scratch("nearswap.w", min(n, _CHUNK), dtype, device)
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        ws, o = w[: e - s], out[s:e]
        torch.sub(a[s:e], b[s:e], out=ws)
        ws.abs_().clamp_(min=_MIN_DIFF).reciprocal_().mul_(t).clamp_(0, 1)  # mergekit's t / x
        torch.mul(ws, b[s:e], out=o)
        ws.neg_().add_(1).mul_(a[s:e])  # (1 − w)·a, the same two roundings
        o.add_(ws)
    return out.view(base.shape)


METHOD = MergeMethod(
    name="nearswap",
    merge=nearswap_merge,
    base=BaseUse.REQUIRED,
    linear=Linear.CLIPPED,
    min_models=1,
    max_models=1,
    params=PARAMS,
    description="NearSwap: the other model's values where they are within t of the base, moves cut to ±t elsewhere",
)
