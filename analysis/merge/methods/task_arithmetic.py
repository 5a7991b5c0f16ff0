"""Generalized task arithmetic (mergekit 0.1.5 `generalized_task_arithmetic.py`): task_arithmetic, ties,
dare_linear, dare_ties, breadcrumbs, breadcrumbs_ties, della, della_linear.

For one tensor, with base θ₀, fine-tunes θᵢ and weights wᵢ:

1. δᵢ = θᵢ − θ₀, each sparsified on its own (see `sparsify.py`; `rescale` = L1 norm matching),
2. δᵢ ← wᵢ·δᵢ  (a negative weight negates the task vector),
3. with sign consensus (ties, dare_ties, breadcrumbs_ties, della): the elected sign is + where
   Σᵢ wᵢδᵢ >= 0 (sum of weighted deltas, ties go to +), else −; an entry of δᵢ is kept iff its sign
   (of the *weighted* delta) equals the elected one (zeros are never kept);
   mixed = Σ kept wᵢδᵢ and divisor = Σ wᵢ over the models kept at that entry (0 → 1);
   without consensus: mixed = Σ wᵢδᵢ and divisor = Σ wᵢ (|divisor| < 1e-8 → 1),
4. if `normalize`: mixed /= divisor;  if `lambda` != 1: mixed *= lambda;  result θ₀ + mixed.

Everything is computed in the inputs' (promoted) dtype, as mergekit does after loading in `dtype:`,
including the weights, which mergekit rounds to that dtype. `int8_mask` only changes the dtype of
mergekit's mask (memory); it is accepted and has no numerical effect.

Implementation notes (speed): the deltas live in one pooled [N, n] buffer and are sparsified in place;
the consensus clamps every wᵢδᵢ to [0, MAX] where the elected sign is + and to [-MAX, 0] where it
is −, which zeroes exactly the entries mergekit's mask drops and keeps the others bit for bit; the
divisor is Σᵢ wᵢ·[clamped ≠ 0]. The magnitude trim is one `hardshrink` pass when no tie straddles
the threshold. When every weight is positive the "0 → 1" divisor fix is a clamp to the
smallest weight (where the divisor is 0 the sum is 0 too, so the result is the same).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

from mergescope.merge.methods._util import Inputs, define, flat, scratch, weight_sum
from mergescope.merge.methods.base import BaseUse, CoefficientInputs, Linear, MergeMethod, ParamSpec, Parts, Trim

_WEIGHT = ParamSpec(
    "weight",
    None,
    "float",
    per_model=True,
    required=True,
    help="scale of this model's task vector (negative subtracts it)",
)
_DENSITY = ParamSpec(
    "density",
    1.0,
    "float",
    per_model=True,
    min=0.0,
    max=1.0,
    help="fraction of the task vector kept by sparsification (1 keeps all)",
)
_GAMMA = ParamSpec(
    "gamma",
    0.01,
    "float",
    per_model=True,
    min=0.0,
    help="breadcrumbs: fraction of the largest-magnitude entries removed as outliers",
)
_EPSILON = ParamSpec(
    "epsilon",
    0.15,
    "float",
    per_model=True,
    min=0.0,
    max=1.0,
    help="della: keep probability spread, density ± epsilon by magnitude rank",
)


def _globals(normalize: bool, rescale: bool) -> tuple[ParamSpec, ...]:
    return (
        ParamSpec("int8_mask", False, "bool", help="mergekit memory option; no numerical effect"),
        ParamSpec("normalize", normalize, "bool", help="divide by the sum of the weights (of the kept models)"),
        ParamSpec("rescale", rescale, "bool", help="rescale sparsified task vectors to their L1 norm"),
        ParamSpec("lambda", 1.0, "float", help="scale of the merged task vector"),
    )


def gta(inp: Inputs, *, sparsification: str | None = None, consensus: bool = False) -> torch.Tensor:
    """The shared kernel."""
    import torch

    base, dtype, device = inp.base, inp.dtype, inp.device
    # mergekit builds the weight vector in the working dtype, so weights are rounded to it.
    wvec = torch.tensor(inp.values("weight"), dtype=dtype, device=device)
    weights = wvec.tolist()
    lam = inp.params["lambda"]
    generator = inp.generator() if sparsification in ("random", "della_magprune") else None

    shape, n = base.shape, base.numel()
    b = flat(base)
    deltas = inp.task_vectors("gta.deltas")
    _trim(deltas, inp, sparsification, generator)
    if any(w != 1.0 for w in weights):
        deltas.mul_(wvec.view(-1, 1))

    if not consensus:
        out = torch.sum(deltas, dim=0)
        if inp.params["normalize"]:
            divisor = weight_sum(wvec, len(shape))
            if abs(float(divisor)) >= 1e-8:
                out.div_(divisor)
    else:
        out = torch.sum(deltas, dim=0)  # Σ wᵢδᵢ: the sign election
        # Keep the entries whose sign is the elected one: clamp each wᵢδᵢ into [0, MAX] where the
        # sum is >= 0 and into [-MAX, 0] where it is < 0 (one pass over all models, no bool masks).
        big = torch.finfo(dtype).max
        upper = scratch("gta.upper", n, dtype, device)
        lower = scratch("gta.lower", n, dtype, device)
        torch.ge(out, 0, out=upper)
        upper.mul_(big)  # MAX or 0
        torch.sub(upper, big, out=lower)  # 0 or -MAX
        deltas.clamp_(min=lower, max=upper)
        torch.sum(deltas, dim=0, out=out)  # mixed
        if inp.params["normalize"]:
            deltas.ne_(0)  # 1.0 where kept (a kept entry is never 0)
            deltas.mul_(wvec.view(-1, 1))  # wᵢ where kept: mergekit's weights * mask ...
            divisor = scratch("gta.divisor", n, dtype, device)
            torch.sum(deltas, dim=0, out=divisor)  # ... summed in torch.sum's order (it matters for N >= 5)
            if all(w > 0 for w in weights):
                divisor.clamp_min_(min(weights))
            else:
                divisor.masked_fill_(divisor == 0, 1)
            out.div_(divisor)
    if lam != 1:
        out.mul_(lam)
    out.add_(b)
    return out.view(shape)


def _trim(deltas, inp: Inputs, sparsification: str | None, generator) -> None:
    """Each task vector (a row of `deltas`) sparsified in place, as the method's parameters say."""
    from mergescope.merge.methods import sparsify as sp

    rescale = inp.params["rescale"]
    for d, mp in zip(deltas, inp.model_params):
        density = mp["density"]
        if sparsification == "magnitude":
            sp.magnitude_(d, density, rescale)
        elif sparsification == "random":
            sp.bernoulli_(d, density, rescale, generator)
        elif sparsification == "magnitude_outliers":
            sp.magnitude_outliers_(d, density, mp["gamma"], rescale)
        elif sparsification == "della_magprune":
            sp.della_(d, inp.shape, density, mp["epsilon"], rescale, generator)


