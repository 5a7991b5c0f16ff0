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
    import numpy as np
    import torch

from mergescope.merge.methods._util import Inputs, define, flat, scratch
from mergescope.merge.methods.base import BaseUse, CoefficientInputs, Linear, ParamSpec

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


def nearswap(inp: Inputs) -> torch.Tensor:
    import torch

    dtype, device, t = inp.dtype, inp.device, inp.params["t"]
    a, b = flat(inp.base), flat(inp.models[0])
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
    return out.view(inp.shape)


def clipped_coefficients(x: CoefficientInputs) -> tuple[np.ndarray, np.ndarray]:
    """cᵢ = 1, an upper bound: θ₀ + clip(τ, −t, t) is at most the whole task vector."""
    return x.shared(1.0)


METHOD = define(
    "nearswap",
    nearswap,
    base=BaseUse.REQUIRED,
    linear=Linear.CLIPPED,
    min_models=1,
    max_models=1,
    params=PARAMS,
    coefficients=clipped_coefficients,
    description="NearSwap: the other model's values where they are within t of the base, moves cut to ±t elsewhere",
)
