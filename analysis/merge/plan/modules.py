"""`modules:` plans (mergekit's multi-module configs): each module merged as a plan of its own.

A vision-language or encoder-decoder checkpoint holds stacks with their own layer numbering; mergekit
lets a config give each stack its own `models:` or `slices:` and `parameters:`. Here every module
becomes a view of the plan (its inputs; its parameters between the slice's and the top-level ones, as
mergekit's precedence) run by the ordinary resolution code on that module's tensors only. Tensors of
modules the plan does not list are not written, as in mergekit; the pre-merge checks warn about them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from mergescope.io.errors import InputError
from mergescope.io.model_parts import DEFAULT, layer_count_from_config, module_of, rest_module, split
from mergescope.io.naming import layer_count


def views(plan) -> list:
    """One plan per module, in the order written ([] for plans without `modules:`)."""
    if plan.modules is None:
        return []
    out = []
    for name, m in plan.modules.items():
        v = plan.with_inputs(models=m.models, slices=m.slices)
        prefix = "" if m.implied else f"modules.{name}."  # implied: key paths as the user wrote them
        v.module_name, v.module_parameters, v.key_prefix = name, m.parameters, prefix
        out.append(v)
    return out


class ModuleCheckpoint:
    """The tensors of one module of a checkpoint; everything else (reads, config) is the checkpoint's."""

    def __init__(self, ck, module: str, names: list[str]):
        self._ck = ck
        self.module = module
        self._names = list(names)
        self._set = set(self._names)

    def names(self) -> list[str]:
        return list(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._set

    def __len__(self) -> int:
        return len(self._names)

    @property
    def num_layers(self) -> int | None:
        if self.module == DEFAULT:
            return self._ck.num_layers
        return layer_count_from_config(self._ck.config or {}, self.module) or layer_count(self._names) or None

    def __getattr__(self, key):
        return getattr(self._ck, key)


def parts_of(ck, listed) -> dict[str, list[str]]:
    """{module: tensor names} of one checkpoint; a plan that lists only `default` takes it whole."""
    if list(listed) == [DEFAULT]:
        return {DEFAULT: ck.names()}
    return split(ck.names())


def _sub(plan, view, cks: Mapping, split_cache: dict | None = None) -> dict:
    """The view's checkpoints restricted to its module (`split_cache`: {ref: parts} shared across views)."""
    name = view.module_name
    cache = {} if split_cache is None else split_cache
    out = {}
    for ref in view.referenced_models():
        if ref not in cache:
            cache[ref] = parts_of(cks[ref], plan.modules)
        parts = cache[ref]
        if name not in parts:
            plan.fail(  # (never for implied modules: they are the donor's)
                f"modules.{name}",
                f"{ref} has no tensors of a module {name!r}; its modules: {', '.join(parts)} "
                "(rename the key to one of them)",
            )
        out[ref] = ModuleCheckpoint(cks[ref], name, parts[name])
    return out


def tensor_jobs(plan, cks: Mapping) -> Iterator:
    """Every module's jobs, module after module (headers only)."""
    from mergescope.merge.plan import jobs

    split_cache: dict = {}  # each checkpoint's names split once, not once per module
    for view in views(plan):
        yield from jobs.tensor_jobs(view, _sub(plan, view, cks, split_cache))


def implied(plan, cks: Mapping):
    """A plan without `modules:` on a multi-module checkpoint, as mergekit runs it: a `models:` plan
    merges every module with the same models (each module its own gradient positions); `slices:`
    count one stack's layers, so they need `modules:`. None for single-module checkpoints."""
    donor = plan.config_donor()
    found = split(cks[donor].names())
    if len(found) < 2:
        return None
    if plan.slices is not None:
        plan.fail(
            "slices",
            f"{donor} holds several modules ({', '.join(found)}), each with its own layer numbering; "
            "put the slices under `modules: {NAME: {slices: [...]}}`",
        )
    return _as_modules(plan, found)


def implied_for(plan, tensor_name: str):
    """For one tensor of a `models:` plan: the one-module plan of its stack when its name places it in
    a module of a multi-module model (vision tower, projector, ...), else None."""
    from mergescope.io.model_parts import matched

    name = matched(tensor_name)
    if plan.models is None or name is None:
        return None
    return _as_modules(plan, [name])


def _as_modules(plan, names):
    """The `models:` plan as a `modules:` plan giving each of `names` the same models."""
    from mergescope.merge.plan.parse import ModuleDef

    return plan.with_inputs(modules={name: ModuleDef(models=plan.models, implied=True) for name in names})


def resolve(plan, tensor_name: str, *, num_layers: int | None = None, checkpoints: Mapping | None = None):
    """One tensor's parameters, in the module it belongs to (by its name)."""
    from mergescope.merge.plan import resolve as res

    name = module_of(tensor_name, plan.modules)
    view = next((v for v in views(plan) if v.module_name == name), None)
    if view is None:
        raise InputError(
            f"{plan.where}modules: tensor {tensor_name} belongs to the module {name!r}, which the plan does not "
            f"list (its tensors are not written); add `{name}:` under `modules:`"
        )
    sub = _sub(plan, view, checkpoints) if checkpoints else None
    return res.resolve(view, tensor_name, num_layers=num_layers if name == DEFAULT else None, checkpoints=sub)


def num_layers(plan, checkpoints: Mapping | None = None) -> int:
    """Output layers of the main module (the text decoder / decoder / whole model) or the first one."""
    vs = views(plan)
    main = rest_module(plan.modules)
    view = next((v for v in vs if v.module_name == main), vs[0])
    return view.num_layers(_sub(plan, view, checkpoints) if checkpoints else None)


def unlisted(plan, cks: Mapping) -> dict[str, int]:
    """{module: tensor count} of the donor's modules the plan leaves out (mergekit does not write them)."""
    if plan.modules is None:
        return {}
    donor = cks[plan.config_donor()]
    return {m: len(n) for m, n in parts_of(donor, plan.modules).items() if m not in plan.modules}


def set_layer_counts(plan, cfg: dict) -> None:
    """The output config.json's layer count of each module merged from `slices:`."""
    from mergescope.io.model_parts import set_layer_count

    for view in views(plan):
        if view.slices is not None:
            set_layer_count(cfg, view.module_name, view.num_layers())
