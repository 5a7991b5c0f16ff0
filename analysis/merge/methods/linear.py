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
    import numpy as np
    import torch

from mergescope.io.errors import InputError
from mergescope.merge.methods._util import Inputs, define
from mergescope.merge.methods.base import BaseUse, CoefficientInputs, Linear, ParamSpec, Parts

PARAMS = (
    ParamSpec("weight", None, "float", per_model=True, required=True, help="this model's share"),
    ParamSpec("normalize", True, "bool", help="divide by the sum of the weights"),
)


def linear(inp: Inputs) -> torch.Tensor:
    import torch

    dtype = inp.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    # mergekit's weight tensor is in the working dtype
    weights = torch.tensor(inp.values("weight"), dtype=work).tolist()
    first = inp.models[0]
    out = torch.mul(first, weights[0]) if dtype == work else first.to(work).mul_(weights[0])
    for t, w in zip(inp.models[1:], weights[1:]):
        out.add_(t, alpha=w)
    if inp.params["normalize"]:
        total = torch.tensor(weights, dtype=work).sum()
        if float(total) == 0.0:
            # mergekit divides anyway and writes inf/NaN; refuse instead.
            raise InputError(
                f"merge method linear: the weights sum to 0{inp.where} with normalize: true; "
                "change the weights or set normalize: false"
            )
        out.div_(total.to(inp.device))
    return out if out.dtype == dtype else out.to(dtype)


def linear_parts(inp: Inputs) -> Parts:
    """Σ wᵢθᵢ (÷ Σ wᵢ when normalize): already a function of the weights."""
    import torch

    terms = torch.stack([t.reshape(-1).to(torch.float32) for t in inp.models])
    return Parts(None, terms, None, bool(inp.params["normalize"]))


def linear_coefficients(x: CoefficientInputs) -> tuple[np.ndarray, np.ndarray]:
    """cᵢ = wᵢ / Σw over the inputs, the base's own weight included when it is one."""
    w = x.values("weight")
    total = w[x.present].sum() + (x.base_param["weight"] if x.base_param is not None else 0.0)
    return (w / total if x.params["normalize"] and abs(total) >= 1e-8 else w.copy()), w


METHOD = define(
    "linear",
    linear,
    parts=linear_parts,
    base=BaseUse.INPUT,
    linear=Linear.WEIGHTED_MEAN,
    min_models=1,
    max_models=None,
    params=PARAMS,
    coefficients=linear_coefficients,
    description="weighted average of the models (normalized by the sum of weights by default)",
)
