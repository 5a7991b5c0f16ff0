"""ram and ramplus_tl, as mergekit 0.1.5 (Reinforced Agent Merging, arXiv 2601.13572).

`base` (required) is θ₀, `tensors` the N fine-tunes; all global parameters. Per entry, with
δᵢ = θᵢ − θ₀ in the compute dtype D, a model *contributes* where |δᵢ| > epsilon, and c is the number
of contributing models:

    ram:         θ₀ + Σᵢ [contributes] · (δᵢ if c = 1 else δᵢ / c)
                 (one contributor keeps its whole delta, several are averaged, none leaves the base)
    ramplus_tl:  as ram, but the entries model i alone moves are scaled by
                 λᵢ = 1 + r · clamp(ρᵢ, 0, alpha),  ρᵢ = sharedᵢ / max(uniqueᵢ, epsilon)
                 (sharedᵢ, uniqueᵢ: this tensor's entries where model i contributes with others / alone)

Everything is in D as mergekit computes it (|δ| > epsilon compared in D, the division by c in D, the
sum over models with torch's reduction), except that λ is float32 (mergekit divides integer counts by
a clamped float), so ramplus_tl's result is float32 for half-precision inputs. No inputs: the base.

Memory: mergekit stacks every [N, n] temporary; here they are built a column chunk at a time. Every
operation is per entry and the sum over models per column, so chunking changes no bit as long as the
chunks are multiples of torch's vectorised column groups (for 5+ float32 models the sum associates
differently in the tensor's last partial group): 2**18 is.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

from mergescope.merge.methods._util import Inputs, define, flat
from mergescope.merge.methods.base import BaseUse, CoefficientInputs, Linear, MergeMethod, ParamSpec

_EPSILON = ParamSpec(
    "epsilon", 1e-5, "float", help="a model moves an entry when |model − base| exceeds this (ramplus_tl: and ρ floor)"
)
RAM_PARAMS = (_EPSILON,)
RAMPLUS_PARAMS = (
    ParamSpec("r", 0.1, "float", help="ramplus_tl: how much the entries a model alone moves are boosted"),
    ParamSpec("alpha", 0.2, "float", help="ramplus_tl: cap of the shared/unique ratio ρ in the boost 1 + r·ρ"),
    _EPSILON,
)

_CHUNK = 1 << 18  # entries per column chunk (N such rows of temporaries)


def _chunk_masks(tv: torch.Tensor, eps: float):
    """(nonzero [N, c], count [1, c], overlap [1, c], unique [1, c]) for a chunk of stacked deltas."""
    import torch

    nonzero = torch.abs(tv) > eps  # compared in the deltas' dtype, as mergekit
    count = nonzero.sum(dim=0, keepdim=True)
    return nonzero, count, count > 1, count == 1


def _deltas(b: torch.Tensor, ms: list[torch.Tensor], s: int, e: int, buf: torch.Tensor) -> torch.Tensor:
    import torch

    tv = buf[:, : e - s]
    for i, m in enumerate(ms):
        torch.sub(m[s:e], b[s:e], out=tv[i])
    return tv


def ram(inp: Inputs, *, plus: bool = False) -> torch.Tensor:
    import torch

    eps, dtype, device = inp.params["epsilon"], inp.dtype, inp.device
    b = flat(inp.base)
    ms = [flat(t) for t in inp.models]
    n_models, n = len(ms), b.numel()
    buf = torch.empty((n_models, min(n, _CHUNK)), dtype=dtype, device=device)

    lam = None
    if plus:
        # λᵢ from this tensor's counts of shared and unique entries (a first pass over the chunks)
        shared = torch.zeros(n_models, dtype=torch.int64, device=device)
        unique = torch.zeros(n_models, dtype=torch.int64, device=device)
        for s in range(0, n, _CHUNK):
            e = min(n, s + _CHUNK)
            nonzero, _, overlap, single = _chunk_masks(_deltas(b, ms, s, e, buf), eps)
            shared += (nonzero & overlap).sum(dim=1)
            unique += (nonzero & single).sum(dim=1)
        rho = shared / unique.clamp(min=eps)  # float32, as mergekit (an integer tensor clamped by a float)
        lam = (1 + inp.params["r"] * rho.clamp(min=0, max=inp.params["alpha"])).unsqueeze(-1)
        out_dtype = torch.promote_types(dtype, lam.dtype)
    else:
        out_dtype = dtype

    out = torch.empty(n, dtype=out_dtype, device=device)
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        tv = _deltas(b, ms, s, e, buf)
        nonzero, count, overlap, single = _chunk_masks(tv, eps)
        tv.mul_(nonzero)  # entries at or below epsilon drop out
        alone = tv * single
        if lam is not None:
            alone = alone * lam
        shared_part = (tv * overlap).div_(count.clamp(min=1))
        torch.sum(alone.add_(shared_part), dim=0, out=out[s:e])
        out[s:e].add_(b[s:e])
        del tv, nonzero, count, overlap, single, alone, shared_part
    return out.view(inp.shape)


def _ramplus_check(params: dict, mp: dict) -> str | None:
    """ρ divides by max(unique count, epsilon): epsilon <= 0 makes it 0/0 for a model that moves no entry
    alone, and that NaN spreads over the whole tensor (mergekit writes it)."""
    eps = params["epsilon"]
    if not eps > 0:
        return f"ramplus_tl needs epsilon > 0 (it floors the unique count that ρ divides by), got {eps:g}"
    return None


def overlap_mean(x: CoefficientInputs) -> tuple[np.ndarray, np.ndarray]:
    """cᵢ = 1/N: the mean of the task vectors, exact where every model moves every entry (dense
    fine-tunes); the entries one model alone moves keep it whole."""
    return x.shared(1.0 / max(x.count, 1))


METHODS: tuple[MergeMethod, ...] = (
    define(
        "ram",
        partial(ram, plus=False),
        empty_gives_base=True,
        base=BaseUse.REQUIRED,
        linear=Linear.OVERLAP_MEAN,
        min_models=1,
        max_models=None,
        params=RAM_PARAMS,
        coefficients=overlap_mean,
        description="RAM: entries one model moves keep its delta, entries several move get their mean",
    ),
    define(
        "ramplus_tl",
        partial(ram, plus=True),
        empty_gives_base=True,
        base=BaseUse.REQUIRED,
        linear=Linear.OVERLAP_MEAN,
        min_models=1,
        max_models=None,
        params=RAMPLUS_PARAMS,
        check=_ramplus_check,
        coefficients=overlap_mean,
        description="RAM+ (tensor-local): RAM with each model's unique entries boosted by its shared/unique ratio",
    ),
)
