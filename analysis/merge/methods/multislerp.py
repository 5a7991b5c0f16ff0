"""multislerp, as mergekit 0.1.5: barycentric interpolation of any number of models on a hypersphere.

`tensors` are N >= 1 models with a `weight` each; `base` is optional: with it the task vectors
xᵢ = θᵢ − θ₀ are interpolated and the result added back to θ₀, without it the models themselves.
One model alone is returned unchanged (mergekit does no interpolation, whatever the base). Else,
with w = weights (÷ Σw when `normalize_weights`, default true), each tensor one vector:

    uᵢ = xᵢ / (‖xᵢ‖ + eps);  m = Σ wᵢuᵢ;  m̂ = m / ‖m‖               (the weighted mean direction)
    vᵢ = uᵢ − (uᵢ·m̂)·m̂;  v = Σ wᵢvᵢ;  τ = ‖v‖ + eps                  (tangent space at m̂)
    result = (m̂·cos τ + v·sin τ / τ) · Σ wᵢ‖xᵢ‖                       (exponential map, mean norm)

When ‖m‖ < eps (antipodal inputs that cancel): two models give the weighted sum w₀x₀ + w₁x₁ (+ θ₀);
more is an error, as in mergekit. Weights summing to 0 with `normalize_weights` are refused (mergekit
divides by 0 and writes NaN).

Computed in the inputs' dtype with mergekit's operations on the same [N, n] layout (its norms, dots and
sums over the models are reductions of stacked tensors), so the result is mergekit's to the bit. Memory:
two pooled [N, n] buffers besides the inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

from mergescope.io.errors import InputError
from mergescope.merge.methods._util import Inputs, define, flat, scratch
from mergescope.merge.methods.base import BaseUse, CoefficientInputs, Linear, ParamSpec

PARAMS = (
    ParamSpec("weight", None, "float", per_model=True, required=True, help="this model's share of the interpolation"),
    ParamSpec("normalize_weights", True, "bool", help="divide the weights by their sum"),
    ParamSpec("eps", 1e-8, "float", min=0.0, help="guard added to norms (numerical stability)"),
)


def multislerp(inp: Inputs) -> torch.Tensor:
    import torch

    eps, dtype, device, shape = inp.params["eps"], inp.dtype, inp.device, inp.models[0].shape
    if len(inp.models) == 1:
        return inp.models[0].clone()
    b = flat(inp.base) if inp.base is not None else None
    xs = [flat(t) for t in inp.models]
    count = len(xs)

    weights = torch.tensor(inp.values("weight"), dtype=dtype, device=device)
    if inp.params["normalize_weights"]:
        total = weights.sum()
        if float(total) == 0.0:
            raise InputError(
                f"merge method multislerp: the weights sum to 0{inp.where} with normalize_weights: true; "
                "change the weights or set normalize_weights: false"
            )
        weights = weights / total
    wcol = weights.view(-1, 1)

    units = inp.task_vectors("multislerp.units")
    tmp = scratch("multislerp.tmp", units.shape, dtype, device)
    norms = torch.linalg.vector_norm(units, dim=-1, keepdim=True)
    units.div_(norms + eps)
    torch.mul(units, wcol, out=tmp)
    mean = tmp.sum(0)
    mean_norm = torch.linalg.vector_norm(mean)
    if bool(mean_norm < eps):
        if count == 2:  # antipodal pair: mergekit falls back to the weighted sum
            d0, d1 = ((x - b if b is not None else x) for x in xs)
            out = d0 * weights[0] + d1 * weights[1]
            return (out if b is None else out + b).view(shape)
        raise InputError(
            f"merge method multislerp: the weighted mean direction is zero{inp.where} (antipodal models "
            "whose weights balance out); change the weights"
        )
    mean.div_(mean_norm)
    torch.mul(units, mean, out=tmp)
    dots = tmp.sum(-1, keepdim=True)
    torch.mul(dots, mean, out=tmp)
    torch.sub(units, tmp, out=units)  # the tangent vectors
    torch.mul(units, wcol, out=tmp)
    tangent = tmp.sum(0)
    tangent_norm = torch.linalg.vector_norm(tangent) + eps
    tangent.mul_(torch.sin(tangent_norm) / tangent_norm)
    out = mean.mul_(torch.cos(tangent_norm)).add_(tangent)
    out.mul_((norms.squeeze(-1) * weights).sum())
    if b is not None:
        out.add_(b)
    return out.view(shape)


def weight_shares(x: CoefficientInputs, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """cᵢ = wᵢ / Σw (wᵢ when not `normalize`), 1 for a lone model (returned as it is): the spherical
    interpolations (multislerp, nuslerp) linearised."""
    import numpy as np

    w = x.values("weight")
    s = w[x.present].sum()
    c = w / s if abs(s) >= 1e-8 and normalize else w
    if x.count == 1:
        c = np.where(x.present, 1.0, 0.0)
    return c, w


def multislerp_coefficients(x: CoefficientInputs) -> tuple[np.ndarray, np.ndarray]:
    return weight_shares(x, x.params["normalize_weights"])


METHOD = define(
    "multislerp",
    multislerp,
    base=BaseUse.OPTIONAL,
    linear=Linear.WEIGHT_SHARES,
    min_models=1,
    max_models=None,
    params=PARAMS,
    coefficients=multislerp_coefficients,
    description="Multi-SLERP: weighted spherical mean of any number of models (of task vectors with a base)",
)
