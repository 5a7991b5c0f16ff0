"""Per-group ratio tables as mergekit filter lists: one parameter's {(group, layer band): value per
model} written as a `models:` plan, and read back.

The codec under `RatioTable` (ratio_table.py, the table the plan editor and tune work on): one
mergekit filter list per model, so the plan stays a plain mergekit config. `group_ratios_of` reads
such a plan back, and refuses plans that are not of that form.

A table maps (group, band) to one value per model: group in embed/attn/mlp/norm/head/vision/projector/other, band a
half-open block range (start, end) for per-block groups, or None for tensors outside the blocks
(embed, head, the final norm, and `other` as the catch-all). It is written as filter lists, one per
model, in this order (first match wins):

    projector      multi_modal_projector / visual.merger (vision-language models)  scalar
    vision         vision_tower / visual. (the vision tower of such a model)       scalar
    embed (None)   embed_tokens / wte / wpe / word_embeddings / tok_embeddings     scalar
    head (None)    lm_head / embed_out                                              scalar
    norm (None)    model.norm. / ln_f. / final_layernorm / final_layer_norm / norm_f scalar
    norm (bands)   layernorm / _norm / ln_                                          per-layer gradient
    attn (bands)   self_attn / attn / attention                                     per-layer gradient
    mlp (bands)    mlp / feed_forward / block_sparse_moe (experts and router)       per-layer gradient
    other          catch-all `- value:`                                             scalar

Non-block tensors get mergekit's t = 0, so they are always written as scalars; block groups are
written as a list with one value per layer (t*(n-1) lands on each layer's own entry), or as a
scalar when all bands agree. For a model without per-block "other" tensors this is exact.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from mergescope.io.errors import InputError
from mergescope.io.naming import BLOCK_GROUPS, NON_BLOCK_GROUPS, PART_GROUPS, Site, site_of
from mergescope.merge.plan.resolve import layer_split
from mergescope.merge.plan.schema import ModelEntry, Plan
from mergescope.merge.plan.settings import gradient_position, interpolate, is_catch_all, matching_filter

# (group, banded, filter substrings) per slot, in the order the filter list is written.
GROUP_FILTERS: tuple[tuple[str, bool, tuple[str, ...]], ...] = (
    ("projector", False, ("multi_modal_projector", "visual.merger", "visual.deepstack_merger")),
    ("vision", False, ("vision_tower", "visual.")),
    ("embed", False, ("embed_tokens", "wte", "wpe", "word_embeddings", "tok_embeddings")),
    ("head", False, ("lm_head", "embed_out")),
    ("norm", False, ("model.norm.", "ln_f.", "final_layernorm", "final_layer_norm", "norm_f")),
    ("norm", True, ("layernorm", "_norm", "ln_")),
    ("attn", True, ("self_attn", "attn", "attention")),
    ("mlp", True, ("mlp", "feed_forward", "block_sparse_moe")),
)
LLAMA_FILTERS = {
    ("projector", False): ("multi_modal_projector",),
    ("vision", False): ("vision_tower",),
    ("embed", False): ("embed_tokens",),
    ("head", False): ("lm_head",),
    ("norm", False): ("model.norm.",),
    ("norm", True): ("layernorm",),
    ("attn", True): ("self_attn",),
    ("mlp", True): ("mlp",),
}
# The catch-all: its slot (group, banded) and its key (group, band) in a table, which coincide.
OTHER = ("other", None)


def _filter_slots() -> dict[str, tuple[str, bool]]:
    """filter substring -> the slot it writes (the first slot that lists it)."""
    out: dict[str, tuple[str, bool]] = {}
    for group, banded, filters in GROUP_FILTERS:
        for f in filters:
            out.setdefault(f, (group, banded))
    return out


_FILTER_SLOT = _filter_slots()


def _slot_of_filter(flt) -> tuple | None:
    """The slot a filter entry writes: OTHER for the catch-all, None for a filter of no slot."""
    return OTHER if is_catch_all(flt) else _FILTER_SLOT.get(flt)


def _slot_of(name: str) -> tuple:
    """The slot a tensor belongs to (a block's router: its MLP's, which its filters name)."""
    s = site_of(name)
    if s.group == "router":
        s = Site(s.layer, "mlp", s.module)
    banded = layer_split(name) is not None
    if s.group in PART_GROUPS:
        return (s.group, False)
    if banded:
        return (s.group, True) if s.group in BLOCK_GROUPS else OTHER
    return (s.group, False) if s.group in NON_BLOCK_GROUPS and s.group != OTHER[0] else OTHER


def _choose_filters(names: Sequence[str] | None) -> list[tuple[str, bool, tuple[str, ...]]]:
    """The filter substrings per slot: Llama's without names; otherwise those that match the names."""
    if names is None:
        return [(g, b, LLAMA_FILTERS[(g, b)]) for g, b, _ in GROUP_FILTERS]
    out = []
    remaining = list(names)
    for group, banded, cands in GROUP_FILTERS:
        chosen = []
        for c in cands:
            hits = [n for n in remaining if c in n]
            own = [n for n in hits if _slot_of(n) == (group, banded)]
            if own and len(own) == len(hits):
                chosen.append(c)
                remaining = [n for n in remaining if c not in n]
        out.append((group, banded, tuple(chosen) or LLAMA_FILTERS[(group, banded)]))
    return out


