"""What a merge method declares: its inputs, its parameters, its traits, a pure tensor function and
its what-if coefficients.

The registry (`mergescope.merge.methods.REGISTRY`) maps a mergekit method name to a `MergeMethod`; the plan
validates against `params`, the executor calls `merge` once per output tensor, and the what-if and the
plan editor read the traits and `coefficients`. A method's facts live in its entry and nowhere else, so
adding a method is one file (`_util.define` builds the entry around the method's math). Declaring a
method needs no torch: the registry is read (plan checks, the app's plan editor) long before any tensor
is touched.

Parameters have one owner: a `ParamSpec` says a parameter's kind and default, `ParamSpec.coerce` reads
a value as that kind (the plan's settings and direct callers alike), and `MergeMethod.complete` fills
in what a caller left out. A plan's tensor jobs come complete from its resolution; a method's math reads
`params["x"]` and never a default of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from mergescope.io.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import torch

_BOOL_STRINGS = {
    "true": True,
    "false": False,
    "yes": True,
    "no": False,
    "on": True,
    "off": False,
    "1": True,
    "0": False,
    "t": True,
    "f": False,
    "y": True,
    "n": False,
}


class ParamValueError(ValueError):
    """A value that is not of a parameter's kind (or, from the plan's checks, out of its range)."""


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

    def coerce(self, value) -> Any:
        """`value` as this parameter's kind, the way mergekit's pydantic validators read it (lax mode:
        1 -> 1.0, "true" -> True, 2.0 -> 2); ParamValueError otherwise. Ranges are the plan's checks."""
        kind = self.kind
        if kind == "float":
            if isinstance(value, bool):
                raise ParamValueError(f"expects a number, got {value!r}")
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value.strip())
                except ValueError:
                    pass
            raise ParamValueError(f"expects a number, got {value!r}")
        if kind == "int":
            if isinstance(value, bool):
                raise ParamValueError(f"expects an integer, got {value!r}")
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
                return int(value)
            raise ParamValueError(f"expects an integer, got {value!r}")
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in _BOOL_STRINGS:
                return _BOOL_STRINGS[value.strip().lower()]
            raise ParamValueError(f"expects true or false, got {value!r}")
        if kind == "str":
            if not isinstance(value, str):
                raise ParamValueError(f"expects a string, got {value!r}")
            return value
        if not isinstance(value, (bool, int, float, str)):  # unknown kind: scalars as they are
            raise ParamValueError(f"expects a scalar, got {value!r}")
        return value


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
    #   base: the base model's tensor or None; tensors: the fine-tunes' tensors (in the compute dtype),
    #   same order as model_params (one dict of per-model params each); params: global params. A plan's
    #   jobs pass every parameter; the entries `_util.define` builds complete what a direct caller omits.
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
    # Optional check(params, model_params) -> problem or None, run on every tensor's resolved (complete)
    # parameters when the plan is resolved (before any tensor is read): constraints one ParamSpec cannot
    # express.
    check: Callable[[dict, dict], str | None] | None = None
    # The what-if: coefficients(CoefficientInputs) -> (cᵢ, wᵢ) per report model, the method read to first
    # order as θ₀ + Σᵢ cᵢ·τᵢ (wᵢ: the raw weight shown beside it). None: not modelled.
    coefficients: Callable[[CoefficientInputs], tuple[np.ndarray, np.ndarray]] | None = None
    # Optional parts(base, tensors, model_params, params, ctx) -> Parts: the method as a differentiable
    # function of its per-model weights, everything else frozen at the plan's values (fit, sensitivity).
    parts: Callable[..., Parts] | None = None
    # Parameters the method accepts (as mergekit does) that change nothing in its result, e.g. `density`
    # of task_arithmetic, which sparsifies nothing: a sweep or search over them is refused.
    ignores: tuple[str, ...] = ()

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)

    def complete_globals(self, params: dict | None, where: str = "") -> dict[str, Any]:
        """Every global parameter: the caller's value read as its kind, else its default (a missing
        required one is an InputError). `where`: the tensor, for messages."""
        params = params or {}
        return {
            spec.name: self._value(spec, params.get(spec.name), where, "", "set it under top-level `parameters:`")
            for spec in self.params
            if not spec.per_model
        }

    def complete_model(self, mp: dict | None, params: dict | None = None, index: int = 0, where: str = "") -> dict:
        """Every per-model parameter of the `index`-th model, looked up as mergekit does: the model's own
        value, then the global `parameters:` one (its per-model sources end with the top-level
        parameters), then the default."""
        mp, params = mp or {}, params or {}
        out = {}
        for spec in self.params:
            if spec.per_model:
                value = mp.get(spec.name)
                value = params.get(spec.name) if value is None else value
                fix = "set it in that model's `parameters:` or globally"
                out[spec.name] = self._value(spec, value, where, f" for model #{index + 1}", fix)
        return out

    def complete(
        self, params: dict | None, model_params: Sequence[dict | None] | None, n: int, where: str = ""
    ) -> tuple[dict[str, Any], list[dict]]:
        """(global parameters, [per-model parameters] for `n` models), every ParamSpec filled in."""
        mps = list(model_params or [])
        mps += [None] * (n - len(mps))
        return self.complete_globals(params, where), [self.complete_model(mps[i], params, i, where) for i in range(n)]

    def _value(self, spec: ParamSpec, value, where: str, who: str, fix: str):
        if value is None:
            if spec.required:
                raise InputError(f"merge method {self.name}: parameter '{spec.name}' is required{who}{where}; {fix}")
            return spec.default
        try:
            return spec.coerce(value)
        except ParamValueError as exc:
            raise InputError(f"merge method {self.name}: parameter '{spec.name}'{who} {exc}{where}") from None


