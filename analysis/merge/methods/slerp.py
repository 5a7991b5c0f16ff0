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
        max=1.0,
        help="interpolation factor: 0 = base model, 1 = the other model",
    ),
)

DOT_THRESHOLD = 0.9995
EPS = 1e-8
_CHUNK = 1 << 20


def slerp_coefficients(t: float, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(coef_a, coef_b) as 0-dim tensors of the working dtype, for 1-D `a`, `b`.

    Bit for bit mergekit 0.1.5's arithmetic (same ops, same shapes, same 2**20-element chunks): the
    norms are the norm of the per-chunk norms, the dot is the sum of per-chunk dots of the
    *normalised* chunks, all in the working dtype. (Accumulating in float64 instead moves elements
    whose merged value is near zero by many bf16 ulps, so we keep mergekit's order.)"""
    import torch

    work = torch.float64 if a.dtype == torch.float64 else torch.float32
    x2, y2 = a.view(1, -1), b.view(1, -1)  # mergekit's [outputs, weights] layout, one output
    tt = torch.tensor([[t]], dtype=torch.float64 if a.dtype == torch.float64 else torch.float32).to(work)
    na_parts, nb_parts = [], []
    for s in range(0, a.numel(), _CHUNK):
        na_parts.append(torch.linalg.vector_norm(x2[:, s : s + _CHUNK].to(work), dim=1, keepdim=True))
        nb_parts.append(torch.linalg.vector_norm(y2[:, s : s + _CHUNK].to(work), dim=1, keepdim=True))
    na = torch.linalg.vector_norm(torch.stack(na_parts), dim=0)
    nb = torch.linalg.vector_norm(torch.stack(nb_parts), dim=0)
    na = torch.where(na > EPS, na, 1)
    nb = torch.where(nb > EPS, nb, 1)
    dot_parts = []
    for s in range(0, a.numel(), _CHUNK):
        x = x2[:, s : s + _CHUNK].to(work) / na
        y = y2[:, s : s + _CHUNK].to(work) / nb
        dot_parts.append((x * y).sum(dim=1, keepdim=True))
        del x, y
    dot = torch.stack(dot_parts).sum(dim=0).clamp(-1, 1)
    linear = dot.abs() > DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    coef_b = torch.where(linear, tt, torch.sin(tt * theta) / sin_theta)
    return coef_a.view(()), coef_b.view(())


def slerp(inp: Inputs) -> torch.Tensor:
    import torch

    dtype, device, shape = inp.dtype, inp.device, inp.shape
    work = torch.float64 if dtype == torch.float64 else torch.float32
    a, b = flat(inp.base), flat(inp.models[0])
    if a.numel() == 0:
        return a.clone().view(shape)
    ca, cb = slerp_coefficients(inp.params["t"], a, b)
    # coef_a*a + coef_b*b as two rounded products and a rounded sum (no fused multiply-add), chunked
    # so the float32 temporaries stay small for bf16 inputs.
    out = torch.empty(a.shape, dtype=work, device=device)
    tmp = scratch("slerp.tmp", min(a.numel(), _CHUNK), work, device)
    for s in range(0, a.numel(), _CHUNK):
        e = min(a.numel(), s + _CHUNK)
        o, u = out[s:e], tmp[: e - s]
        o.copy_(a[s:e]).mul_(ca)  # in the working dtype (a 0-dim factor would not promote bf16)
        u.copy_(b[s:e]).mul_(cb)
        o.add_(u)
    return (out if dtype == work else out.to(dtype)).view(shape)


def interpolation_coefficients(x: CoefficientInputs) -> tuple[np.ndarray, np.ndarray]:
    """cᵢ = t: slerp linearised (≈ lerp for small angles)."""
    return x.shared(x.params["t"])


METHOD = define(
    "slerp",
    slerp,
    base_role=", the t = 0 end",
    base=BaseUse.REQUIRED,
    linear=Linear.INTERPOLATION,
    min_models=1,
    max_models=1,
    params=PARAMS,
    coefficients=interpolation_coefficients,
    description="spherical interpolation between the base model (t=0) and one other model (t=1)",
)
