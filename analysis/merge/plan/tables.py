"""The plan editor's table: its layer bands, its keys, and the one plan a set of tables writes.

Shared by the app's plan editor (tui/plan_state.py) and `mergescope tune`, so that a tuned table is
written exactly as the editor would write it and opens in the editor unchanged.

A table is {(group, band): [value per model]} (see groups.py): the non-block rows embed, norm (the
final norm), head and other, then attn / mlp / norm for every band of layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mergescope.io.errors import InputError
from mergescope.merge.plan.groups import plan_from_group_ratios
from mergescope.merge.plan.schema import ModelEntry, Plan

GROUP_COLS = ("attn", "mlp", "norm")  # the per-block groups, one column each
NON_BLOCK = ("embed", "norm", "head", "other")  # the rows outside the blocks (key band None)
BAND_MODES = (1, 2, 3, 4, 6, 0)  # how the layers are cut: that many near-equal bands; 0 = per layer


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


def value_in_force(table: Mapping | None, layer: int | None, group: str, model: int, default: float) -> float:
    """The value a table gives one model at one layer (None: outside the blocks) and group: its band's,
    else the catch-all `other`, else `default`."""
    if table is None:
        return default
    if layer is None:
        v = table.get((group, None)) or table.get(("other", None))
        return v[model] if v else default
    for (g, band), vals in table.items():
        if g == group and band is not None and band[0] <= layer < band[1]:
            return vals[model]
    v = table.get(("other", None))
    return v[model] if v else default


def uniform_table(value: float, n_models: int, bands: Sequence[tuple[int, int]]) -> dict:
    """Every key of the editor's table at `value` for every model."""
    table = {(g, None): [value] * n_models for g in NON_BLOCK}
    for band in bands:
        for g in GROUP_COLS:
            table[(g, tuple(band))] = [value] * n_models
    return table


def plan_from_tables(
    method: str,
    base: str | None,
    models: Sequence[str],
    tables: Mapping[str, Mapping],
    *,
    num_layers: int,
    parameters: dict | None = None,
    names: Sequence[str] | None = None,
    dtype: str | None = None,
    out_dtype: str | None = None,
    tokenizer_source: str | None = None,
) -> Plan:
    """One `models:` plan from a table per per-model parameter ({param: {(group, band): [value per
    model]}}), each written by `plan_from_group_ratios` and the models' parameters joined; without
    tables, the models with no parameters of their own. InputError naming the parameter when a table
    cannot be written."""
    plan = None
    for p, table in tables.items():
        try:
            sub = plan_from_group_ratios(
                method,
                base,
                models,
                table,
                num_layers=num_layers,
                param=p,
                parameters=parameters or None,
                names=names,
                dtype=dtype,
                out_dtype=out_dtype,
                tokenizer_source=tokenizer_source,
                other=table.get(("other", None)),
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
