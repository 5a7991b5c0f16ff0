"""nuslerp, as mergekit 0.1.5: slerp between exactly two models, with weights instead of t.

t = w₂ / (w₁ + w₂) (0.5 when |w₁ + w₂| < 1e-6). With a base model (optional) the two *task vectors*
are interpolated and added to the base: θ₀ + slerp(t, θ₁ − θ₀, θ₂ − θ₀); without one, the models
themselves: slerp(t, θ₁, θ₂). `base` is that optional base; `tensors` are the two models.

Vectors: `nuslerp_flatten` (default true) treats the whole tensor as one vector; otherwise each row
(last dim) is a vector, or, with `nuslerp_row_wise`, each column (dim 0 moved last).
Per vector: û = u / max(‖u‖, 1e-7); c = clamp(û·v̂, −1, 1); colinear when 1 − c² <= 1e-16 → lerp;
else (sin((1−t)θ)·u + sin(tθ)·v) / sin θ with θ = acos c. Computed in the inputs' dtype.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from mergescope.merge.methods._util import Inputs, define, flat
from mergescope.merge.methods.base import BaseUse, Linear, ParamSpec
from mergescope.merge.methods.multislerp import weight_shares

PARAMS = (
    ParamSpec("weight", None, "float", per_model=True, required=True, help="relative weight of this model"),
    ParamSpec("nuslerp_row_wise", False, "bool", help="interpolate column vectors (dim 0) instead of rows"),
    ParamSpec("nuslerp_flatten", True, "bool", help="interpolate the whole tensor as one vector"),
)

_EPS = 1e-8


def _angle(cos: torch.Tensor):
    import torch

    colinear = (1 - cos.square()) <= _EPS**2
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    return colinear, theta, torch.sin(theta)


def nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dim: int = -1, flatten: bool = False) -> torch.Tensor:
    """mergekit's nuslerp on two same-shape tensors (a fresh result)."""
    import torch

    shape = v0.shape
    if flatten or v0.dim() <= 1:
        a, b = flat(v0), flat(v1)
        na = torch.linalg.vector_norm(a).clamp(min=1e-7)
        nb = torch.linalg.vector_norm(b).clamp(min=1e-7)
        acc = torch.float64 if a.dtype == torch.float64 else torch.float32
        cos = (torch.dot(a.to(acc), b.to(acc)) / (na.to(acc) * nb.to(acc))).to(a.dtype).clamp(-1, 1)
        colinear, theta, sin = _angle(cos)
        if bool(colinear):
            out = torch.mul(a, 1 - t)
            out.add_(b, alpha=t)
        else:
            out = torch.mul(a, torch.sin((1 - t) * theta))
            out.add_(b * torch.sin(t * theta)).div_(sin)
        return out.view(shape)
    if dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    u0 = v0 / torch.linalg.vector_norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.linalg.vector_norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (u0 * u1).sum(dim=-1, keepdim=True).clamp(-1, 1)
    del u0, u1
    colinear, theta, sin = _angle(cos)
    res = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin
    res = torch.where(colinear, (1 - t) * v0 + t * v1, res)
    if dim != -1:
        res = res.transpose(dim, -1)
    return res.reshape(shape)


def nuslerp_merge(inp: Inputs) -> torch.Tensor:
    w0, w1 = inp.values("weight")
    total = w0 + w1
    t = 0.5 if abs(total) < 1e-6 else w1 / total
    x0, x1 = inp.models
    dim = 0 if inp.params["nuslerp_row_wise"] else -1
    flatten = inp.params["nuslerp_flatten"]
    b = inp.base
    if b is None:
        return nuslerp(t, x0, x1, dim=dim, flatten=flatten)
    out = nuslerp(t, x0 - b, x1 - b, dim=dim, flatten=flatten)
    return out.add_(b)


METHOD = define(
    "nuslerp",
    nuslerp_merge,
    base=BaseUse.OPTIONAL,
    linear=Linear.WEIGHT_SHARES,
    min_models=2,
    max_models=2,
    params=PARAMS,
    coefficients=partial(weight_shares, normalize=True),
    description="slerp of two models (or of their task vectors when a base is given), t from the weights",
)