def plan_from_group_ratios(
    method: str,
    base: str | None,
    models: Sequence[str],
    ratios: Mapping,
    *,
    num_layers: int,
    param: str = "weight",
    parameters: dict | None = None,
    names: Sequence[str] | None = None,
    dtype: str | None = None,
    out_dtype: str | None = None,
    tokenizer_source: str | None = None,
    other: float | Sequence[float] | None = None,
) -> Plan:
    """Build a `models:` plan whose `param` follows a per-(group, layer band) table.

    ratios: {(group, band): [value per model]} (or a single number for a global parameter such as
    slerp's `t`); band = (start, end) for attn/mlp/norm blocks, None for embed/head/final norm/other.
    Bands of a group must not overlap; layers no band covers keep the catch-all value (`other`,
    else ratios[("other", None)], else 1.0). `names` (e.g. the base's tensor names) picks filter
    substrings for non-Llama naming and verifies that every tensor lands in its group."""
    from mergescope.merge import methods as _m

    spec = None
    reg = getattr(_m, "REGISTRY", None)
    if reg is not None and method in reg:
        spec = reg[method].param(param)
        if spec is None:
            raise ValueError(
                f"{method} has no parameter {param!r} (its parameters: {', '.join(p.name for p in reg[method].params)})"
            )
    per_model = spec.per_model if spec is not None else True
    n_vals = len(models) if per_model else 1
    table = {}
    for key, vals in ratios.items():
        group, band = key
        if isinstance(vals, (int, float)):
            vals = [vals] * n_vals
        vals = [float(v) for v in vals]
        if len(vals) != n_vals:
            raise ValueError(f"ratios[{key!r}]: {len(vals)} values, expected {n_vals}")
        table[(group, tuple(band) if band is not None else None)] = vals
    if other is None:
        other_vals = table.get(OTHER, [1.0] * n_vals)
    else:
        other_vals = [float(other)] * n_vals if isinstance(other, (int, float)) else [float(v) for v in other]
    slots = _choose_filters(names)
    own_slot = {g for g in PART_GROUPS if names is not None and any(site_of(n).group == g for n in names)}

    def setting_for(i: int) -> list:
        entries = []
        for group, banded, filters in slots:
            if not banded:
                if (group, None) in table:
                    value: Any = float(table[(group, None)][i])
                elif group in own_slot:  # a vision tower / projector: kept out of attn/mlp's filters
                    value = float(other_vals[i])
                else:
                    continue
            else:
                bands = sorted((b, v) for (g, b), v in table.items() if g == group and b is not None)
                if not bands:
                    continue
                per_layer = [other_vals[i]] * num_layers
                for (start, end), v in bands:
                    if not 0 <= start < end <= num_layers:
                        raise ValueError(f"band {(start, end)} of {group} is outside 0..{num_layers}")
                    for layer in range(start, end):
                        per_layer[layer] = v[i]
                per_layer = [float(x) for x in per_layer]
                value = per_layer[0] if len(set(per_layer)) == 1 else per_layer
            for f in filters:
                entries.append({"filter": f, "value": copy.deepcopy(value)})
        entries.append({"value": float(other_vals[i])})
        return entries

    top = copy.deepcopy(parameters) if parameters else {}
    if per_model:
        entries = [ModelEntry(m, {param: setting_for(i)}) for i, m in enumerate(models)]
    else:
        entries = [ModelEntry(m) for m in models]
        top[param] = setting_for(0)
    plan = Plan(
        method,
        base_model=base,
        models=entries,
        parameters=top or None,
        dtype=dtype,
        out_dtype=out_dtype,
        tokenizer_source=tokenizer_source,
    )
    if names is not None:
        _verify_filters(plan, param, names, per_model)
    return plan


def _verify_filters(plan: Plan, param: str, names: Sequence[str], per_model: bool) -> None:
    """Every tensor must get its own group's value (first matching filter), or the catch-all when the
    table has no entry for its group."""
    setting = plan.models[0].parameters[param] if per_model else plan.parameters[param]
    written = {_slot_of_filter(e.get("filter")) for e in setting} - {OTHER}
    for name in names:
        want = _slot_of(name)
        if want not in written:
            want = OTHER
        _, hit = matching_filter(setting, name)
        got = _slot_of_filter(hit.get("filter"))
        if got != want:
            raise ValueError(
                f"tensor {name} belongs to {want[0]} but the filter list gives it the {got[0]} value "
                f"(filter {hit.get('filter')!r}); this naming scheme is not supported by plan_from_group_ratios"
            )