def gta_parts(inp: Inputs, *, sparsification: str | None = None, consensus: bool = False) -> Parts:
    """The kernel as a function of the weights: the trims as `gta` draws them (same seed, same masks)
    and, with sign consensus, the signs elected at the plan's weights and the entries they keep."""
    import torch

    w = torch.tensor(inp.values("weight"), dtype=torch.float32, device=inp.device)
    deltas = inp.task_vectors("gta.parts").to(torch.float32, copy=True)
    generator = inp.generator() if sparsification in ("random", "della_magprune") else None
    _trim(deltas, inp, sparsification, generator)
    kept = None
    if consensus:
        weighted = deltas * w.view(-1, 1)
        elected = weighted.sum(0) >= 0
        keep = torch.where(elected, weighted > 0, weighted < 0)
        deltas.mul_(keep)
        kept = keep.to(torch.float32) if inp.params["normalize"] else None
    normalize = inp.params["normalize"] and not consensus
    return Parts(flat(inp.base).to(torch.float32), deltas, kept, normalize, float(inp.params["lambda"]))


def task_sum_coefficients(x: CoefficientInputs) -> tuple[np.ndarray, np.ndarray]:
    """cᵢ = wᵢ (÷ Σw when normalize) · lambda: exact without trimming and sign election, else the same
    weights without them."""
    w = x.values("weight")
    c = w.copy()
    if x.params["normalize"]:
        s = w[x.present].sum()
        if abs(s) >= 1e-8:
            c = c / s
    return c * x.params["lambda"], w


