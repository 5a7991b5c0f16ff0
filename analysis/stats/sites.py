"""Additive sums per site and the groupings built from them, shared by the analysis and the spectral pass.

Every metric is a ratio of additive sums, so both passes keep raw sums per *site* (layer, group, module)
and derive any grouping afterwards: a cell (layer, group), a module column, a heatmap row, the whole
model. A pass declares its sums (`Sums` subclass: which fields are scalars, per model, per pair) and its
metrics (`Aggregation` subclass over the summed total); the groupings (`SiteSet`) are written once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mergescope.io.naming import GROUPS

TOPK_FRACTION = 0.2  # topk_energy: the share of ‖τ‖² held by the top 20 % magnitudes (as TIES trims)


def layer_sort_key(layer: int | None, group: str) -> tuple:
    """Embeddings first, blocks in order, then final norm / head / other."""
    if layer is None:
        return (0 if group == "embed" else 2, GROUPS.index(group) if group in GROUPS else 9, -1)
    return (1, layer, GROUPS.index(group) if group in GROUPS else 9)


_EXPERT_MODULE = re.compile(r"^expert(\d+)\.(.+)$")
_EXPERT_ROLES = ("gate_proj", "up_proj", "gate_up_proj", "down_proj")


def site_sort_key(site) -> tuple:
    """Sites in reading order: by layer and group, then module; experts by number, each expert's
    projections as its MLP applies them (gate, up, down)."""
    m = _EXPERT_MODULE.match(site.module)
    if m is None:
        return (layer_sort_key(site.layer, site.group), 0, 0, 0, site.module)
    role = m.group(2)
    rank = _EXPERT_ROLES.index(role) if role in _EXPERT_ROLES else len(_EXPERT_ROLES)
    return (layer_sort_key(site.layer, site.group), 1, int(m.group(1)), rank, role)


def div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


@dataclass
class Sums:
    """The additive sums of one site over the tensors that sit there (a subclass names its fields)."""

    SCALARS: ClassVar[tuple[str, ...]] = ()
    PER_MODEL: ClassVar[tuple[str, ...]] = ()
    PER_PAIR: ClassVar[tuple[str, ...]] = ()
    INTS: ClassVar[tuple[str, ...]] = ()  # array fields that count (int64), the others sum (float64)
    NAMES: ClassVar[str] = "tensors"  # the list field naming what was summed

    layer: int | None
    group: str
    module: str
    n_models: int

    def __post_init__(self):
        n = self.n_models
        for k in self.PER_MODEL + self.PER_PAIR:
            if getattr(self, k) is None:
                shape = (n, n) if k in self.PER_PAIR else n
                setattr(self, k, np.zeros(shape, dtype=np.int64 if k in self.INTS else np.float64))

    @property
    def key(self) -> tuple[int | None, str, str]:
        return (self.layer, self.group, self.module)

    def add(self, other: Sums) -> None:
        getattr(self, self.NAMES).extend(getattr(other, self.NAMES))
        for k in self.SCALARS:
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for k in self.PER_MODEL + self.PER_PAIR:
            getattr(self, k).__iadd__(getattr(other, k))

    def to_dict(self) -> dict:
        d = {
            "layer": self.layer,
            "group": self.group,
            "module": self.module,
            self.NAMES: list(getattr(self, self.NAMES)),
        }
        d.update({k: getattr(self, k) for k in self.SCALARS})
        d.update({k: getattr(self, k).tolist() for k in self.PER_MODEL + self.PER_PAIR})
        return d

    @classmethod
    def from_dict(cls, d: dict, n_models: int):
        s = cls(d["layer"], d["group"], d["module"], n_models, **{cls.NAMES: list(d[cls.NAMES])})
        for k in cls.SCALARS:
            setattr(s, k, type(getattr(s, k))(d[k]))
        for k in cls.PER_MODEL + cls.PER_PAIR:
            a = np.asarray(d[k], dtype=getattr(s, k).dtype)
            if a.shape != getattr(s, k).shape:
                raise ValueError(f"site {k}: shape {a.shape}")
            setattr(s, k, a)
        return s


class Aggregation:
    """The metrics of a set of sites: their sums added into one `total`."""

    SUMS: ClassVar[type[Sums]] = Sums

    def __init__(self, sites: Iterable[Sums], n_models: int):
        self.total = self.SUMS(None, "", "", n_models)
        for s in sites:
            self.total.add(s)


class SiteSet:
    """A pass's sites and their groupings, mixed into its result (which has `models` and `sites` and sets
    AGGREGATE)."""

    AGGREGATE: ClassVar[type[Aggregation]] = Aggregation
    models: list[str]
    sites: list

    @property
    def n(self) -> int:
        return len(self.models)

    def cell_keys(self) -> list[tuple[int | None, str]]:
        return sorted({(s.layer, s.group) for s in self.sites}, key=lambda k: layer_sort_key(*k))

    def layers(self) -> list[int]:
        return sorted({s.layer for s in self.sites if s.layer is not None})

    def cell(self, layer: int | None, group: str):
        return self.row_cell(layer, group)

    def module_cell(self, layer: int | None, module: str):
        return self.row_cell(layer, None, module=module)

    def row_cell(self, layer: int | None, group: str | None, *, module: str | None = None, column_group=None):
        """One heatmap row (group None: every group of the layer), optionally one module or one group."""

        def keep(s) -> bool:
            return (
                s.layer == layer
                and (group is None or s.group == group)
                and (module is None or s.module == module)
                and (column_group is None or s.group == column_group)
            )

        return self.AGGREGATE(filter(keep, self.sites), self.n)

    def whole(self):
        return self.AGGREGATE(self.sites, self.n)
