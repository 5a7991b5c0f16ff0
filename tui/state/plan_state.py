"""The plan editor's state: method, global parameters and the ratio table (per model × layer band ×
group, for each per-model parameter).

No widgets here: the editor shows and edits a `PlanState`, whose tables are a `RatioTable`'s: it
turns into a `Plan` (`RatioTable.to_plan`) and back (`RatioTable.from_plan`). A loaded plan that is
not of that form (hand-written mergekit filters, slices) is kept as it is: it can be inspected,
predicted and merged, but its table is read-only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from mergescope.io.naming import BLOCK_GROUPS
from mergescope.merge.methods.base import BaseUse
from mergescope.merge.plan.ratio_table import RatioTable, band_label, table_specs

STEP = {"weight": 0.05, "density": 0.05, "gamma": 0.01, "epsilon": 0.01, "scale": 0.05, "t": 0.05}


VOCAB_CHOICES = ("union", "base")  # what the editor offers besides the donor's tokenizer (key k)


def band_name(mode: int) -> str:
    return {0: "per layer", 1: "one band", 2: "halves", 3: "thirds", 4: "quarters"}.get(mode, f"{mode} bands")


@dataclass
class Row:
    label: str
    band: tuple[int, int] | None  # None: a row outside the blocks
    group: str | None  # the group of a non-block row (embed / norm / head / other)


@dataclass
class PlanState:
    base: str
    models: list[str]  # the analysed fine-tunes, in report order
    n_layers: int
    method: str = "task_arithmetic"
    included: list[bool] = field(default_factory=list)
    globals: dict = field(default_factory=dict)  # global parameters the user set
    tables: dict = field(default_factory=dict)  # param -> {(group, band): [value per model]}
    band_mode: int = 3
    names: list[str] | None = None  # the base's tensor names: picks filter spellings for other naming schemes
    has_other: bool = False
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None  # None: the donor's tokenizer; "union" / "base": aligned by token
    custom: object = None  # a loaded Plan that is not a per-group table (kept verbatim)
    source: str | None = None  # the file it was loaded from / last written to
    analysis_density: float | None = None  # the report's density: where sparsifying methods start
    note: str = ""  # where the starting plan came from, shown until the first edit

    def __post_init__(self):
        if not self.included:
            self.included = [True] * len(self.models)
        if not self.tables:
            self.reset_tables()

    # -- method and its parameters ----------------------------------------------------------
    @property
    def spec(self):
        from mergescope.merge.methods import get_method

        return get_method(self.method)

    def global_specs(self) -> list:
        return [p for p in self.spec.params if not p.per_model]

    def table_specs(self) -> list:
        """Per-model numeric parameters: edited as per-group tables."""
        return table_specs(self.spec)

    def table_params(self) -> list[str]:
        return [p.name for p in self.table_specs()]

    def default_value(self, param: str) -> float:
        spec = self.spec.param(param)
        if spec is not None and spec.default is not None:
            return float(spec.default)
        return 1.0

    def set_method(self, method: str) -> None:
        from mergescope.merge.methods import get_method

        get_method(method)  # InputError for an unknown name
        self.method = method
        names = {p.name for p in self.spec.params}
        self.globals = {k: v for k, v in self.globals.items() if k in names}
        self.tables = {k: v for k, v in self.tables.items() if k in self.table_params()}
        for p in self.table_specs():
            if p.required and p.name not in self.tables:
                self.tables[p.name] = self._uniform(self.default_value(p.name))
        self.custom = None

    def choose_method(self, method: str) -> None:
        """The user's pick: a sparsifying method starts at the analysis density, so the measured trimmed
        conflict applies to it as it is."""
        self.set_method(method)
        if self.analysis_density is None or "density" not in self.table_params():
            return
        table = self.table("density")
        if all(v == self.default_value("density") for vals in table.values() for v in vals):
            for key in table:
                table[key] = [self.analysis_density] * len(self.models)

    def reset_tables(self) -> None:
        self.tables = {}
        for p in self.table_specs():
            if p.required:
                self.tables[p.name] = self._uniform(self.default_value(p.name))

    # -- the table --------------------------------------------------------------------------
    def ratios(self, params: Iterable[str] | None = None) -> RatioTable:
        """The tables as a RatioTable, holding the defaults of `params` (all the tables' when None);
        it shares the tables: an edit through it is an edit of the state."""
        params = self.tables if params is None else params
        defaults = {p: self.default_value(p) for p in params}
        return RatioTable(len(self.models), self.n_layers, self.band_mode, self.tables, defaults)

    def bands(self) -> list[tuple[int, int]]:
        return self.ratios(()).bands()

    def rows(self) -> list[Row]:
        out = [Row("embed", None, "embed")]
        out += [Row(band_label(b), b, None) for b in self.bands()]
        out += [Row("final norm", None, "norm"), Row("head", None, "head")]
        if self.has_other:
            out.append(Row("other", None, "other"))
        return out

    def columns(self) -> list[str]:
        return ["all", *BLOCK_GROUPS]

    def keys_of(self, row: Row, col: str) -> list[tuple]:
        """Table keys a cell edits: one, three (a band's "all"), or none."""
        if row.band is None:
            return [(row.group, None)] if col == "all" else []
        if col == "all":
            return [(g, row.band) for g in BLOCK_GROUPS]
        return [(col, row.band)]

    def _uniform(self, value: float) -> dict:
        return self.ratios(()).cells_at(value)

    def table(self, param: str) -> dict:
        if param not in self.tables:
            self.tables[param] = self._uniform(self.default_value(param))
        return self.tables[param]

    def value_at(self, param: str, layer: int | None, group: str, model: int) -> float:
        """The value in force for one layer and group (bands looked up; defaults filled)."""
        return self.ratios([param]).value_in_force(param, layer, group, model)

    def cell_value(self, param: str, row: Row, col: str, model: int) -> float | None:
        keys = self.keys_of(row, col)
        if not keys:
            return None
        vals = {self.value_at(param, band[0] if band else None, g, model) for g, band in keys}
        return vals.pop() if len(vals) == 1 else math.nan

    def uniform_value(self, param: str) -> float | None:
        """The one value `param` has for every included model everywhere, or None when it varies."""
        table = self.tables.get(param)
        idx = self.chosen()
        if table is None:
            return self.default_value(param) if self.spec.param(param) is not None else None
        cut = self.ratios(())
        vals = {round(v[i], 9) for key, v in table.items() if cut.in_use(key) for i in idx}
        return vals.pop() if len(vals) == 1 else None

    def set_band_mode(self, mode: int) -> None:
        """Re-cut the bands; every new band takes the value in force at its first layer."""
        self.tables.update(self.ratios().recut(mode).values)
        self.band_mode = mode

    def clamp(self, param: str, value: float) -> float:
        spec = self.spec.param(param)
        if spec is not None:
            if spec.min is not None:
                value = max(spec.min, value)
            if spec.max is not None:
                value = min(spec.max, value)
        return round(value, 6)

    def check_value(self, param: str, value: float) -> None:
        """InputError when `value` is not a number `param` takes."""
        from mergescope.io.errors import InputError

        if not math.isfinite(value):
            raise InputError(f"{param}: {value} is not a finite number")
        spec = self.spec.param(param)
        if spec is not None:
            if spec.min is not None and value < spec.min:
                raise InputError(f"{param} must be ≥ {spec.min} ({spec.help or self.method})")
            if spec.max is not None and value > spec.max:
                raise InputError(f"{param} must be ≤ {spec.max} ({spec.help or self.method})")

    def set_everywhere(self, param: str, model: int, value: float) -> None:
        """One model's `param` at `value` in every cell (the other models keep theirs)."""
        self.check_value(param, value)
        self.table(param)
        self.ratios([param]).set_model(param, model, value)
        self.custom = None

    def set_value(self, param: str, row: Row, col: str, model: int, value: float) -> None:
        self.check_value(param, value)
        table = self.table(param)
        for key in self.keys_of(row, col):
            vals = table.setdefault(key, [self.default_value(param)] * len(self.models))
            vals[model] = round(float(value), 6)
        self.custom = None

    def step(self, param: str, row: Row, col: str, model: int, direction: int) -> float | None:
        cur = self.cell_value(param, row, col, model)
        if cur is None:
            return None
        if math.isnan(cur):
            cur = self.value_at(
                param, row.band[0] if row.band else None, BLOCK_GROUPS[0] if row.band else row.group, model
            )
        new = self.clamp(param, cur + direction * STEP.get(param, 0.05))
        self.set_value(param, row, col, model, new)
        return new

    def set_global(self, name: str, raw) -> None:
        """Validate one global parameter with the method's spec (InputError with the reason)."""
        from mergescope.io.errors import InputError
        from mergescope.merge.plan import coerce_value

        spec = self.spec.param(name)
        if spec is None or spec.per_model:
            raise InputError(f"{self.method} has no global parameter {name!r}")
        if raw in (None, ""):
            self.globals.pop(name, None)
            return
        try:
            value = coerce_value(raw, spec)
        except ValueError as exc:
            raise InputError(f"{name}: {exc}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if spec.min is not None and value < spec.min:
                raise InputError(f"{name} must be ≥ {spec.min}")
            if spec.max is not None and value > spec.max:
                raise InputError(f"{name} must be ≤ {spec.max}")
        if value == self.global_value(name) and (name in self.globals or value == spec.default):
            return  # unchanged (e.g. an input re-sent its value)
        self.globals[name] = value
        self.custom = None

    def global_value(self, name: str):
        if name in self.globals:
            return self.globals[name]
        spec = self.spec.param(name)
        return spec.default if spec is not None else None

    # -- Plan <-> state -----------------------------------------------------------------------
    def chosen(self) -> list[int]:
        return [i for i, inc in enumerate(self.included) if inc]

    def to_plan(self):
        """The Plan this state describes (InputError when it cannot be merged as it stands)."""
        from mergescope.io.errors import InputError

        if self.custom is not None:
            return self.custom
        idx = self.chosen()
        if not idx:
            raise InputError("the plan includes no model: press i on a model to include it")
        spec = self.spec
        if len(idx) < spec.min_models:
            raise InputError(f"{self.method} needs at least {spec.min_models} model(s); {len(idx)} included")
        if spec.max_models is not None and len(idx) > spec.max_models:
            raise InputError(
                f"{self.method} takes at most {spec.max_models} model(s) besides the base; "
                f"{len(idx)} included: press i to leave some out"
            )
        models = [self.models[i] for i in idx]
        base = self.base if spec.base is not BaseUse.INPUT else None
        return (
            self.ratios()
            .select(idx, self.table_params())
            .to_plan(
                self.method,
                base,
                models,
                parameters=dict(self.globals),
                names=self.names,
                dtype=self.dtype,
                out_dtype=self.out_dtype,
                tokenizer_source=self.tokenizer_source,
            )
        )

    @classmethod
    def from_plan(cls, plan, report, names=None) -> PlanState:
        """Editor state for a loaded plan: tables when it is a per-group table, else kept verbatim."""
        from mergescope.io.errors import InputError
        from mergescope.merge.whatif import is_base, plan_models_to_report

        n_layers = len(report.layers())
        state = cls(
            report.base,
            list(report.models),
            n_layers,
            method=plan.merge_method,
            names=names,
            has_other=any(s.group == "other" for s in report.sites),
            analysis_density=report.density,
        )
        state.set_method(plan.merge_method)
        to_idx = plan_models_to_report(plan, report)
        base_check = is_base(plan, report)
        refs = plan.input_models()
        state.included = [False] * len(report.models)
        for ref in refs:
            if ref in to_idx:
                state.included[to_idx[ref]] = True
            elif not base_check(ref):
                raise InputError(
                    f"{plan.source or 'plan'}: model {ref} is not one of the analysed models; "
                    f"open a set that includes it (o)"
                )
        state.globals = {
            k: v
            for k, v in (plan.parameters or {}).items()
            if state.spec.param(k) is not None and not state.spec.param(k).per_model and not isinstance(v, (list, dict))
        }
        state.dtype, state.out_dtype = plan.dtype, plan.out_dtype
        spec = plan.vocab_spec()
        state.tokenizer_source = spec.source if spec is not None and spec.source in VOCAB_CHOICES else None
        state.source = plan.source
        order = [to_idx[r] for r in refs if r in to_idx]
        try:
            if plan.slices is not None or plan.modules is not None:
                raise InputError("slices")
            params = state.table_params()
            optional = [p.name for p in state.table_specs() if not p.required]
            read = RatioTable.from_plan(
                plan, params, n_layers=n_layers, optional=optional, defaults=state.ratios(params).defaults
            )
            if any(isinstance(v, (list, dict)) for v in (plan.parameters or {}).values()):
                raise InputError("gradient globals")
        except InputError:
            state.custom = plan
            return state
        table = read.placed(order, len(report.models))  # the plan's models among the report's
        state.band_mode, state.tables = table.band_mode, table.values
        return state


# The starting plan: task arithmetic at half weight per model was the best start in the README's evidence
# ("Which numbers predict a merge's outcome": mean gap to the specialists +0.093 bits per byte, against
# +0.224 at weight 1.0); a model with an error finding (another base, another shape) starts left out.
START_METHOD, START_WEIGHT = "task_arithmetic", 0.5


def starting_state(report) -> PlanState:
    """The plan a newly opened set starts from, with a note saying where it came from."""
    from mergescope.tui.format import short_names

    st = state_for_report(report, START_METHOD)
    bad = {f.model for f in report.findings if f.severity == "error" and f.model}
    st.included = [m not in bad for m in report.models]
    if not any(st.included):
        st.included = [True] * len(report.models)
    weight = START_WEIGHT if len(st.chosen()) >= 2 else 1.0
    st.tables["weight"] = st._uniform(weight)
    st.note = (
        f"start: task arithmetic, weight {weight:g} each (the README's best, “Which numbers predict a merge's outcome”)"
    )
    out = [n for n, inc in zip(short_names(report.models, 14), st.included) if not inc]
    if out:
        st.note += f"; left out: {', '.join(out)} (error finding)"
    return st


def state_for_report(report, method: str = "task_arithmetic") -> PlanState:
    names = sorted({t for s in report.sites for t in s.tensors})
    st = PlanState(
        report.base,
        list(report.models),
        len(report.layers()),
        names=names,
        has_other=any(s.group == "other" for s in report.sites),
        analysis_density=report.density,
    )
    st.set_method(method)
    return st
