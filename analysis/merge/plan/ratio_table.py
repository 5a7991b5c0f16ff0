"""The one ratio table: the value of each per-model parameter per model × layer band × group.

The app's plan editor edits it, `mergescope tune` searches its cells and the editor's sweeps vary
one; whoever made it, a table becomes a plan only through `RatioTable.to_plan` (mergekit filter
lists, see groups.py), and `RatioTable.from_plan` reads such a plan back, so a tuned table opens in
the editor as the table it was found as.

A parameter's table is {(group, band): [value per model]}: band a half-open layer range (start, end)
for the groups inside the blocks (attn, mlp, norm), None for the rows outside them (embed, the final
norm, head, and `other`, the catch-all). A band mode cuts the layers: that many near-equal bands, or
one band per layer (0).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mergescope.io.errors import InputError
from mergescope.io.naming import BLOCK_GROUPS, NON_BLOCK_GROUPS
from mergescope.merge.plan.groups import OTHER, group_ratios_of, plan_from_group_ratios
from mergescope.merge.plan.schema import ModelEntry, Plan

BAND_MODES = (1, 2, 3, 4, 6, 0)  # how the layers are cut: that many near-equal bands; 0 = per layer
TABLE_GROUPS = tuple(dict.fromkeys(BLOCK_GROUPS + NON_BLOCK_GROUPS))  # the groups a cell can hold
DEFAULT_VALUE = 1.0  # a parameter's value where neither the table nor the method's spec gives one


def make_bands(n_layers: int, mode: int) -> list[tuple[int, int]]:
    """Contiguous bands covering 0..n_layers: `mode` near-equal bands, or one per layer (mode 0)."""
    if n_layers <= 0:
        return []
    k = n_layers if mode == 0 else max(1, min(mode, n_layers))
    edges = [round(i * n_layers / k) for i in range(k + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def band_label(band: tuple[int, int]) -> str:
    a, b = band
    return f"L{a}" if b - a == 1 else f"L{a}-{b - 1}"


def table_specs(method) -> list:
    """A method's parameters the table holds: the per-model numbers (a MergeMethod's ParamSpecs)."""
    return [p for p in method.params if p.per_model and p.kind == "float"]


def param_defaults(method) -> dict[str, float]:
    """Each table parameter's value where the table has none: its spec's default, else 1.0."""
    return {p.name: float(p.default) if p.default is not None else DEFAULT_VALUE for p in table_specs(method)}


def key_in_force(table: Mapping | None, layer: int | None, group: str) -> tuple | None:
    """The key of one parameter's table whose value holds at one layer (None: outside the blocks) and
    group: its band's (or its row's), else the catch-all `other`, else None (the default holds)."""
    if table is None:
        return None
    if layer is None:
        if table.get((group, None)):
            return (group, None)
    else:
        for g, band in table:
            if g == group and band is not None and band[0] <= layer < band[1]:
                return (g, band)
    return OTHER if table.get(OTHER) else None


def _in_force(table: Mapping | None, layer: int | None, group: str, model: int, default: float) -> float:
    """The value one parameter's table gives one model at one layer and group (key_in_force), else
    `default`."""
    key = key_in_force(table, layer, group)
    return table[key][model] if key is not None else default


@dataclass
class RatioTable:
    """{param: {(group, band): [value per model]}} over n_layers layers cut by band_mode. `defaults`
    holds a parameter's value where no key of its table applies (absent: 1.0)."""

    n_models: int
    n_layers: int
    band_mode: int = 3
    values: dict[str, dict[tuple, list[float]]] = field(default_factory=dict)
    defaults: dict[str, float] = field(default_factory=dict)

    @classmethod
    def uniform(
        cls,
        values: Mapping[str, float],
        n_models: int,
        n_layers: int,
        band_mode: int = 3,
        defaults: Mapping[str, float] | None = None,
    ) -> RatioTable:
        """Every key of the cut at values[param], for every model and parameter."""
        table = cls(n_models, n_layers, band_mode, {}, dict(defaults or {}))
        table.values = {p: table.cells_at(v) for p, v in values.items()}
        return table

    # -- the cut ----------------------------------------------------------------------------------
    def default(self, param: str) -> float:
        return self.defaults.get(param, DEFAULT_VALUE)

    def bands(self) -> list[tuple[int, int]]:
        return make_bands(self.n_layers, self.band_mode)

    def keys(self, *, other: bool = True) -> list[tuple]:
        """Every cell's key in the editor's order: embed, each band's groups, the final norm, head and
        (with `other`) the catch-all."""
        first, *rest = NON_BLOCK_GROUPS
        keys = [(first, None), *((g, b) for b in self.bands() for g in BLOCK_GROUPS), *((g, None) for g in rest)]
        return keys if other else [k for k in keys if k != OTHER]

    def in_use(self, key: tuple) -> bool:
        """Whether a key belongs to the current cut (a row outside the blocks always does)."""
        return key[1] is None or key[1] in self.bands()

    def _layout(self) -> list[tuple]:
        """The keys of the cut as a table stores them: the rows outside the blocks, then the bands."""
        return [(g, None) for g in NON_BLOCK_GROUPS] + [(g, tuple(b)) for b in self.bands() for g in BLOCK_GROUPS]

    def cells_at(self, value: float) -> dict[tuple, list[float]]:
        """One parameter's table with every key of the cut at `value` for every model."""
        return {key: [value] * self.n_models for key in self._layout()}

    def recut(self, mode: int) -> RatioTable:
        """The table cut by `mode`: each new band takes the value in force at its first layer; the rows
        outside the blocks are kept as they are."""
        out = RatioTable(self.n_models, self.n_layers, mode, {}, dict(self.defaults))
        for param, table in self.values.items():
            new = {k: list(v) for k, v in table.items() if k[1] is None}
            for band in out.bands():
                for g in BLOCK_GROUPS:
                    new[(g, band)] = [self.value_in_force(param, band[0], g, i) for i in range(self.n_models)]
            out.values[param] = new
        return out

    def full(self) -> RatioTable:
        """Every key of the cut, each at its value in force (rows outside the blocks included), and
        no other key."""
        out = RatioTable(self.n_models, self.n_layers, self.band_mode, {}, dict(self.defaults))
        for param in self.values:
            out.values[param] = {
                key: [
                    self.value_in_force(param, key[1][0] if key[1] else None, key[0], i) for i in range(self.n_models)
                ]
                for key in out._layout()
            }
        return out

    def _fits(self, mode: int) -> bool:
        """Whether the cut by `mode` keeps every band of the table (each is a union of its bands)."""
        cut = make_bands(self.n_layers, mode)
        edges = {a for a, _ in cut} | {b for _, b in cut}
        return all(
            band[0] in edges and band[1] in edges for t in self.values.values() for _, band in t if band is not None
        )

    # -- values -----------------------------------------------------------------------------------
    def value_in_force(self, param: str, layer: int | None, group: str, model: int) -> float:
        """The value of `param` for one model at one layer (None: outside the blocks) and group: its
        band's, else the catch-all `other`, else the parameter's default."""
        return _in_force(self.values.get(param), layer, group, model, self.default(param))

    def set_model(self, param: str, model: int, value: float) -> None:
        """One model's `param` at `value` in every cell; the other models keep the values in force."""
        table = self.values.setdefault(param, {})
        for key in dict.fromkeys([*self.keys(), *table]):
            if key not in table:
                layer = key[1][0] if key[1] is not None else None
                table[key] = [self.value_in_force(param, layer, key[0], i) for i in range(self.n_models)]
            table[key][model] = round(float(value), 6)  # as the editor stores an edit

    def select(self, models: Sequence[int], params: Iterable[str]) -> RatioTable:
        """The table of these models and parameters (in that order) with the keys of the current cut:
        what their plan is written from."""
        values = {
            p: {k: [v[i] for i in models] for k, v in self.values[p].items() if self.in_use(k)}
            for p in params
            if p in self.values
        }
        return RatioTable(len(models), self.n_layers, self.band_mode, values, dict(self.defaults))

    def placed(self, order: Sequence[int], n_models: int) -> RatioTable:
        """This table's models as the models `order` of a table of n_models, the others at the
        defaults (a table with another number of models than `order` gives each its first value)."""
        out = RatioTable(n_models, self.n_layers, self.band_mode, {}, dict(self.defaults))
        for param, table in self.values.items():
            full = {}
            for key, vals in table.items():
                row = [self.default(param)] * n_models
                for k, i in enumerate(order):
                    row[i] = float(vals[k] if len(vals) == len(order) else vals[0])
                full[key] = row
            out.values[param] = full
        return out

    # -- plan <-> table ---------------------------------------------------------------------------
    def to_plan(
        self,
        method: str,
        base: str | None,
        models: Sequence[str],
        *,
        parameters: dict | None = None,
        names: Sequence[str] | None = None,
        dtype: str | None = None,
        out_dtype: str | None = None,
        tokenizer_source: str | None = None,
    ) -> Plan:
        """The one `models:` plan of this table: each parameter's filter lists (plan_from_group_ratios)
        joined per model; without parameters, the models with none of their own. `names` (the base's
        tensor names) picks the filter spellings. InputError naming the parameter when a table cannot
        be written."""
        plan = None
        for p, table in self.values.items():
            try:
                sub = plan_from_group_ratios(
                    method,
                    base,
                    models,
                    table,
                    num_layers=self.n_layers,
                    param=p,
                    parameters=parameters or None,
                    names=names,
                    dtype=dtype,
                    out_dtype=out_dtype,
                    tokenizer_source=tokenizer_source,
                    other=table.get(OTHER),
                )
            except ValueError as exc:
                raise InputError(f"{p}: {exc}") from None
            if plan is None:
                plan = sub
            else:
                for mine, theirs in zip(plan.models, sub.models):
                    mine.parameters = {**(mine.parameters or {}), **(theirs.parameters or {})}
        if plan is None:
            plan = Plan(
                method,
                base_model=base,
                models=[ModelEntry(m) for m in models],
                parameters=parameters or None,
                dtype=dtype,
                out_dtype=out_dtype,
                tokenizer_source=tokenizer_source,
            )
        return plan

    @classmethod
    def from_plan(
        cls,
        plan: Plan,
        params: Iterable[str],
        *,
        n_layers: int,
        band_mode: int | None = None,
        optional: Iterable[str] = (),
        defaults: Mapping[str, float] | None = None,
    ) -> RatioTable:
        """The table a `models:` plan holds for `params`, one value per plan model (a top-level value
        is every model's), cut by `band_mode` (None: the first cut of BAND_MODES that keeps every band
        the plan has; one per layer always does). InputError when a parameter's settings are not a
        per-group table, unless it is `optional` (then it is left out)."""
        n_models = len(plan.models or [])
        optional = set(optional)
        read = {}
        for p in params:
            try:
                table = group_ratios_of(plan, param=p, num_layers=n_layers)
            except InputError:
                if p in optional:
                    continue
                raise
            read[p] = {k: list(v) * n_models if len(v) == 1 else list(v) for k, v in table.items()}
        raw = cls(n_models, n_layers, 0, read, dict(defaults or {}))
        return raw.recut(band_mode if band_mode is not None else next(m for m in BAND_MODES if raw._fits(m)))
