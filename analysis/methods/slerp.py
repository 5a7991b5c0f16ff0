"""slerp, as mergekit 0.1.5: spherical interpolation between the base model and ONE other model.

`base` is the t = 0 endpoint (mergekit's `base_model`), `tensors[0]` the t = 1 endpoint; `t` is a
global parameter (plans usually give it per layer as a gradient or per module as a filter list; the
resolver turns that into one number per tensor). The whole tensor is one vector:

    â = a/‖a‖, b̂ = b/‖b‖ (a norm <= 1e-8 counts as 1);  d = clamp(â·b̂, −1, 1)
    |d| > 0.9995 (colinear or antipodal): (1−t)·a + t·b
    else: θ = acos d;  sin((1−t)θ)/sin θ · a + sin(tθ)/sin θ · b

Computed in float32 (float64 for float64 inputs) and returned in the inputs' dtype. t outside [0, 1]
extrapolates, as in mergekit.
"""
from __future__ import annotations

import math

import torch

from ..errors import InputError
from ._util import align, check_shapes, common_dtype, flat, global_params
from .base import MergeContext, MergeMethod, ParamSpec

PARAMS = (
    ParamSpec("t", None, "float", required=True, help="interpolation factor: 0 = base model, 1 = the other model"),
)

DOT_THRESHOLD = 0.9995
EPS = 1e-8
_CHUNK = 1 << 20


def slerp_coefficients(t: float, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(coef_a, coef_b) for 1-D `a`, `b`; norms and the dot are accumulated chunk-wise in float64."""
    work = torch.float64 if a.dtype == torch.float64 else torch.float32
    aa = bb = ab = 0.0
    for s in range(0, a.numel(), _CHUNK):
        x = a[s:s + _CHUNK].to(work)
        y = b[s:s + _CHUNK].to(work)
        aa += float(torch.dot(x, x))
        bb += float(torch.dot(y, y))
        ab += float(torch.dot(x, y))
    na, nb = math.sqrt(aa), math.sqrt(bb)
    na = na if na > EPS else 1.0
    nb = nb if nb > EPS else 1.0
    dot = min(1.0, max(-1.0, ab / na / nb))
    if abs(dot) > DOT_THRESHOLD:
        return 1.0 - t, t
    theta = math.acos(dot)
    s = math.sin(theta)
    return math.sin((1.0 - t) * theta) / s, math.sin(t * theta) / s


def slerp_merge(base: torch.Tensor | None, tensors: list[torch.Tensor], model_params: list[dict] | None,
                params: dict | None, ctx: MergeContext | None = None) -> torch.Tensor:
    ctx = ctx or MergeContext()
    if base is None or len(tensors) != 1:
        raise InputError("merge method slerp needs a base model (`base_model:`, the t = 0 end) and exactly one "
                         f"other model (got {len(tensors)})")
    check_shapes(base, tensors, ctx, "slerp")
    t = float(global_params(PARAMS, params, ctx, "slerp")["t"])
    device = torch.device(ctx.device)
    dtype = common_dtype([base, tensors[0]])
    work = torch.float64 if dtype == torch.float64 else torch.float32
    a = flat(align(base, dtype, device))
    b = flat(align(tensors[0], dtype, device))
    if a.numel() == 0:
        return a.clone().view(base.shape)
    ca, cb = slerp_coefficients(t, a, b)
    out = torch.mul(a, ca) if dtype == work else a.to(work).mul_(ca)
    out.add_(b, alpha=cb)
    return (out if dtype == work else out.to(dtype)).view(base.shape)


METHOD = MergeMethod(
    name="slerp", merge=slerp_merge, needs_base=True, min_models=1, max_models=1, params=PARAMS,
    description="spherical interpolation between the base model (t=0) and one other model (t=1)",
)