# (name, sparsification, consensus, default normalize, default rescale, description)
_VARIANTS = (
    ("task_arithmetic", None, False, False, False, "base + Σ weight·(model − base)"),
    (
        "ties",
        "magnitude",
        True,
        True,
        False,
        "TIES: trim each task vector to its largest magnitudes, elect signs, average the agreeing entries",
    ),
    ("dare_linear", "random", False, False, True, "DARE: random drop of task-vector entries, then task arithmetic"),
    ("dare_ties", "random", True, False, True, "DARE drop + TIES sign consensus"),
    (
        "breadcrumbs",
        "magnitude_outliers",
        False,
        False,
        False,
        "Model Breadcrumbs: drop the smallest and the largest-outlier magnitudes, then task arithmetic",
    ),
    ("breadcrumbs_ties", "magnitude_outliers", True, False, False, "Model Breadcrumbs + TIES sign consensus"),
    ("della", "della_magprune", True, True, True, "DELLA: magnitude-ranked random drop + TIES sign consensus"),
    ("della_linear", "della_magprune", False, False, True, "DELLA drop, then task arithmetic"),
)


def _stream(inp: Inputs, out_dtype: torch.dtype, *, sparsification, consensus) -> torch.Tensor | None:
    """The streaming kernel (gta_stream) when it handles this tensor's parameters, else None."""
    import torch

    from mergescope.merge.methods import gta_stream

    raw_base, raws = inp.base, inp.models
    if not raws or not gta_stream.supports(sparsification, inp.params, torch.float32, inp.device, len(raws)):
        return None
    if (
        any(r.shape != raw_base.shape or not r.dtype.is_floating_point for r in raws)
        or not raw_base.dtype.is_floating_point
    ):
        return None  # the general path reports it
    return gta_stream.stream_gta(inp, out_dtype, sparsification=sparsification, consensus=consensus)


def _della_check(params: dict, mp: dict) -> str | None:
    """DELLA keeps entries with probabilities density ± epsilon: both must stay inside (0, 1)."""
    d, e = mp["density"], mp["epsilon"]
    if d < 1 and not (0 < d - e and d + e < 1):
        return f"della needs 0 < density - epsilon and density + epsilon < 1, got density {d:g}, epsilon {e:g}"
    return None


_TRIMS = {
    None: Trim.NONE,
    "magnitude": Trim.MAGNITUDE,
    "magnitude_outliers": Trim.MAGNITUDE_OUTLIERS,
    "random": Trim.RANDOM,
    "della_magprune": Trim.MAGNITUDE_RANDOM,
}


def _make(name, sparsification, consensus, normalize, rescale, description) -> MergeMethod:
    per_model = [_WEIGHT, _DENSITY]
    if sparsification == "magnitude_outliers":
        per_model.append(_GAMMA)
    if sparsification == "della_magprune":
        per_model.append(_EPSILON)
    variant = {"sparsification": sparsification, "consensus": consensus}
    return define(
        name,
        partial(gta, **variant),
        stream=partial(_stream, **variant) if sparsification in (None, "magnitude") else None,
        parts=partial(gta_parts, **variant),
        empty_gives_base=True,
        base=BaseUse.REQUIRED,
        linear=Linear.TASK_SUM,
        min_models=1,
        max_models=None,
        params=(*_globals(normalize, rescale), *per_model),
        trim=_TRIMS[sparsification],
        elects_signs=consensus,
        check=_della_check if sparsification == "della_magprune" else None,
        randomized=sparsification in ("random", "della_magprune"),
        coefficients=task_sum_coefficients,
        description=description,
        ignores=("density", "rescale") if sparsification is None else (),
    )


METHODS: tuple[MergeMethod, ...] = tuple(_make(*v) for v in _VARIANTS)
