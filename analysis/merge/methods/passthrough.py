"""passthrough, as mergekit 0.1.5: copy the tensor of the single input model, optionally times `scale`.

Used for layer stacking ("frankenmerges") with `slices:`. Exactly one input: `base` is not used (a
config naming a `base_model` besides one model gives mergekit two inputs and it refuses). The result
may be the input tensor itself (no copy) when no scaling or dtype change is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

from mergescope.merge.methods._util import Inputs, define
from mergescope.merge.methods.base import BaseUse, CoefficientInputs, Linear, ParamSpec

PARAMS = (ParamSpec("scale", None, "float", per_model=True, help="multiply the tensor by this (unset: copy as is)"),)


def passthrough(inp: Inputs) -> torch.Tensor:
    scale, t = inp.model_params[0]["scale"], inp.models[0]
    return t if scale is None else t * scale


def scale_coefficients(x: CoefficientInputs) -> tuple[np.ndarray, np.ndarray]:
    """cᵢ = the model's `scale` (unset: 1, the tensor as it is)."""
    import numpy as np

    c = np.array([0.0 if mp is None else 1.0 if mp["scale"] is None else mp["scale"] for mp in x.model_params])
    return c, c.copy()


METHOD = define(
    "passthrough",
    passthrough,
    base=BaseUse.INPUT,
    linear=Linear.SCALE,
    min_models=1,
    max_models=1,
    params=PARAMS,
    coefficients=scale_coefficients,
    description="copy one model's tensors (optionally scaled): layer stacking with slices",
)
