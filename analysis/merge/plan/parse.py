"""Reading a plan's dict: keys, types and value shapes checked, every error naming the key path.

What depends on the method (parameter names, scopes, values, model counts) is `Plan.validate`'s job.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from mergescope.io.errors import InputError
from mergescope.merge.plan.settings import check_dtype, check_keys, check_setting_shape, did_you_mean, fmt_path
from mergescope.merge.plan.tokenizer_spec import check_chat_template, parse_tokenizer

TOP_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "modules",
)
MODULE_KEYS = ("models", "slices", "parameters")
MODEL_KEYS = ("model", "parameters")
SLICE_KEYS = ("sources", "base_model", "parameters", "residual_weight")
SOURCE_KEYS = ("model", "layer_range", "parameters")
# Keys mergekit 0.1.5 accepts and never reads: kept in the plan, reported as ignored.
_IGNORED_SLICE = {"residual_weight": "mergekit 0.1.5 accepts `residual_weight` but never uses it; so does mergescope"}


@dataclass
class ModelEntry:
    model: str
    parameters: dict | None = None


@dataclass
class SliceSource:
    model: str
    layer_range: tuple[int, int]
    parameters: dict | None = None


@dataclass
class OutputSlice:
    sources: list[SliceSource]
    parameters: dict | None = None
    base_model: str | None = None  # this slice's base instead of the plan's (mergekit's per-slice base)
    residual_weight: Any = None  # accepted and unused, as mergekit 0.1.5


@dataclass
class ModuleDef:
    """One module of a multi-module model (`modules: {NAME: ...}`): its own inputs and parameters."""

    models: list[ModelEntry] | None = None
    slices: list[OutputSlice] | None = None
    parameters: dict | None = None
    implied: bool = False  # made from a `models:` plan on a multi-module checkpoint (not written back)


def parse(d: Any, source: str | None = None) -> dict:
    """The Plan constructor's keyword arguments for a plan dict (InputError on the first problem)."""
    where = f"{source}: " if source else ""
    ignored: list[tuple[str, str]] = []  # (key path, why) of keys accepted and not used

    def fail(path, msg):
        raise InputError(f"{where}{fmt_path(path)}: {msg}")

    if not isinstance(d, dict):
        fail(
            "",
            f"a plan is a YAML mapping with at least `merge_method` and `models` or `slices`, got {type(d).__name__}",
        )
    for k in d:
        if k not in TOP_KEYS:
            hint = did_you_mean(str(k), TOP_KEYS)
            fail(str(k), f"unknown key; {hint + ' ' if hint else ''}valid keys: {', '.join(TOP_KEYS)}")
    if "merge_method" not in d or d["merge_method"] in (None, ""):
        fail("merge_method", "missing; add e.g. `merge_method: ties`")
    if not isinstance(d["merge_method"], str):
        fail("merge_method", f"expected a method name, got {d['merge_method']!r}")

    def ref(v, path):
        if isinstance(v, dict):
            fail(
                path,
                "model references as mappings are not supported; write the local path as a string "
                "(for a LoRA adapter: `BASE_PATH+ADAPTER_PATH` or the adapter directory)",
            )
        if not isinstance(v, str) or not v.strip():
            fail(path, f"expected a model path, got {v!r}")
        return v

    def params(v, path):
        if v is None:
            return None
        if not isinstance(v, dict):
            fail(path, f"expected a mapping of parameter names to values, got {type(v).__name__}")
        for name, setting in v.items():
            if not isinstance(name, str):
                fail(f"{path}.{name}", "parameter names are strings")
            check_setting_shape(setting, f"{path}.{name}", fail)
        return copy.deepcopy(v)

    def source_of(src, q):
        if not isinstance(src, dict):
            fail(q, f"expected a mapping with `model` and `layer_range`, got {src!r}")
        check_keys(src, SOURCE_KEYS, q, fail)
        if "model" not in src:
            fail(f"{q}.model", "missing; add the model path")
        lr = src.get("layer_range")
        if lr is None:
            fail(f"{q}.layer_range", "missing; add `layer_range: [start, end]` (end exclusive)")
        if (
            not isinstance(lr, (list, tuple))
            or len(lr) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in lr)
        ):
            fail(f"{q}.layer_range", f"expected two integers [start, end], got {lr!r}")
        if not 0 <= lr[0] < lr[1]:
            fail(
                f"{q}.layer_range",
                f"{list(lr)} is empty or negative; use [start, end] with 0 <= start < end (end exclusive)",
            )
        return SliceSource(
            ref(src["model"], f"{q}.model"),
            (int(lr[0]), int(lr[1])),
            params(src.get("parameters"), f"{q}.parameters"),
        )

    def entries(container, key, path, form):
        raw = container[key]
        if not isinstance(raw, list) or not raw:
            fail(path, f"expected a non-empty list of `{form}` entries")
        return [(f"{path}[{i}]", e) for i, e in enumerate(raw)]

    def models_of(container, path):
        out = []
        for p, m in entries(container, "models", path, "- model: PATH"):
            if isinstance(m, str):
                fail(p, f"write `- model: {m}` (each entry is a mapping with `model` and optional `parameters`)")
            if not isinstance(m, dict):
                fail(p, f"expected a mapping with `model` and `parameters`, got {m!r}")
            check_keys(m, MODEL_KEYS, p, fail)
            if "model" not in m:
                fail(f"{p}.model", "missing; add the model path")
            out.append(ModelEntry(ref(m["model"], f"{p}.model"), params(m.get("parameters"), f"{p}.parameters")))
        return out

    def slices_of(container, path):
        out = []
        for p, s in entries(container, "slices", path, "- sources: [...]"):
            if not isinstance(s, dict):
                fail(p, f"expected a mapping with `sources`, got {s!r}")
            check_keys(s, SLICE_KEYS, p, fail)
            for k in s:
                if k in _IGNORED_SLICE:
                    ignored.append((f"{p}.{k}", _IGNORED_SLICE[k]))
            srcs = s.get("sources")
            if not isinstance(srcs, list) or not srcs:
                fail(f"{p}.sources", "expected a non-empty list of `- model: PATH, layer_range: [start, end]`")
            sources = [source_of(src, f"{p}.sources[{j}]") for j, src in enumerate(srcs)]
            lengths = {sr.layer_range[1] - sr.layer_range[0] for sr in sources}
            if len(lengths) > 1:
                fail(
                    f"{p}.sources",
                    "all sources of a slice must span the same number of layers "
                    f"(got {', '.join(str(list(sr.layer_range)) for sr in sources)}); fix the layer_range values",
                )
            sbase = ref(s["base_model"], f"{p}.base_model") if s.get("base_model") is not None else None
            out.append(
                OutputSlice(sources, params(s.get("parameters"), f"{p}.parameters"), sbase, s.get("residual_weight"))
            )
        return out

    def modules_of(raw):
        if not isinstance(raw, dict) or not raw:
            fail("modules", "expected a mapping of module names (e.g. `text_decoder:`) to `models:` or `slices:`")
        if "default" in raw and len(raw) > 1:
            fail("modules.default", "`default` is the whole model; list it alone or name the modules instead")
        out = {}
        for name, m in raw.items():
            p = f"modules.{name}"
            if not isinstance(name, str) or not name:
                fail("modules", f"module names are strings, got {name!r}")
            if not isinstance(m, dict):
                fail(p, f"expected a mapping with `models:` or `slices:`, got {m!r}")
            check_keys(m, MODULE_KEYS, p, fail)
            has_m, has_s = m.get("models") is not None, m.get("slices") is not None
            if has_m == has_s:
                fail(
                    p,
                    "give exactly one of `models:` or `slices:` for this module"
                    + (" (both are present)" if has_m else ""),
                )
            out[name] = ModuleDef(
                models_of(m, f"{p}.models") if has_m else None,
                slices_of(m, f"{p}.slices") if has_s else None,
                params(m.get("parameters"), f"{p}.parameters"),
            )
        return out

    base = ref(d["base_model"], "base_model") if d.get("base_model") is not None else None
    forms = [k for k in ("models", "slices", "modules") if d.get(k) is not None]
    if len(forms) != 1:
        fail(
            "",
            "give exactly one of `models:`, `slices:` or `modules:`"
            + (f" ({' and '.join(forms)} are present)" if forms else ""),
        )
    models = models_of(d, "models") if forms == ["models"] else None
    slices = slices_of(d, "slices") if forms == ["slices"] else None
    modules = modules_of(d["modules"]) if forms == ["modules"] else None
    top_params = params(d.get("parameters"), "parameters")
    dts = {key: check_dtype(d.get(key), key, fail) for key in ("dtype", "out_dtype")}
    tok = d.get("tokenizer_source")
    if tok is not None and tok not in ("union", "base"):
        tok = ref(tok, "tokenizer_source")
    tokenizer = None
    if d.get("tokenizer") is not None:
        if tok is not None:
            fail("tokenizer", "give either `tokenizer_source` or `tokenizer:` (its `source` says the same), not both")
        tokenizer = parse_tokenizer(d["tokenizer"], fail, ref, check_keys)
    template = check_chat_template(d["chat_template"], fail) if d.get("chat_template") is not None else None
    return dict(
        merge_method=d["merge_method"],
        base_model=base,
        models=models,
        slices=slices,
        modules=modules,
        parameters=top_params,
        dtype=dts.get("dtype"),
        out_dtype=dts.get("out_dtype"),
        tokenizer_source=tok,
        tokenizer=tokenizer,
        chat_template=template,
        ignored=ignored,
    )


def inputs_dict(models, slices) -> dict:
    """The `models:` or `slices:` part of a plan as its YAML writes it (the inverse of the parsing above)."""
    d: dict[str, Any] = {}
    if models is not None:
        d["models"] = [with_params({"model": m.model}, m.parameters) for m in models]
    if slices is not None:
        d["slices"] = []
        for s in slices:
            srcs = [
                with_params(
                    {"model": src.model, "layer_range": [int(src.layer_range[0]), int(src.layer_range[1])]},
                    src.parameters,
                )
                for src in s.sources
            ]
            entry = {"sources": srcs, **({"base_model": s.base_model} if s.base_model else {})}
            if s.residual_weight is not None:
                entry["residual_weight"] = s.residual_weight
            d["slices"].append(with_params(entry, s.parameters))
    return d


def with_params(entry: dict, parameters: dict | None) -> dict:
    if parameters is not None:
        entry["parameters"] = copy.deepcopy(parameters)
    return entry
