"""Per-tensor resolution: which inputs, layers and parameter values produce each output tensor.

Both plan forms are first normalized to slices of sources (a `models:` plan is one slice over all
layers); `resolve` answers for one tensor name (what the TUI shows), `jobs.tensor_jobs` walks every
output tensor of opened checkpoints (what the executor runs). Both take a tensor's parameters from
`params_at`: every parameter of the method, complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mergescope.io.errors import InputError
from mergescope.io.naming import BLOCK_RE, site_of
from mergescope.merge.methods.base import BaseUse
from mergescope.merge.plan.settings import evaluate_setting, gradient_position


@dataclass
class Resolved:
    """All parameters of one output tensor (what the TUI shows and the executor passes)."""

    tensor_name: str
    t: float
    layer: int | None
    slice_index: int
    params: dict
    model_params: dict[str, dict]  # model reference -> per-model params (non-base inputs)
    base: str | None


# ---------------------------------------------------------------------- layer-name templates
def layer_split(name: str) -> tuple[str, int, str] | None:
    """'model.layers.7.mlp.up_proj.weight' -> ('model.layers.', 7, '.mlp.up_proj.weight')."""
    m = BLOCK_RE.search(name)
    if not m:
        return None
    return name[: m.start(1)], int(m.group(1)), name[m.end(1) :]


def with_layer(name: str, layer: int) -> str:
    """The same tensor name in another block ('model.layers.7.x' -> 'model.layers.{layer}.x')."""
    parts = layer_split(name)
    if parts is None:
        return name
    return f"{parts[0]}{layer}{parts[2]}"


def is_pre(name: str) -> bool:
    """A tensor before the blocks (embeddings), taken from the first slice; the others from the last."""
    s = site_of(name)
    return s.group == "embed" or s.module == "embed_norm"


# ---------------------------------------------------------------------- the inputs, as slices
def base_is_input(method) -> bool:
    """mergekit treats the base as a plain input for methods that ignore the base (linear, passthrough)."""
    return method.base is BaseUse.INPUT


def model_inputs(plan) -> list[tuple[str, str, dict | None]]:
    """The inputs of a `models:` plan as (key path, reference, parameters): the listed models, and a
    base_model that is not listed appended as one more input (as mergekit does)."""
    kp = plan.key_prefix
    entries = [(f"{kp}models[{i}]", m.model, m.parameters) for i, m in enumerate(plan.models)]
    if plan.base_model and plan.base_model not in [m.model for m in plan.models]:
        entries.append(("base_model", plan.base_model, None))
    return entries


@dataclass
class _NSource:
    model: str
    start: int
    end: int
    parameters: dict | None
    path: str  # key path for messages


@dataclass
class _NSlice:
    index: int
    sources: list[_NSource]
    parameters: dict | None
    base: str | None  # base reference when the base is an input treated as base
    path: str

    @property
    def length(self) -> int:
        return self.sources[0].end - self.sources[0].start

    def source(self, ref: str) -> _NSource:
        return next(s for s in self.sources if s.model == ref)


def normalized(plan, method, checkpoints: Mapping | None = None, num_layers: int | None = None) -> list[_NSlice]:
    """The plan as slices of sources; a `models:` plan is one slice over all layers of every input."""
    kp = plan.key_prefix
    if plan.slices is not None:
        out = []
        for i, s in enumerate(plan.slices):
            srcs = [
                _NSource(
                    src.model, src.layer_range[0], src.layer_range[1], src.parameters, f"{kp}slices[{i}].sources[{j}]"
                )
                for j, src in enumerate(s.sources)
            ]
            refs = [x.model for x in srcs]
            sb = slice_base(plan, s)
            base = sb if (sb in refs and not base_is_input(method)) else None
            out.append(_NSlice(i, srcs, s.parameters, base, f"{kp}slices[{i}]"))
        return out
    srcs = []
    counts = {}
    for path, ref, params in model_inputs(plan):
        n = num_layers if num_layers is not None else plan.layers_of(ref, checkpoints)
        counts[ref] = n
        srcs.append(_NSource(ref, 0, n, params, path))
    if len(set(counts.values())) > 1:
        plan.fail(
            f"{kp}models",
            "the models have different numbers of layers ("
            + ", ".join(f"{r}: {n}" for r, n in counts.items())
            + "); use `slices:` with explicit layer_range values to merge them",
        )
    base = plan.base_model if (plan.base_model and not base_is_input(method)) else None
    return [_NSlice(0, srcs, None, base, f"{kp}models")]


def slice_base(plan, s) -> str | None:
    """A slice's base model: its own `base_model`, else the plan's."""
    return s.base_model or plan.base_model


def shared_settings(plan) -> list[tuple[dict | None, str]]:
    """The settings above a slice, highest precedence first, with their key paths: a module's own
    `parameters` (in a `modules:` plan), then the top-level ones."""
    own = [(plan.module_parameters, f"{plan.key_prefix}parameters")] if plan.module_name is not None else []
    return [*own, (plan.parameters, "parameters")]


# ---------------------------------------------------------------------- parameter resolution
def params_at(plan, method, sl: _NSlice, out_name: str, in_names: Mapping[str, str], t: float) -> tuple[dict, dict]:
    """(global params, {model reference: per-model params}) of one tensor, complete: the value the plan's
    settings give (scopes, gradients, filters), else the method's default (`MergeMethod.complete`)."""
    shared_chain = [(sl.parameters, f"{sl.path}.parameters"), *shared_settings(plan)]
    given = {
        spec.name: _resolve_one(plan, spec, shared_chain, out_name, t, None)
        for spec in method.params
        if not spec.per_model
    }
    params = method.complete_globals(given)
    model_params = {}
    for src in sl.sources:
        if src.model == sl.base:
            continue
        own = [(s.parameters, f"{s.path}.parameters") for s in sl.sources if s.model == src.model]
        chain = own + shared_chain
        name = in_names.get(src.model, out_name)
        given = {spec.name: _resolve_one(plan, spec, chain, name, t, src) for spec in method.params if spec.per_model}
        model_params[src.model] = method.complete_model(given)
    return params, model_params


