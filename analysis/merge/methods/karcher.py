"""karcher, as mergekit 0.1.5: the Karcher (Riemannian) mean of the inputs' directions, at their mean norm.

mergekit's karcher ignores the base's role: every input is one point, and a `base_model` that is not
listed is merged as one more input. All N inputs weigh 1/N; each tensor is one vector.

    uᵢ = xᵢ/‖xᵢ‖ for the inputs with ‖xᵢ‖ > tol (the others only count toward the norm); αᵢ = 1/m over them
    m̂ = Σαᵢuᵢ normalised (u of the first valid input when that sum is < tol); then up to `max_iter` times:
        g = Σ over uᵢ with θᵢ = acos(clamp(m̂·uᵢ)) >= tol of αᵢ·θᵢ/sin θᵢ·(uᵢ − (m̂·uᵢ)m̂)
        stop when ‖g‖ < tol; else m̂ ← cos‖g‖·m̂ + sin‖g‖·g/‖g‖, renormalised
    result = (Σᵢ ‖xᵢ‖/N) · m̂       (zero when no input has a norm above tol; one input: itself)

Computed as mergekit does: directions and sums in the inputs' dtype, norms in float32 (float64 for
float64 inputs), the same operations in the same order, so the result is mergekit's to the bit. The
unit vectors are recomputed from the inputs when needed instead of kept (same values, N fewer
tensors in memory): besides the inputs it holds four tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

from mergescope.merge.methods._util import Inputs, define, flat, scratch
from mergescope.merge.methods.base import BaseUse, CoefficientInputs, Linear, ParamSpec

PARAMS = (
    ParamSpec("max_iter", 10, "int", min=0, help="most iterations of the Karcher mean"),
    ParamSpec("tol", 1e-5, "float", min=0.0, help="convergence tolerance (and the smallest norm that counts)"),
)


def karcher(inp: Inputs) -> torch.Tensor:
    import torch

    max_iter, tol = inp.params["max_iter"], inp.params["tol"]
    dtype, device, shape = inp.dtype, inp.device, inp.shape
    xs = [flat(t) for t in inp.models]
    if len(xs) == 1:
        return xs[0].clone().view(shape)
    norm_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    norms = [torch.linalg.vector_norm(x.to(norm_dtype)) for x in xs]
    alpha = 1.0 / len(xs)
    valid = [i for i, nm in enumerate(norms) if nm.item() > tol]
    if not valid:
        out = torch.zeros_like(xs[0])
        for x in xs:
            out.add_(x, alpha=0)  # mergekit's Σ xᵢ·0: zeros, NaN where an input is not finite
        return out.view(shape)
    total = 0.0
    for _ in valid:  # a plain left-to-right float sum, as mergekit's sum() on Python 3.11
        total += alpha
    share = alpha / total

    n = xs[0].numel()
    unit = scratch("karcher.unit", n, dtype, device)
    tmp = scratch("karcher.tmp", n, dtype, device)

    def unit_of(i: int) -> torch.Tensor:
        return torch.div(xs[i], norms[i], out=unit)  # (x / ‖x‖) in the inputs' dtype, as mergekit

    mean = torch.zeros_like(xs[0])
    for i in valid:
        mean.add_(torch.mul(unit_of(i), share, out=tmp))
    mean_norm = torch.linalg.vector_norm(mean.to(norm_dtype))
    if mean_norm.item() < tol:
        mean.copy_(unit_of(valid[0]))
    else:
        mean.div_(mean_norm)

    tangent = scratch("karcher.tangent", n, dtype, device)
    for _ in range(max_iter):
        tangent.zero_()
        for i in valid:
            u = unit_of(i)
            dot = torch.clamp(torch.dot(mean, u), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            coef = share * (theta / torch.sin(theta))
            torch.mul(dot, mean, out=tmp)
            u.sub_(tmp).mul_(coef)
            tangent.add_(u)
        tangent_norm = torch.linalg.vector_norm(tangent.to(norm_dtype))
        if tangent_norm.item() < tol:
            break
        # scalar first, as mergekit writes it: a float32 scalar times bfloat16 is rounded to bfloat16 first
        torch.mul(torch.sin(tangent_norm), tangent.div_(tangent_norm), out=tangent)
        torch.mul(torch.cos(tangent_norm), mean, out=mean).add_(tangent)
        unit_norm = torch.linalg.vector_norm(mean.to(norm_dtype))
        if unit_norm.item() > tol:
            mean.div_(unit_norm)

    scale = alpha * norms[0]
    for nm in norms[1:]:
        scale = scale + alpha * nm
    return torch.mul(scale, mean, out=mean).view(shape)


def equal_mean_coefficients(x: CoefficientInputs) -> tuple[np.ndarray, np.ndarray]:
    """cᵢ = 1/N over the inputs, the base included when it is one (linearised: ≈ the plain mean of the
    inputs for small angles)."""
    return x.shared(1.0 / max(x.count + (1 if x.base_param is not None else 0), 1))


METHOD = define(
    "karcher",
    karcher,
    base=BaseUse.INPUT,
    linear=Linear.EQUAL_MEAN,
    min_models=1,
    max_models=None,
    params=PARAMS,
    coefficients=equal_mean_coefficients,
    description="Karcher mean: the inputs' average direction on the sphere, at their average norm (equal weights)",
)
