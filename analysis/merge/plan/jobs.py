"""Tensor jobs: every output tensor of a plan over opened checkpoints, with its inputs, its parameters
(complete, from `resolve`), its shape and dtype, reading headers only (what the executor runs)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mergescope.io.naming import site_of
from mergescope.merge.plan.resolve import _NSlice, is_pre, layer_split, normalized, params_at
from mergescope.merge.plan.settings import gradient_position, torch_dtype


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
    params, model_params = params_at(plan, method, sl, out_name, param_names or in_names, t)
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