def group_ratios_of(
    plan: Plan,
    *,
    param: str = "weight",
    num_layers: int | None = None,
    bands: Mapping[str, Sequence[tuple[int, int]]] | None = None,
) -> dict:
    """Inverse of `plan_from_group_ratios`: the {(group, band): [value per model]} table of a plan.

    Per-layer values are grouped into `bands[group]` when given (each band must be constant), else
    into maximal runs of equal values. Raises InputError when the plan is not of that form."""
    where = plan.where
    if plan.models is None:
        raise InputError(f"{where}slices: a per-group table needs a `models:` plan")
    settings = []
    if plan.models and all(m.parameters and param in m.parameters for m in plan.models):
        settings = [(f"models[{i}].parameters.{param}", m.parameters[param]) for i, m in enumerate(plan.models)]
    elif plan.parameters and param in plan.parameters:
        settings = [(f"parameters.{param}", plan.parameters[param])]
    else:
        raise InputError(f"{where}{param}: not set per model or at the top level; nothing to tabulate")
    n_vals = len(settings)
    n = num_layers if num_layers is not None else plan.num_layers()
    out: dict = {}
    for i, (path, setting) in enumerate(settings):
        entries = (
            setting
            if isinstance(setting, list) and setting and all(isinstance(e, dict) for e in setting)
            else [setting]
            if isinstance(setting, dict)
            else [{"value": setting}]
        )
        seen_slots = set()
        for k, e in enumerate(entries):
            f = e.get("filter")
            v = e["value"]
            slot = _slot_of_filter(f)
            if slot is None:
                raise InputError(
                    f"{where}{path}[{k}].filter: {f!r} is not one of the per-group filters; "
                    f"this plan is not a per-group table"
                )
            if slot in seen_slots and slot != OTHER:
                continue  # an alternative spelling for the same group (e.g. wte and wpe)
            seen_slots.add(slot)
            group, banded = slot
            if not banded:
                if isinstance(v, list):
                    v = interpolate([float(x) for x in v], 0.0)  # mergekit evaluates these at t = 0
                out.setdefault((group, None), [None] * n_vals)[i] = float(v)
                if slot == OTHER:
                    break
                continue
            per_layer = _per_layer(v, n)
            group_bands = list(bands.get(group, [])) if bands else None
            if group_bands:
                for start, end in group_bands:
                    vals = set(per_layer[start:end])
                    if len(vals) != 1:
                        raise InputError(
                            f"{where}{path}[{k}].value: not constant over layers {start}..{end - 1} of {group}"
                        )
                    out.setdefault((group, (start, end)), [None] * n_vals)[i] = per_layer[start]
            else:
                start = 0
                for layer in range(1, n + 1):
                    if layer == n or per_layer[layer] != per_layer[start]:
                        out.setdefault((group, (start, layer)), [None] * n_vals)[i] = per_layer[start]
                        start = layer
    out = _refine(out, n_vals)  # runs found per model may differ: split into the common refinement
    if any(None in v for v in out.values()):
        bad = next(k for k, v in out.items() if None in v)
        raise InputError(f"{where}{param}: the models' filter lists differ in structure ({bad} missing for some model)")
    return out


def _per_layer(v, n: int) -> list[float]:
    """A setting's value at every layer of an n-layer slice."""
    if not isinstance(v, list):
        return [float(v)] * n
    vals = [float(x) for x in v]
    return [float(interpolate(vals, gradient_position(j, n))) for j in range(n)]


def _refine(table: dict, n_vals: int) -> dict:
    """Per group, split bands at every model's boundaries so every key has all models' values."""
    out = {}
    groups = {}
    for (g, b), v in table.items():
        if b is None:
            out[(g, b)] = v
        else:
            groups.setdefault(g, []).append((b, v))
    for g, items in groups.items():
        cuts = sorted({x for (s, e), _ in items for x in (s, e)})
        for s, e in zip(cuts, cuts[1:]):
            vals = [None] * n_vals
            for (bs, be), v in items:
                if bs <= s and e <= be:
                    for i in range(n_vals):
                        if v[i] is not None:
                            vals[i] = v[i]
            out[(g, (s, e))] = vals
    # merge adjacent bands whose values agree for every model
    merged = {}
    for g in groups:
        keys = sorted(k for k in out if k[0] == g and k[1] is not None)
        cur_key, cur_val = None, None
        for k in keys:
            if cur_key is not None and cur_val == out[k] and cur_key[1][1] == k[1][0]:
                cur_key = (g, (cur_key[1][0], k[1][1]))
            else:
                if cur_key is not None:
                    merged[cur_key] = cur_val
                cur_key, cur_val = k, out[k]
        if cur_key is not None:
            merged[cur_key] = cur_val
    return {**{k: v for k, v in out.items() if k[1] is None}, **merged}
