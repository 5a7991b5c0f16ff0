"""What a merge method declares: its inputs, its parameters, its traits, and a pure tensor function.

The registry (`mergescope.merge.methods.REGISTRY`) maps a mergekit method name to a `MergeMethod`; the plan
validates against `params`, the executor calls `merge` once per output tensor, and the what-if and the
plan editor read the traits. A method's facts live in its entry and nowhere else, so adding a method is
one file. Declaring a method needs no torch: the registry is read (plan checks, the app's plan editor)
long before any tensor is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ParamSpec:
    """One parameter. `per_model` ones come from `models[i].parameters` (mergekit's tensor parameters);
    the others are global (`parameters:` at top level). `default=None` with `required=True` means the
    plan must set it."""

    name: str
    default: Any = None
    kind: str = "float"  # float | int | bool | str
    per_model: bool = False
    required: bool = False
    min: float | None = None
    max: float | None = None
    help: str = ""
    exclusive: bool = False  # min and max themselves are refused (an open interval)


@dataclass
class MergeContext:
    """What a method may know besides the tensors: the tensor's name and a seeded generator."""

    tensor_name: str = ""
    seed: int | None = None
    device: str | torch.device = "cpu"
    generator: torch.Generator | None = None
    # release(start, stop): streaming kernels call it when elements [start, stop) of the flattened
    # stored inputs will not be read again soon (the executor drops their memory-mapped pages).
    release: Callable[[int, int], None] | None = None


class BaseUse(Enum):
    """What a method does with `base_model`."""

    REQUIRED = "required"  # merges task vectors relative to it
    OPTIONAL = "optional"  # task vectors when one is given, the models themselves otherwise
    INPUT = "input"  # ignores the role: mergekit merges base_model as one more input


class Linear(Enum):
    """How the method reads, to first order, as θ₀ + Σᵢ cᵢ·τᵢ (what the what-if computes cᵢ from)."""

    TASK_SUM = "task_sum"  # cᵢ = wᵢ (÷ Σw when normalize) · lambda
    WEIGHTED_MEAN = "weighted_mean"  # cᵢ = wᵢ / Σw over the inputs, the base's own weight included
    INTERPOLATION = "interpolation"  # cᵢ = t (slerp, linearised)
    WEIGHT_SHARES = "weight_shares"  # cᵢ = wᵢ / Σw (nuslerp, linearised)
    STOCK_RATIO = "stock_ratio"  # Model Stock's ratio from the mean pairwise cosine, shared by the models
    SCALE = "scale"  # cᵢ = the model's `scale` (passthrough)
    EQUAL_MEAN = "equal_mean"  # cᵢ = 1/N over the inputs, the base included when it is one (karcher, linearised)
    CLIPPED = "clipped"  # cᵢ = 1, an upper bound: each entry of τ clipped to ±t (nearswap)
    ENERGY_SHARES = "energy_shares"  # cᵢ = ‖τᵢ‖² / Σ‖τⱼ‖², uniform when tiny (sce, before selection and election)
    OVERLAP_MEAN = "overlap_mean"  # cᵢ = 1/N: averaged where the task vectors overlap (ram, ramplus_tl)
    SUBSPACE = "subspace"  # cᵢ = alpha: the task sum, re-based per matrix on orthogonalised / isotropic subspaces


class Trim(Enum):
    """How a method sparsifies each task vector before combining them."""

    NONE = "none"
    MAGNITUDE = "magnitude"  # keep the largest |δ| (TIES)
    MAGNITUDE_OUTLIERS = "magnitude_outliers"  # drop the smallest and the largest outliers (Breadcrumbs)
    RANDOM = "random"  # keep each entry with probability density (DARE)
    MAGNITUDE_RANDOM = "magnitude_random"  # keep with a probability ranked by |δ| (DELLA)
    VARIANCE = "variance"  # keep the entries whose task vectors vary most across the models, one mask (SCE)
    IMPORTANCE_OUTLIERS = "importance_outliers"  # keep |δ|·KL(row) above median + 1.5·IQR (arcee_fusion)

    @property
    def by_magnitude(self) -> bool:
        """Keeps or drops by |δ|, so the interference left is the *trimmed* sign conflict. A plain random
        drop keeps the conflicting fraction of the overlap unchanged in expectation."""
        return self in (Trim.MAGNITUDE, Trim.MAGNITUDE_OUTLIERS, Trim.MAGNITUDE_RANDOM)


@dataclass(frozen=True)
class MergeMethod:
    name: str
    # merge(base, tensors, model_params, params, ctx) -> tensor
    #   base: the base model's tensor (float32) or None; tensors: the fine-tunes' tensors (float32),
    #   same order as model_params (one dict of resolved per-model params each); params: global params.
    merge: Callable[..., torch.Tensor]
    base: BaseUse
    linear: Linear
    min_models: int = 1  # number of non-base models
    max_models: int | None = None
    params: tuple[ParamSpec, ...] = field(default_factory=tuple)
    trim: Trim = Trim.NONE
    elects_signs: bool = False  # TIES sign consensus: entries disagreeing with the elected sign drop out
    randomized: bool = False
    extension: bool = False  # not a mergekit 0.1.5 method (plans using it say so; mergekit cannot run them)
    description: str = ""
    # Optional streaming CPU kernel: stream(raw_base, raw_tensors, model_params, params, ctx, out_dtype)
    # gets the STORED tensors (any float dtype, e.g. memory-mapped bf16), computes in float32 exactly
    # like `merge` and returns the result in out_dtype, or None when it does not handle the case
    # (then the executor calls `merge` on float32 copies). Used only on CPU with a float32 compute dtype.
    stream: Callable[..., torch.Tensor | None] | None = None
    # Optional check(params, model_params) -> problem or None, run on every tensor's resolved parameters
    # when the plan is resolved (before any tensor is read): constraints one ParamSpec cannot express.
    check: Callable[[dict, dict], str | None] | None = None
    # Parameters the method accepts (as mergekit does) that change nothing in its result, e.g. `density`
    # of task_arithmetic, which sparsifies nothing: a sweep or search over them is refused.
    ignores: tuple[str, ...] = ()

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)
