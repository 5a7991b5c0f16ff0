"""Per-tensor resolution: which inputs, layers and parameter values produce each output tensor.

Both plan forms are first normalized to slices of sources (a `models:` plan is one slice over all
layers); `resolve` answers for one tensor name (what the TUI shows), `tensor_jobs` walks every
output tensor of opened checkpoints (what the executor runs), reading headers only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mergescope.io.errors import InputError
from mergescope.io.naming import BLOCK_RE, site_of
from mergescope.merge.methods.base import BaseUse
from mergescope.merge.plan.settings import evaluate_setting, gradient_position, torch_dtype


@dataclass(frozen=True)
class TensorInput:
    model: str  # model reference as written in the plan
    name: str  # tensor name in that model


@dataclass
class TensorJob:
    """Everything needed to produce one output tensor."""

    name: str  # output tensor name
    layer: int | None  # output block index (None for embeddings / final norm / head)
    t: float  # gradient position
    slice_index: int
    base: TensorInput | None  # the base input (None when the method takes no base)
    inputs: list[TensorInput]  # the other inputs, in plan order
    params: dict  # global parameters, resolved
    model_params: list[dict]  # per-model parameters, aligned with `inputs`
    shape: tuple[int, ...] = ()
    out_dtype: Any = None  # torch.dtype
    is_float: bool = True
    nbytes: int = 0
    vocab: Any = None  # vocab.VocabPlan when this tensor's rows are tokens re-indexed to the output vocabulary

    @property
    def all_inputs(self) -> list[TensorInput]:
        return ([self.base] if self.base else []) + list(self.inputs)


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


class _LayerIndex:
    """Per checkpoint: block index -> (prefix, suffix) templates in name order, and non-block names."""

    def __init__(self, ck):
        self.layers: dict[int, list[tuple[str, str]]] = {}
        self.globals: list[str] = []
        self.embed = None
        for name in ck.names():
            parts = layer_split(name)
            if parts is None:
                self.globals.append(name)
                if self.embed is None and site_of(name).module == "embed_tokens":
                    self.embed = name
            else:
                self.layers.setdefault(parts[1], []).append((parts[0], parts[2]))

    def templates(self, layer: int) -> list[tuple[str, str]]:
        return self.layers.get(layer, [])


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
def _resolve_at(plan, method, sl: _NSlice, out_name: str, in_names: Mapping[str, str], t: float) -> tuple[dict, dict]:
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
    params, model_params = _resolve_at(plan, method, sl, tensor_name, in_names, t)
    return Resolved(tensor_name, t, layer, sl.index, params, model_params, sl.base)


# ---------------------------------------------------------------------- tensor jobs
def tensor_jobs(plan, checkpoints, models: Sequence | None = None) -> Iterator[TensorJob]:
    """One job per output tensor, in output order (embeddings, layers, final norm/head).

    `checkpoints`: {model reference: Checkpoint} (from `open_checkpoints`), or a base Checkpoint
    with `models` the other checkpoints in `input_models()` order. Reads headers only; raises
    InputError for missing tensors, shape mismatches and unresolvable parameters."""
    cks = checkpoint_map(plan, checkpoints, models)
    method = plan.method()
    slices = normalized(plan, method, cks)
    for sl in slices:
        for src in sl.sources:
            n = plan.layers_of(src.model, cks)
            if src.end > n:
                plan.fail(
                    f"{src.path}.layer_range",
                    f"[{src.start}, {src.end}] is out of bounds: {src.model} has "
                    f"{n} layers (0..{n - 1}); end is exclusive, at most {n}",
                )
    index = {ref: _LayerIndex(ck) for ref, ck in cks.items()}
    from mergescope.merge import vocab

    vplan = vocab.build(plan, cks)  # reads tokenizer files only
    yield from _global_jobs(plan, method, slices[0], cks, index, pre=True, vplan=vplan)
    out_layer = 0
    for sl in slices:
        ref0 = sl.base if sl.base else sl.sources[0].model
        s0 = sl.source(ref0)
        for idx in range(sl.length):
            t = gradient_position(idx, sl.length)
            for pre, suf in index[ref0].templates(s0.start + idx):
                out_name = f"{pre}{out_layer}{suf}"
                in_names = {s.model: f"{pre}{s.start + idx}{suf}" for s in sl.sources}
                yield _job(plan, method, sl, cks, out_name, in_names, t, out_layer)
            out_layer += 1
    yield from _global_jobs(plan, method, slices[-1], cks, index, pre=False, vplan=vplan)


def checkpoint_map(plan, checkpoints, models) -> dict:
    if isinstance(checkpoints, Mapping):
        cks = dict(checkpoints)
    else:
        refs = plan.input_models()
        models = list(models or [])
        if len(models) != len(refs):
            raise ValueError(f"tensor_jobs: expected {len(refs)} model checkpoints ({refs}), got {len(models)}")
        cks = dict(zip(refs, models))
        if plan.base_model:
            cks[plan.base_model] = checkpoints
    missing = [r for r in plan.referenced_models() if r not in cks]
    if missing:
        raise ValueError(f"tensor_jobs: no checkpoint for {missing}")
    return cks


def _global_jobs(plan, method, sl: _NSlice, cks, index, pre: bool, vplan=None):
    ref0 = sl.base if sl.base else sl.sources[0].model
    names = [n for n in index[ref0].globals if is_pre(n) == pre]
    if not pre:  # mergekit's order: final norm, then the head
        names.sort(key=lambda n: {"norm": 0, "head": 2}.get(site_of(n).group, 1))
    if not pre:  # lm_head is written when any input has it (mergekit: optional, tied to embed_tokens)
        for s in sl.sources:
            for n in index[s.model].globals:
                if n not in names and site_of(n).module == "lm_head" and not is_pre(n):
                    names.append(n)
    for name in names:
        in_names = {}
        for s in sl.sources:
            if name in cks[s.model]:
                in_names[s.model] = name
            elif site_of(name).module == "lm_head" and index[s.model].embed is not None:
                in_names[s.model] = index[s.model].embed  # tied embeddings
            else:
                plan.fail(
                    s.path,
                    f"{s.model} has no tensor {name} (the {'base' if ref0 == plan.base_model else 'first model'} "
                    f"{ref0} has it); the models do not share an architecture",
                )
        # parameters are resolved against the nominal name (mergekit: the weight's own name)
        from mergescope.io.vocabulary import is_vocab_tensor

        job = _job(
            plan,
            method,
            sl,
            cks,
            name,
            in_names,
            0.0,
            None,
            param_names={s.model: name for s in sl.sources},
            vplan=vplan if vplan is not None and is_vocab_tensor(name) else None,
        )
        yield job


def _job(
    plan,
    method,
    sl: _NSlice,
    cks,
    out_name: str,
    in_names: dict,
    t: float,
    layer: int | None,
    param_names: dict | None = None,
    vplan=None,
) -> TensorJob:
    import torch

    infos = {}
    for s in sl.sources:
        n = in_names[s.model]
        if n not in cks[s.model]:
            plan.fail(
                s.path,
                f"{s.model} has no tensor {n} (needed for output {out_name}); check the layer_range or the model",
            )
        infos[s.model] = cks[s.model].info(n)
    shapes = {tuple(i.shape) if vplan is None else tuple(i.shape[1:]) for i in infos.values()}
    if len(shapes) > 1:
        order = sorted(infos, key=lambda r: r != plan.base_model)  # base first
        listing = ", ".join(f"{r}: {list(infos[r].shape)}" for r in order)
        from mergescope.io.vocabulary import is_vocab_tensor

        if is_vocab_tensor(out_name) and len({tuple(i.shape[1:]) for i in infos.values()}) == 1:
            plan.fail(
                sl.path,
                f"tensor {out_name} has different shapes ({listing}): the vocabularies differ (token rows); "
                "set `tokenizer_source: union` (or `base`, or a model) to align them by token",
            )
        plan.fail(
            sl.path,
            f"tensor {out_name} has different shapes ({listing}); these models cannot be merged "
            f"tensor by tensor (different architecture or vocabulary; run `mergescope analyze`)",
        )
    params, model_params = _resolve_at(plan, method, sl, out_name, param_names or in_names, t)
    if method.check is not None:  # constraints across parameters (e.g. della's density ± epsilon)
        for ref, mp in model_params.items():
            problem = method.check(params, mp)
            if problem:
                src = next(s for s in sl.sources if s.model == ref)
                plan.fail(f"{src.path}.parameters", f"{problem} (tensor {out_name}); change the parameters")
    dtypes = [i.dtype for i in infos.values()]
    is_float = all(d.is_floating_point for d in dtypes)
    if is_float:
        want = plan.out_dtype or plan.dtype
        if want:
            out_dtype = torch_dtype(want)
        else:
            out_dtype = dtypes[0]
            for d in dtypes[1:]:
                out_dtype = torch.promote_types(out_dtype, d)
    else:
        out_dtype = dtypes[0]
    shape = tuple(next(iter(infos.values())).shape)
    if vplan is not None:
        shape = (vplan.size, *shape[1:])
    numel = 1
    for s in shape:
        numel *= s
    base = TensorInput(sl.base, in_names[sl.base]) if sl.base else None
    inputs = [TensorInput(s.model, in_names[s.model]) for s in sl.sources if s.model != sl.base]
    return TensorJob(
        out_name,
        layer,
        t,
        sl.index,
        base,
        inputs,
        params,
        [model_params[i.model] for i in inputs],
        shape,
        out_dtype,
        is_float,
        numel * torch.empty((), dtype=out_dtype).element_size(),
        vplan,
    )
