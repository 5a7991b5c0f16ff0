"""Merge methods by mergekit name: `REGISTRY[name] -> MergeMethod`, `get_method(name)`.

Semantics and parameter defaults are mergekit 0.1.5's (see each module's docstring). Parameters with
`per_model=True` are mergekit's per-input ("tensor") parameters, set under `models[i].parameters`
(or `slices[].sources[i].parameters`); when a model does not set one, mergekit falls back to the
top-level `parameters:` value, then to the default. The others are global.

The extensions (`extension=True`: tsv, iso_c, iso_cts) are mergescope's own, not mergekit methods;
their modules cite the papers and reference code they follow.
"""

from __future__ import annotations

import difflib

from mergescope.io.errors import InputError
from mergescope.merge.methods import (
    arcee_fusion,
    iso,
    karcher,
    linear,
    model_stock,
    multislerp,
    nearswap,
    nuslerp,
    passthrough,
    ram,
    sce,
    slerp,
    task_arithmetic,
    tsv,
)
from mergescope.merge.methods._util import release_workspace
from mergescope.merge.methods.base import MergeContext, MergeMethod, ParamSpec

REGISTRY: dict[str, MergeMethod] = {
    m.name: m
    for m in (
        linear.METHOD,
        *task_arithmetic.METHODS,
        slerp.METHOD,
        nuslerp.METHOD,
        model_stock.METHOD,
        passthrough.METHOD,
        multislerp.METHOD,
        karcher.METHOD,
        nearswap.METHOD,
        sce.METHOD,
        arcee_fusion.METHOD,
        *ram.METHODS,
        tsv.METHOD,  # mergescope extensions (`extension=True`): not mergekit methods
        *iso.METHODS,
    )
}


def get_method(name: str) -> MergeMethod:
    """The method called `name`; an unknown name is an InputError with a suggestion and the valid names."""
    method = REGISTRY.get(name)
    if method is not None:
        return method
    key = str(name).strip().lower().replace("-", "_")
    if key in REGISTRY:
        hint = f" did you mean '{key}'?"
    else:
        close = difflib.get_close_matches(key, list(REGISTRY), n=1, cutoff=0.5)
        hint = f" did you mean '{close[0]}'?" if close else ""
    raise InputError(f"unknown merge_method '{name}';{hint} valid methods: {', '.join(REGISTRY)}")


__all__ = ["REGISTRY", "get_method", "MergeMethod", "MergeContext", "ParamSpec", "release_workspace"]
