"""The search space of `mergescope tune`: the RatioTable of a plan, each dimension one cell (model ×
layer band × group) of a tuned parameter, with its bounds; and what a trial's scores reduce to.

Built from the plan (method, base, models, the other parameters, and the values the search starts
from) and the method's ParamSpec bounds (or --range). A point of the space is written as the app's
editor writes its table (RatioTable.to_plan), so the best plan opens there as the table it was found as.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mergescope.io.errors import InputError
from mergescope.merge.plan import Plan
from mergescope.merge.plan.ratio_table import TABLE_GROUPS, RatioTable, band_label, param_defaults, table_specs

GROUPS = TABLE_GROUPS  # what --groups may name
DEFAULT_RANGES = {"weight": (0.0, 1.5)}  # unbounded in the ParamSpec: the range the README's sweep covers


# ---------------------------------------------------------------------------------------------- options
def parse_list(spec: str | Sequence[str] | None, flag: str) -> list[str]:
    """'a,b' (or a list of such) as names, in order, without repeats."""
    if spec is None:
        return []
    parts = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for part in parts:
        for name in re.split(r"[,\s]+", str(part).strip()):
            if name and name not in out:
                out.append(name)
    return out


def parse_ranges(specs: Sequence[str] | None) -> dict[str, tuple[float, float]]:
    """'weight=0:1.5' (repeatable, or comma-separated) -> {param: (low, high)}."""
    out = {}
    for item in parse_list(specs, "--range"):
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=([^:]+):([^:]+)", item)
        try:
            low, high = (float(m.group(2)), float(m.group(3))) if m else (math.nan, math.nan)
        except ValueError:
            low = high = math.nan
        if not (math.isfinite(low) and math.isfinite(high)):
            raise InputError(f"--range {item}: write NAME=LOW:HIGH with numbers, e.g. --range weight=0:1.5")
        if not low < high:
            raise InputError(f"--range {item}: LOW must be below HIGH, e.g. --range {m.group(1)}=0:1.5")
        out[m.group(1)] = (low, high)
    return out


# ---------------------------------------------------------------------------------------------- space
@dataclass(frozen=True)
class Dim:
    """One searched value: `param` of model `model` (index into the plan's models) at one table key."""

    param: str
    group: str
    band: tuple[int, int] | None
    model: int
    low: float
    high: float

    @property
    def key(self) -> tuple:
        return (self.group, self.band)

    @property
    def name(self) -> str:
        """The Optuna parameter name, e.g. weight.attn.L0-1.m0 (weight.norm.m0: the final norm)."""
        where = f".{band_label(self.band)}" if self.band is not None else ""
        return f"{self.param}.{self.group}{where}.m{self.model}"


@dataclass
class Space:
    """The plan the search starts from, the table it writes and the values searched."""

    plan: Plan
    models: list[str]
    num_layers: int
    band_mode: int
    bands: list[tuple[int, int]]
    groups: list[str]
    params: list[str]
    start: RatioTable  # every key of the cut with the plan's values
    dims: list[Dim]
    names: list[str] | None = None
    globals: dict = field(default_factory=dict)

    def table(self, values: Mapping[str, float]) -> RatioTable:
        """The start table with the searched cells at these values."""
        out = copy.deepcopy(self.start)
        for d in self.dims:
            out.values[d.param][d.key][d.model] = round(float(values[d.name]), 6)  # as the editor rounds
        return out

    def tables(self, values: Mapping[str, float]) -> dict[str, dict]:
        """{param: {(group, band): [value per model]}} for these values."""
        return self.table(values).values

    def plan_for(self, values: Mapping[str, float]) -> Plan:
        """The plan the editor writes for these values (the other plan settings kept)."""
        p = self.plan
        out = self.table(values).to_plan(
            p.merge_method,
            p.base_model,
            self.models,
            parameters=dict(self.globals),
            names=self.names,
            dtype=p.dtype,
            out_dtype=p.out_dtype,
            tokenizer_source=p.tokenizer_source,
        )
        out.tokenizer, out.chat_template, out.source = p.tokenizer, p.chat_template, p.source
        return out

    def start_values(self) -> dict[str, float] | None:
        """The plan's own values (the first trial), or None when one lies outside its range."""
        vals = {d.name: self.start.values[d.param][d.key][d.model] for d in self.dims}
        ok = all(d.low <= vals[d.name] <= d.high for d in self.dims)
        return vals if ok else None

    def describe(self) -> dict:
        """What makes two searches the same search (the study remembers it)."""
        return {
            "method": self.plan.merge_method,
            "base": self.plan.base_model,
            "models": list(self.models),
            "params": list(self.params),
            "bands": [list(b) for b in self.bands],
            "groups": list(self.groups),
            "ranges": {p: [d.low, d.high] for d in self.dims for p in [d.param]},
            "dims": len(self.dims),
        }


def build_space(
    plan: Plan,
    *,
    params: Sequence[str] = ("weight",),
    band_mode: int = 3,
    groups: Sequence[str] | None = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    names: Sequence[str] | None = None,
    num_layers: int | None = None,
) -> Space:
    """The search space of `plan`: one Dim per (param, table key of a chosen group, model)."""
    if plan.models is None or plan.modules is not None:
        raise InputError(
            f"{plan.where}slices: tune searches the table of a `models:` plan; write the plan with models:"
        )
    method = plan.method()
    tparams = [p.name for p in table_specs(method)]
    params = list(params)
    table = ", ".join(tparams) or f"none: {method.name} has no per-model numbers, pick a method that has"
    if not params:
        raise InputError(f"--space: empty; name at least one table parameter (for {method.name}: {table})")
    for p in params:
        spec = method.param(p)
        if spec is None:
            from mergescope.merge.plan.settings import did_you_mean

            hint = did_you_mean(p, tparams)
            raise InputError(
                f"--space {p}: {method.name} has no parameter {p!r}; {hint + ' ' if hint else ''}"
                f"its table parameters: {table}"
            )
        if p not in tparams:
            why = "a global parameter" if not spec.per_model else f"not a number ({spec.kind})"
            raise InputError(f"--space {p}: {why} of {method.name}; tune searches its table parameters: {table}")
    n_layers = num_layers if num_layers is not None else plan.num_layers()
    has_other = names is not None and any(_group_of(n) == "other" for n in names)
    all_groups = [g for g in GROUPS if g != "other" or has_other]
    groups = list(groups) if groups is not None else all_groups
    bad = [g for g in groups if g not in all_groups]
    if bad:
        raise InputError(f"--groups {','.join(bad)}: not a group of this model; choose from {','.join(all_groups)}")
    models = [m.model for m in plan.models]
    ranges = dict(ranges or {})
    stray = [r for r in ranges if r not in params]
    if stray:
        raise InputError(f"--range {stray[0]}: not in --space ({', '.join(params)}); add it there or drop the range")
    defaults = param_defaults(method)
    try:
        read = RatioTable.from_plan(
            plan, [p for p in tparams if _in_plan(plan, p)], n_layers=n_layers, band_mode=band_mode, defaults=defaults
        )
    except InputError as exc:
        raise InputError(f"{exc}; tune starts from the plan's values: write them as numbers or an app table") from None
    start = read.full()
    for p in params:
        start.values.setdefault(p, start.cells_at(defaults[p]))
    cells = [(g, b) for g, b in start.keys(other=has_other) if g in groups]
    dims = []
    for p in params:
        low, high = _range(method, p, ranges.get(p))
        dims += [Dim(p, g, b, i, low, high) for g, b in cells for i in range(len(models))]
    if not dims:
        raise InputError("--groups: the space is empty (no group chosen); e.g. --groups attn,mlp")
    spec = {s.name: s for s in method.params}
    globals_ = {k: v for k, v in (plan.parameters or {}).items() if k in spec and not spec[k].per_model}
    names = list(names) if names is not None else None
    return Space(plan, models, n_layers, band_mode, start.bands(), groups, params, start, dims, names, globals_)


def _group_of(name: str) -> str:
    from mergescope.io.naming import site_of

    return site_of(name).group


def _in_plan(plan: Plan, param: str) -> bool:
    return any(param in (m.parameters or {}) for m in plan.models) or param in (plan.parameters or {})


def _range(method, param: str, given: tuple[float, float] | None) -> tuple[float, float]:
    spec = method.param(param)
    lo, hi = spec.min, spec.max
    if given is not None:
        if (lo is not None and given[0] < lo) or (hi is not None and given[1] > hi):
            raise InputError(
                f"--range {param}={given[0]:g}:{given[1]:g}: outside what {method.name} allows "
                f"({lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}); narrow it"
            )
        return given
    if lo is not None and hi is not None:
        return float(lo), float(hi)
    if param in DEFAULT_RANGES:
        d_lo, d_hi = DEFAULT_RANGES[param]
        return max(d_lo, lo) if lo is not None else d_lo, min(d_hi, hi) if hi is not None else d_hi
    raise InputError(f"--range {param}: {method.name} gives {param} no bounds; set them, e.g. --range {param}=0:1")


def plan_layout(plan: Plan) -> tuple[list[str], int]:
    """(the tensor names of the plan's base, else its first model; its layer count): what the
    editor's filters are checked against."""
    from mergescope.merge.plan import close_all

    cks = plan.open_checkpoints()
    try:
        ref = plan.base_model if plan.base_model in cks else next(iter(cks))
        return list(cks[ref].names()), plan.num_layers(cks)
    finally:
        close_all(cks)
