"""sce, as mergekit 0.1.5 (Select, Calculate, Erase; arXiv 2408.07990): TIES-like, weights from the data.

`base` (required) is θ₀; `tensors` are N >= 1 models, without weights. With task vectors δᵢ = θᵢ − θ₀:

1. Select (`select_topk` < 1): keep the entries whose variance across the models (population variance,
   per entry) is among the `int(count_nonzero(var) · select_topk)` largest, in every δᵢ; the same mask
   for all models (select_topk <= 0, or a count of 0, keeps nothing),
2. Calculate: wᵢ = mean(δᵢ²) of the selected δᵢ, divided by Σⱼ wⱼ (uniform 1/N when |Σⱼ wⱼ| < 1e-6, as for
   most real fine-tunes, whose entries are far below 1e-3),
3. Erase: TIES sign election on the unweighted sum (+ where Σᵢ δᵢ >= 0); an entry of δᵢ counts iff its
   sign is the elected one (zeros never),
4. θ₀ + Σ kept wᵢδᵢ / max(Σ kept wᵢ, 1e-6).

`int8_mask` only changes the dtype of mergekit's masks: no numerical effect. Computed in the inputs'
dtype with mergekit's operations on the same [N, …] layout (its variance, sums and means are
reductions of the stacked task vectors), so the result is mergekit's to the bit. The selection finds
the cut with `selection.kth_largest` (no sort); only when equal variances straddle it does it call
`torch.topk`, the ranking mergekit uses, so that its pick among the ties is reproduced too (torch's
topk is deterministic on CPU for a given torch version).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

from mergescope.merge.methods._util import Inputs, define, scratch
from mergescope.merge.methods.base import BaseUse, CoefficientInputs, Linear, ParamSpec, Trim

PARAMS = (
    ParamSpec("int8_mask", False, "bool", help="mergekit memory option; no numerical effect"),
    ParamSpec(
        "select_topk",
        1.0,
        "float",
        min=0.0,
        max=1.0,
        help="fraction of entries kept, those whose task vectors vary most across the models (1 keeps all)",
    ),
)

_UNIFORM_BELOW = 1e-6  # Σ mean(δ²) under this: uniform weights
_MIN_DIVISOR = 1e-6


def _selection_mask(var: torch.Tensor, fraction: float) -> torch.Tensor | float:
    """0/1 (the variance's dtype) at the selected entries of flat `var`, or 0.0 when none is selected."""
    import torch

    from mergescope.stats.selection import kth_largest

    if fraction <= 0:
        return 0.0
    k = int(torch.count_nonzero(var) * fraction)  # mergekit's count, rounded through float32 like it
    if k == 0:
        return 0.0
    a = var.abs()
    mask = scratch("sce.mask", var.numel(), var.dtype, var.device)
    if not bool(torch.isnan(a).any()):
        a32 = a if a.dtype in (torch.float32, torch.float64) else a.float()
        thr, n_gt, n_eq, _ = kth_largest(a32, k, scratch)
        if n_gt + n_eq == k:  # no tie straddles the cut: exactly the k largest
            return torch.ge(a32, thr, out=mask) if a32.dtype == mask.dtype else mask.copy_(a32 >= thr)
    mask.zero_()
    mask.index_fill_(0, torch.topk(a, k, largest=True).indices, 1)
    return mask


def sce(inp: Inputs) -> torch.Tensor:
    import torch

    base, dtype, device = inp.base, inp.dtype, inp.device
    if base.numel() == 0:
        return base.clone()
    count, shape, n = len(inp.models), base.shape, base.numel()
    deltas = inp.task_vectors("sce.deltas")
    stacked = deltas.view(count, *shape)  # mergekit's layout for the reductions over the models

    fraction = inp.params["select_topk"]
    if fraction < 1:
        mask = _selection_mask(torch.var(stacked, dim=0, unbiased=False).view(-1), fraction)
        deltas.mul_(mask)

    tmp = scratch("sce.tmp", (count, n), dtype, device)
    torch.sign(deltas, out=tmp)
    elected = torch.sum(stacked, dim=0).ge_(0).view(-1).to(dtype).mul_(2).sub_(1)
    keep = scratch("sce.keep", (count, n), torch.bool, device)
    torch.eq(tmp, elected, out=keep)

    torch.square(deltas, out=tmp)
    weights = tmp.mean(dim=1)
    total = torch.sum(weights).item()
    if abs(total) < _UNIFORM_BELOW:
        weights = torch.ones_like(weights) / count
    else:
        weights = weights / total
    kept = tmp.view(count, *shape)
    torch.mul(weights.view(count, *([1] * len(shape))), keep.view(count, *shape), out=kept)
    divisor = torch.sum(kept, dim=0).clamp_(min=_MIN_DIVISOR)
    deltas.mul_(tmp)
    out = torch.sum(stacked, dim=0).div_(divisor)
    return out.add_(base)


def energy_shares(x: CoefficientInputs) -> tuple[np.ndarray, np.ndarray]:
    """cᵢ = the model's measured mean square task-vector entry over their sum (uniform when the sum is
    below 1e-6, as the method's weights), before selection and election."""
    import numpy as np

    e = np.where(x.present, np.asarray(x.energy, dtype=np.float64) if x.energy is not None else 0.0, 0.0)
    total = float(e.sum())
    c = e / total if abs(total) >= _UNIFORM_BELOW else x.uniform(1.0 / max(x.count, 1))
    return c, c.copy()


METHOD = define(
    "sce",
    sce,
    empty_gives_base=True,
    base=BaseUse.REQUIRED,
    linear=Linear.ENERGY_SHARES,
    min_models=1,
    max_models=None,
    params=PARAMS,
    trim=Trim.VARIANCE,
    elects_signs=True,
    coefficients=energy_shares,
    description="SCE: keep the entries that vary most across models, weight each task vector by its energy, TIES signs",
)