def _resolve_one(plan, spec, chain, tensor_name, t, src):
    """The value of the first scope whose setting applies to the tensor (None when none does)."""
    for settings, path in chain:
        if settings is not None and spec.name in settings:
            v = evaluate_setting(settings[spec.name], tensor_name, t, spec, f"{path}.{spec.name}", plan.where)
            if v is not None:
                return v
    if spec.required:
        who = f"{src.path} ({src.model})" if src is not None else "parameters"
        plan.fail(
            who,
            f"no `{spec.name}` applies to tensor {tensor_name} (its filters match nothing and no "
            f"top-level default is set); add a catch-all `- value: ...` entry or a top-level `{spec.name}`",
        )
    return None


def resolve(plan, tensor_name: str, *, num_layers: int | None = None, checkpoints: Mapping | None = None) -> Resolved:
    """Every parameter of one output tensor: global params + per-model params, defaults filled in.

    Needs the layer count for `models:` plans (taken from `num_layers`, the checkpoints, or the
    base's config.json)."""
    method = plan.method()
    slices = normalized(plan, method, checkpoints, num_layers)
    parts = layer_split(tensor_name)
    if parts is None:
        sl = slices[0] if is_pre(tensor_name) else slices[-1]
        t, layer = 0.0, None
        in_names = {s.model: tensor_name for s in sl.sources}
    else:
        layer = parts[1]
        offset = 0
        for sl in slices:
            if layer < offset + sl.length:
                break
            offset += sl.length
        else:
            raise InputError(
                f"{plan.where}{tensor_name}: layer {layer} is beyond the {offset} output layers of this plan"
            )
        idx = layer - offset
        t = gradient_position(idx, sl.length)
        in_names = {s.model: with_layer(tensor_name, s.start + idx) for s in sl.sources}
    params, model_params = params_at(plan, method, sl, tensor_name, in_names, t)
    return Resolved(tensor_name, t, layer, sl.index, params, model_params, sl.base)