@dataclass
class Parts:
    """One tensor of a merge read as a differentiable function of the models' weights w, with whatever
    else the method decides (trims, elected signs) frozen at the plan's values:

        out = offset + scale · Σᵢ wᵢ·termsᵢ / D(w),  D = Σᵢ wᵢ·keptᵢ per entry (0 → 1) with `kept`,
        Σᵢ wᵢ when `normalize` (|D| < 1e-8 → 1), else 1.

    At the plan's weights this is the method's own result (up to rounding)."""

    offset: torch.Tensor | None  # flat θ₀ (None: the terms are the models themselves)
    terms: torch.Tensor  # [N, numel] float32
    kept: torch.Tensor | None = None  # [N, numel] 0/1: which model's entry each divisor counts
    normalize: bool = False
    scale: float = 1.0

    def merged(self, w: torch.Tensor) -> torch.Tensor:
        """The flat merged tensor at weights w [N] (autograd flows to w)."""
        import torch

        out = w @ self.terms
        if self.kept is not None:
            d = w @ self.kept
            out = out / torch.where(d == 0, torch.ones_like(d), d)
        elif self.normalize:
            d = w.sum()
            out = out / torch.where(d.abs() < 1e-8, torch.ones_like(d), d)
        if self.scale != 1:
            out = out * self.scale
        return out if self.offset is None else out + self.offset


class CoefficientInputs:
    """What a method's what-if `coefficients` reads at one site of an analysis: the plan's parameters
    there (complete) and the site's measurements. `model_params[i]` is None for a report model the plan
    leaves out; its coefficient is 0 whatever the function returns.

    The measurements may be given as zero-argument callables: they are computed when first read, and
    `measured` says whether the function read them (else its result holds wherever the parameters are
    the same)."""

    def __init__(
        self,
        params: dict,
        model_params: list[dict | None],
        base_param: dict | None = None,  # the base's own per-model parameters when it is one more input (linear)
        cosine=None,  # the mean pairwise task-vector cosine of the plan's models here (model_stock)
        energy=None,  # each model's mean square task-vector entry here (sce)
    ):
        self.params, self.model_params, self.base_param = params, model_params, base_param
        self._measurements = {"cosine": cosine, "energy": energy}
        self.measured = False

    def _measurement(self, name: str):
        self.measured = True
        value = self._measurements[name]
        if callable(value):
            value = self._measurements[name] = value()
        return value

    @property
    def cosine(self) -> float | None:
        return self._measurement("cosine")

    @property
    def energy(self) -> Sequence[float] | None:
        return self._measurement("energy")

    @property
    def present(self) -> np.ndarray:
        import numpy as np

        return np.array([mp is not None for mp in self.model_params])

    @property
    def count(self) -> int:
        return sum(mp is not None for mp in self.model_params)

    def values(self, name: str) -> np.ndarray:
        """Each model's per-model parameter `name` (0 for the models left out)."""
        import numpy as np

        return np.array([0.0 if mp is None else float(mp[name]) for mp in self.model_params], dtype=np.float64)

    def uniform(self, value: float) -> np.ndarray:
        """`value` for every model in the plan, 0 for the others."""
        import numpy as np

        return np.where(self.present, value, 0.0)

    def shared(self, value: float) -> tuple[np.ndarray, np.ndarray]:
        """(cᵢ, wᵢ) = `value` for every model in the plan: methods whose models have no weight."""
        c = self.uniform(value)
        return c, c.copy()
