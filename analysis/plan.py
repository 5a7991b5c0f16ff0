"""A merge plan: mergekit's YAML config schema, validated strictly, and resolved per tensor.

A plan file is a valid mergekit 0.1.x config (DESIGN §6) and means the same thing to both tools:

- `models: [{model, parameters}]` is one slice over all layers of every model; with a `base_model`
  that is not listed, the base is appended as one more input (as mergekit does).
- `slices: [{sources: [{model, layer_range: [start, end], parameters}], parameters}]` stacks output
  layers slice after slice; all sources of a slice have the same number of layers.
- Parameter values are scalars, gradients or filter lists, resolved exactly as mergekit 0.1.5's
  `evaluate_setting` + `resolve_parameters`:
    * gradient `[v0, ..., vK-1]` at position `t`: `s = t*(K-1); i0 = int(s); i1 = min(K-1, i0+1);
      f = s - i0; value = (1-f)*v[i0] + f*v[i1]` (non-numeric lists pick `v[int(t*(K-1))]`);
    * `t = idx / (n-1)` for the idx-th layer of a slice of n layers (`t = 1` when n == 1), counted
      per slice; tensors outside the blocks (embeddings, final norm, lm_head) always get `t = 0`,
      embeddings with the first slice's sources and parameters, the rest with the last slice's;
    * filter list `[{filter: s, value: v}, ...]`: the first entry whose filter is absent, `*`, or a
      substring of the tensor name wins, and its value may itself be a gradient (not another filter
      list); no match means "not set here";
    * precedence, highest first: the source's own `parameters` (per-model parameters only), the
      slice's `parameters`, the top-level `parameters`, the method's default. Global parameters
      never come from a model's `parameters` (mergekit ignores them there; we refuse them).
      Per-model parameters are matched against the *input* tensor name (the source layer), global
      ones against the output tensor name.

Unlike mergekit we refuse unknown keys, misspelled parameters, and anything we would not run the
same way (`modules:`, `tokenizer:`, `chat_template`, slice `base_model`/`residual_weight`,
`tokenizer_source: union`). Every error is an `InputError` naming the file and the key path.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError
from .naming import _BLOCK_RE, site_of

# dtype names mergekit accepts (common.dtype_from_name), "torch." prefix allowed.
DTYPES = ("bfloat16", "float16", "float32", "float64")
_DTYPE_ALIASES = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float": "float32",
    "fp64": "float64",
    "double": "float64",
}

TOP_KEYS = ("merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype", "tokenizer_source")
_UNSUPPORTED_TOP = {
    "modules": "per-module configs (multimodal models) are not supported by mergescope; use `models:` or `slices:`",
    "tokenizer": "`tokenizer:` (vocabulary surgery) is not supported by mergescope; use `tokenizer_source: base` or a model path",
    "chat_template": "`chat_template` is not supported by mergescope; drop it (the donor's tokenizer files are copied as they are)",
}
MODEL_KEYS = ("model", "parameters")
SLICE_KEYS = ("sources", "parameters")
SOURCE_KEYS = ("model", "layer_range", "parameters")
_UNSUPPORTED_SLICE = {
    "base_model": "a per-slice `base_model` is not supported by mergescope; set the top-level base_model",
    "residual_weight": "`residual_weight` is not supported by mergescope; remove it",
}
COND_KEYS = ("filter", "value")


def _suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else ""


def _fmt_path(path: str) -> str:
    return path or "(top level)"


def _is_scalar(v) -> bool:
    return isinstance(v, (bool, int, float, str))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_BOOL_STRINGS = {
    "true": True,
    "false": False,
    "yes": True,
    "no": False,
    "on": True,
    "off": False,
    "1": True,
    "0": False,
    "t": True,
    "f": False,
    "y": True,
    "n": False,
}


class _CoerceError(ValueError):
    pass


def coerce_value(value, spec) -> Any:
    """Validate one scalar against a ParamSpec the way mergekit's pydantic validators do (lax mode)."""
    kind = spec.kind
    if kind == "float":
        if isinstance(value, bool):
            raise _CoerceError(f"expects a number, got {value!r}")
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                raise _CoerceError(f"expects a number, got {value!r}") from None
        else:
            raise _CoerceError(f"expects a number, got {value!r}")
        if math.isnan(out):
            raise _CoerceError("is NaN")
    elif kind == "int":
        if isinstance(value, bool):
            raise _CoerceError(f"expects an integer, got {value!r}")
        if isinstance(value, int):
            out = value
        elif isinstance(value, float) and value.is_integer():
            out = int(value)
        elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            out = int(value)
        else:
            raise _CoerceError(f"expects an integer, got {value!r}")
    elif kind == "bool":
        if isinstance(value, bool):
            out = value
        elif isinstance(value, int) and value in (0, 1):
            out = bool(value)
        elif isinstance(value, float) and value in (0.0, 1.0):
            out = bool(value)
        elif isinstance(value, str) and value.strip().lower() in _BOOL_STRINGS:
            out = _BOOL_STRINGS[value.strip().lower()]
        else:
            raise _CoerceError(f"expects true or false, got {value!r}")
    elif kind == "str":
        if not isinstance(value, str):
            raise _CoerceError(f"expects a string, got {value!r}")
        out = value
    else:  # unknown kind: accept scalars as they are
        if not _is_scalar(value):
            raise _CoerceError(f"expects a scalar, got {value!r}")
        out = value
    if _is_number(out):
        if spec.min is not None and out < spec.min:
            raise _CoerceError(f"must be >= {spec.min}, got {out}")
        if spec.max is not None and out > spec.max:
            raise _CoerceError(f"must be <= {spec.max}, got {out}")
    return out


def interpolate(values: Sequence, t: float):
    """mergekit's gradient: linear interpolation over evenly spaced points at position t in [0, 1]."""
    if not all(_is_number(v) for v in values):
        return values[int(t * (len(values) - 1))]
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * values[i0] + frac * values[i1]


def evaluate_setting(setting, tensor_name: str, t: float, spec, path: str = "", where: str = ""):
    """Resolve one parameter setting (scalar / gradient / filter list) for one tensor at position t.

    Returns None when a filter list has no matching entry (the next scope is consulted)."""

    def fail(msg):
        raise InputError(f"{where}{path}: {msg}")

    if isinstance(setting, dict):
        setting = [setting]
    if _is_scalar(setting):
        try:
            return coerce_value(setting, spec)
        except _CoerceError as exc:
            fail(f"`{spec.name}` {exc}")
    if isinstance(setting, list):
        if not setting:
            return None
        if all(_is_scalar(e) for e in setting):
            try:
                values = [coerce_value(e, spec) for e in setting]
            except _CoerceError as exc:
                fail(f"`{spec.name}` {exc}")
            result = interpolate(values, t)
            try:
                return coerce_value(result, spec)
            except _CoerceError as exc:
                fail(f"gradient gives {result} at t={t:g} for {tensor_name}, but `{spec.name}` {exc}")
        for i, cond in enumerate(setting):
            f = cond.get("filter")
            if f is None or f == "*" or (tensor_name and f in tensor_name):
                return evaluate_setting(cond["value"], tensor_name, t, spec, f"{path}[{i}].value", where)
        return None
    fail(f"unexpected value {setting!r}")


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

    @property
    def non_base(self) -> list[_NSource]:
        return [s for s in self.sources if s.model != self.base]


class _FlowDumper(yaml.SafeDumper):
    """Lists of numbers in flow style ([0.1, 0.5]), like mergekit's ConfigYamlDumper."""


def _represent_list(dumper, data):
    flow = bool(data) and all(_is_number(e) for e in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_FlowDumper.add_representer(list, _represent_list)
_FlowDumper.add_representer(tuple, _represent_list)


def _layer_split(name: str) -> tuple[str, int, str] | None:
    """'model.layers.7.mlp.up_proj.weight' -> ('model.layers.', 7, '.mlp.up_proj.weight')."""
    m = _BLOCK_RE.search(name)
    if not m:
        return None
    return name[: m.start(1)], int(m.group(1)), name[m.end(1) :]


def with_layer(name: str, layer: int) -> str:
    parts = _layer_split(name)
    if parts is None:
        return name
    return f"{parts[0]}{layer}{parts[2]}"


def _is_pre(name: str) -> bool:
    s = site_of(name)
    return s.group == "embed" or s.module == "embed_norm"


class Plan:
    """One merge, as mergekit's config schema. Build with `load`, `from_dict` or the constructor."""

    def __init__(
        self,
        merge_method: str,
        *,
        base_model: str | None = None,
        models: list[ModelEntry] | None = None,
        slices: list[OutputSlice] | None = None,
        parameters: dict | None = None,
        dtype: str | None = None,
        out_dtype: str | None = None,
        tokenizer_source: str | None = None,
        source: str | None = None,
    ):
        self.merge_method = merge_method
        self.base_model = base_model
        self.models = models
        self.slices = slices
        self.parameters = parameters
        self.dtype = dtype
        self.out_dtype = out_dtype
        self.tokenizer_source = tokenizer_source
        self.source = source  # file the plan came from (for messages and relative paths)
        self._layer_cache: dict[str, int] = {}

    # ------------------------------------------------------------------ construction / YAML
    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        import yaml

        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"{path}: no such plan file; check the path") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(
                f"{path}: cannot read the plan ({getattr(exc, 'strerror', None) or exc}); check the file"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise InputError(f"{path}: not valid YAML{where} ({problem}); fix the syntax") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_yaml(cls, text: str, source: str | None = None) -> Plan:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(
                f"{source or 'plan'}: not valid YAML ({str(exc).splitlines()[0]}); fix the syntax"
            ) from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, d: Any, source: str | None = None) -> Plan:
        """Parse and check the structure (keys, types, value shapes). Method-aware checks: `validate`."""
        where = f"{source}: " if source else ""

        def fail(path, msg):
            raise InputError(f"{where}{_fmt_path(path)}: {msg}")

        if not isinstance(d, dict):
            fail(
                "",
                f"a plan is a YAML mapping with at least `merge_method` and `models` or `slices`, got {type(d).__name__}",
            )
        for k in d:
            if k in _UNSUPPORTED_TOP:
                fail(str(k), _UNSUPPORTED_TOP[k])
            if k not in TOP_KEYS:
                hint = _suggest(str(k), TOP_KEYS)
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
                _check_setting_shape(setting, f"{path}.{name}", fail)
            return copy.deepcopy(v)

        base = ref(d["base_model"], "base_model") if d.get("base_model") is not None else None
        models = slices = None
        has_models, has_slices = d.get("models") is not None, d.get("slices") is not None
        if has_models == has_slices:
            fail("", "give exactly one of `models:` or `slices:`" + (" (both are present)" if has_models else ""))
        if has_models:
            raw = d["models"]
            if not isinstance(raw, list) or not raw:
                fail("models", "expected a non-empty list of `- model: PATH` entries")
            models = []
            for i, m in enumerate(raw):
                p = f"models[{i}]"
                if isinstance(m, str):
                    fail(p, f"write `- model: {m}` (each entry is a mapping with `model` and optional `parameters`)")
                if not isinstance(m, dict):
                    fail(p, f"expected a mapping with `model` and `parameters`, got {m!r}")
                _check_keys(m, MODEL_KEYS, p, fail)
                if "model" not in m:
                    fail(f"{p}.model", "missing; add the model path")
                models.append(ModelEntry(ref(m["model"], f"{p}.model"), params(m.get("parameters"), f"{p}.parameters")))
        else:
            raw = d["slices"]
            if not isinstance(raw, list) or not raw:
                fail("slices", "expected a non-empty list of `- sources: [...]` entries")
            slices = []
            for i, s in enumerate(raw):
                p = f"slices[{i}]"
                if not isinstance(s, dict):
                    fail(p, f"expected a mapping with `sources`, got {s!r}")
                for k in s:
                    if k in _UNSUPPORTED_SLICE:
                        fail(f"{p}.{k}", _UNSUPPORTED_SLICE[k])
                _check_keys(s, SLICE_KEYS, p, fail)
                srcs = s.get("sources")
                if not isinstance(srcs, list) or not srcs:
                    fail(f"{p}.sources", "expected a non-empty list of `- model: PATH, layer_range: [start, end]`")
                sources = []
                for j, src in enumerate(srcs):
                    q = f"{p}.sources[{j}]"
                    if not isinstance(src, dict):
                        fail(q, f"expected a mapping with `model` and `layer_range`, got {src!r}")
                    _check_keys(src, SOURCE_KEYS, q, fail)
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
                    sources.append(
                        SliceSource(
                            ref(src["model"], f"{q}.model"),
                            (int(lr[0]), int(lr[1])),
                            params(src.get("parameters"), f"{q}.parameters"),
                        )
                    )
                lengths = {sr.layer_range[1] - sr.layer_range[0] for sr in sources}
                if len(lengths) > 1:
                    fail(
                        f"{p}.sources",
                        "all sources of a slice must span the same number of layers "
                        f"(got {', '.join(str(list(sr.layer_range)) for sr in sources)}); fix the layer_range values",
                    )
                slices.append(OutputSlice(sources, params(s.get("parameters"), f"{p}.parameters")))
        top_params = params(d.get("parameters"), "parameters")
        dts = {}
        for key in ("dtype", "out_dtype"):
            v = d.get(key)
            if v is not None:
                if not isinstance(v, str) or normalize_dtype(v) is None:
                    alias = _DTYPE_ALIASES.get(str(v).lower().replace("torch.", ""))
                    hint = (
                        f"did you mean `{alias}`? "
                        if alias
                        else (_suggest(str(v), DTYPES) + " " if _suggest(str(v), DTYPES) else "")
                    )
                    fail(key, f"unknown dtype {v!r}; {hint}use one of {', '.join(DTYPES)}")
            dts[key] = v
        tok = d.get("tokenizer_source")
        if tok is not None:
            if tok == "union":
                fail(
                    "tokenizer_source",
                    "`union` builds a new vocabulary, which mergescope does not do; "
                    "use `base` or the path of one of the models",
                )
            tok = ref(tok, "tokenizer_source")
        return cls(
            d["merge_method"],
            base_model=base,
            models=models,
            slices=slices,
            parameters=top_params,
            dtype=dts.get("dtype"),
            out_dtype=dts.get("out_dtype"),
            tokenizer_source=tok,
            source=source,
        )

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model is not None:
            d["base_model"] = self.base_model
        if self.models is not None:
            d["models"] = []
            for m in self.models:
                e: dict[str, Any] = {"model": m.model}
                if m.parameters is not None:
                    e["parameters"] = copy.deepcopy(m.parameters)
                d["models"].append(e)
        if self.slices is not None:
            d["slices"] = []
            for s in self.slices:
                srcs = []
                for src in s.sources:
                    e = {"model": src.model, "layer_range": [int(src.layer_range[0]), int(src.layer_range[1])]}
                    if src.parameters is not None:
                        e["parameters"] = copy.deepcopy(src.parameters)
                    srcs.append(e)
                sd: dict[str, Any] = {"sources": srcs}
                if s.parameters is not None:
                    sd["parameters"] = copy.deepcopy(s.parameters)
                d["slices"].append(sd)
        if self.parameters is not None:
            d["parameters"] = copy.deepcopy(self.parameters)
        for k in ("dtype", "out_dtype", "tokenizer_source"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d

    def to_yaml(self) -> str:
        import yaml

        return yaml.dump(
            self.to_dict(), Dumper=_FlowDumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120
        )

    def dump(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")

    def copy(self) -> Plan:
        return Plan.from_dict(self.to_dict(), source=self.source)

    def __eq__(self, other) -> bool:
        return isinstance(other, Plan) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Plan({self.merge_method!r}, base={self.base_model!r}, inputs={self.input_models()!r})"

    # ------------------------------------------------------------------ structure
    @property
    def _where(self) -> str:
        return f"{self.source}: " if self.source else ""

    def _fail(self, path: str, msg: str):
        raise InputError(f"{self._where}{_fmt_path(path)}: {msg}")

    def method(self):
        """The registry's MergeMethod for `merge_method` (InputError with did-you-mean otherwise)."""
        from . import methods

        get = getattr(methods, "get_method", None)
        reg = getattr(methods, "REGISTRY", None)
        if get is None and reg is None:
            self._fail("merge_method", "no merge methods are available (analysis.methods has no registry)")
        if reg is not None and self.merge_method in reg:
            return reg[self.merge_method]
        try:
            if get is not None:
                return get(self.merge_method)
        except InputError as exc:
            self._fail("merge_method", str(exc))
        hint = _suggest(self.merge_method, list(reg or ()))
        self._fail(
            "merge_method",
            f"unknown method {self.merge_method!r}; {hint + ' ' if hint else ''}"
            f"available: {', '.join(sorted(reg or ()))}",
        )

    def referenced_models(self) -> list[str]:
        """Every model reference, base first, in order of first appearance."""
        refs: list[str] = []
        if self.base_model:
            refs.append(self.base_model)
        for m in self.models or []:
            refs.append(m.model)
        for s in self.slices or []:
            refs.extend(src.model for src in s.sources)
        return list(dict.fromkeys(refs))

    def input_models(self) -> list[str]:
        """The non-base models, in plan order."""
        return [r for r in self.referenced_models() if r != self.base_model]

    def _base_is_input(self, method) -> bool:
        """mergekit treats the base as a plain input for methods that ignore the base (linear, passthrough)."""
        return method.needs_base is False

    def _param_sites(self):
        """(key path, params dict, scope) for every parameters block; scope is 'model' or 'shared'."""
        if self.parameters is not None:
            yield "parameters", self.parameters, "shared"
        for i, m in enumerate(self.models or []):
            if m.parameters is not None:
                yield f"models[{i}].parameters", m.parameters, "model"
        for i, s in enumerate(self.slices or []):
            if s.parameters is not None:
                yield f"slices[{i}].parameters", s.parameters, "shared"
            for j, src in enumerate(s.sources):
                if src.parameters is not None:
                    yield f"slices[{i}].sources[{j}].parameters", src.parameters, "model"

    def validate(self, open_models: bool = False, check_paths: bool = True) -> None:
        """Method-aware checks before any tensor is read: parameters (names, scopes, values), method
        name, model counts, base, required parameters, and (`check_paths`) that model paths exist.
        With `open_models`, also checkpoint headers, layer ranges, missing tensors, shapes and every
        tensor's parameters (reads headers only, never tensor data)."""
        method = self.method()
        names = [p.name for p in method.params]
        for path, params, scope in self._param_sites():
            for pname, setting in params.items():
                spec = method.param(pname)
                if spec is None:
                    hint = _suggest(pname, names)
                    self._fail(
                        f"{path}.{pname}",
                        f"unknown parameter for {method.name}; {hint + ' ' if hint else ''}"
                        f"{method.name} takes: {', '.join(names) or 'no parameters'}",
                    )
                if scope == "model" and not spec.per_model:
                    self._fail(
                        f"{path}.{pname}",
                        f"`{pname}` is a global parameter of {method.name}, not a per-model one; "
                        f"move it to the top-level `parameters:`",
                    )
                _check_setting_values(setting, spec, f"{path}.{pname}", self._fail)
        for key in ("dtype", "out_dtype"):
            v = getattr(self, key)
            if v is not None and normalize_dtype(v) is None:
                self._fail(key, f"unknown dtype {v!r}; use one of {', '.join(DTYPES)}")
        if method.needs_base is True and not self.base_model:
            self._fail(
                "base_model",
                f"missing: {method.name} merges task vectors relative to a base model; add `base_model: PATH`",
            )
        # inputs per slice: counts, duplicates, base presence
        if self.models is not None:
            groups = [
                (
                    "models",
                    [m.model for m in self.models]
                    + (
                        [self.base_model]
                        if self.base_model and self.base_model not in [m.model for m in self.models]
                        else []
                    ),
                )
            ]
        else:
            groups = [(f"slices[{i}].sources", [src.model for src in s.sources]) for i, s in enumerate(self.slices)]
        for path, refs in groups:
            dup = next((r for r in refs if refs.count(r) > 1), None)
            if dup is not None:
                self._fail(path, f"{dup!r} is listed twice; each model may appear once per slice")
            if self.base_model and not self._base_is_input(method) and self.base_model not in refs:
                self._fail(
                    path,
                    f"base_model {self.base_model!r} is not among the sources; add a source "
                    f"`- model: {self.base_model}` with the same layer_range",
                )
            n = len([r for r in refs if self._base_is_input(method) or r != self.base_model])
            lo, hi = method.min_models, method.max_models
            what = "models besides the base" if method.needs_base is not False else "input models"
            if n < lo or (hi is not None and n > hi):
                need = f"exactly {lo}" if hi == lo else (f"{lo} to {hi}" if hi is not None else f"at least {lo}")
                extra = ""
                if method.needs_base is False and self.base_model and self.models is not None:
                    extra = " (mergekit merges base_model as one more input for this method; remove base_model if it should not be one)"
                self._fail(path, f"{method.name} takes {need} {what}, got {n}{extra}")
        # required per-model parameters must be set somewhere for every input
        for spec in method.params:
            if not spec.required:
                continue
            if spec.per_model:
                for path, ref, chain in self._model_chains(method):
                    if not any(c and spec.name in c for c in chain):
                        self._fail(
                            path,
                            f"no `{spec.name}` for {ref!r}; {method.name} needs it: add `{spec.name}: ...` "
                            f"to this model's parameters or to the top-level parameters",
                        )
            else:
                chains = [self.parameters] + [s.parameters for s in self.slices or []]
                if not any(c and spec.name in c for c in chains):
                    self._fail(
                        "parameters",
                        f"no `{spec.name}`; {method.name} needs it: add `{spec.name}: ...` to the top-level parameters",
                    )
        if check_paths or open_models:
            self.check_paths()
        if open_models:
            cks = self.open_checkpoints()
            try:
                for _ in self.tensor_jobs(cks):
                    pass
            finally:
                close_all(cks)

    def _model_chains(self, method):
        """(key path, model ref, [settings in precedence order]) for every input that gets per-model params."""
        top = self.parameters
        if self.models is not None:
            entries = [(f"models[{i}]", m.model, m.parameters) for i, m in enumerate(self.models)]
            if self.base_model and self.base_model not in [m.model for m in self.models]:
                entries.append(("base_model", self.base_model, None))
            for path, ref, p in entries:
                if ref == self.base_model and not self._base_is_input(method):
                    continue
                yield path, ref, [p, top]
        else:
            for i, s in enumerate(self.slices):
                for j, src in enumerate(s.sources):
                    if src.model == self.base_model and not self._base_is_input(method):
                        continue
                    yield f"slices[{i}].sources[{j}]", src.model, [src.parameters, s.parameters, top]

    # ------------------------------------------------------------------ models on disk
    def model_path(self, ref: str) -> Path:
        """Local path of a model reference: as given (relative to the working directory, like mergekit),
        else relative to the plan file's directory."""
        p = Path(ref).expanduser()
        if p.exists() or p.is_absolute() or not self.source:
            return p
        alt = Path(self.source).parent / ref
        return alt if alt.exists() else p

    def _ref_parts(self, ref: str) -> tuple[Path, Path | None]:
        """`BASE+ADAPTER` (mergekit's LoRA syntax) -> (base path, adapter path)."""
        p = self.model_path(ref)
        if not p.exists() and "+" in ref:
            a, b = ref.rsplit("+", 1)
            pa, pb = self.model_path(a), self.model_path(b)
            if pa.exists() and pb.exists():
                return pa, pb
        return p, None

    def _key_of(self, ref: str) -> str:
        if ref == self.base_model:
            return "base_model"
        for i, m in enumerate(self.models or []):
            if m.model == ref:
                return f"models[{i}].model"
        for i, s in enumerate(self.slices or []):
            for j, src in enumerate(s.sources):
                if src.model == ref:
                    return f"slices[{i}].sources[{j}].model"
        if ref == self.tokenizer_source:
            return "tokenizer_source"
        return "model"

    def check_paths(self) -> None:
        refs = self.referenced_models()
        if self.tokenizer_source and self.tokenizer_source != "base":
            refs.append(self.tokenizer_source)
        for ref in refs:
            p, adapter = self._ref_parts(ref)
            if not p.exists():
                hint = ""
                if re.fullmatch(r"[\w.-]+/[\w.-]+", ref) and not ref.startswith("."):
                    hint = " (Hugging Face hub ids are not downloaded: fetch it with `huggingface-cli download` and use the local directory)"
                tried = (
                    f" (also tried {Path(self.source).parent / ref})"
                    if self.source and not Path(ref).is_absolute()
                    else ""
                )
                self._fail(self._key_of(ref), f"{ref}: no such file or directory{tried}{hint}; fix the path")

    def open_checkpoints(self) -> dict:
        """Open every referenced model (headers only). LoRA adapters become base+delta views, on the
        `BASE+ADAPTER` base or else on base_model. Returns {model reference: Checkpoint}."""
        from .checkpoint import LoraCheckpoint, open_checkpoint

        self.check_paths()
        opened: dict[str, Any] = {}
        try:
            base = None
            if self.base_model:
                p, adapter = self._ref_parts(self.base_model)
                base = self._open(open_checkpoint, p, self.base_model)
                if adapter is not None:
                    base = self._open(open_checkpoint, adapter, self.base_model).with_base(base)
                elif isinstance(base, LoraCheckpoint):
                    self._fail(
                        "base_model",
                        f"{self.base_model} is a LoRA adapter; base_model must be a full model "
                        f"(write `BASE_PATH+{self.base_model}` to use the adapted model)",
                    )
                opened[self.base_model] = base
            for ref in self.referenced_models():
                if ref in opened:
                    continue
                p, adapter = self._ref_parts(ref)
                if adapter is not None:
                    ck = self._open(open_checkpoint, adapter, ref)
                    if not isinstance(ck, LoraCheckpoint):
                        self._fail(
                            self._key_of(ref), f"{adapter} is not a LoRA adapter; `A+B` means base A with adapter B"
                        )
                    ck = ck.with_base(self._open(open_checkpoint, p, ref))
                else:
                    ck = self._open(open_checkpoint, p, ref)
                    if isinstance(ck, LoraCheckpoint):
                        if base is None:
                            self._fail(
                                self._key_of(ref),
                                f"{ref} is a LoRA adapter; set base_model (or write "
                                f"`BASE_PATH+{ref}`) so it can be applied",
                            )
                        ck = ck.with_base(base)
                opened[ref] = ck
        except BaseException:
            close_all(opened)
            raise
        return opened

    def _open(self, open_checkpoint, path, ref):
        try:
            return open_checkpoint(path, label=ref)
        except InputError as exc:
            raise InputError(f"{self._where}{self._key_of(ref)}: {exc}") from None

    def num_layers(self, checkpoints: Mapping | None = None) -> int:
        """Number of output layers: the sum of slice lengths, or the models' layer count."""
        if self.slices is not None:
            return sum(s.sources[0].layer_range[1] - s.sources[0].layer_range[0] for s in self.slices)
        refs = [m.model for m in self.models]
        return self._layers_of(refs[0] if not self.base_model else self.base_model, checkpoints)

    def _layers_of(self, ref: str, checkpoints: Mapping | None = None) -> int:
        if checkpoints and ref in checkpoints:
            n = checkpoints[ref].num_layers
            if n:
                return int(n)
        if ref in self._layer_cache:
            return self._layer_cache[ref]
        p, adapter = self._ref_parts(ref)
        cfg_dir = p if p.is_dir() else p.parent
        n = None
        cfg = cfg_dir / "config.json"
        if cfg.is_file():
            try:
                c = json.loads(cfg.read_text())
                n = next(
                    (c[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if isinstance(c.get(k), int)), None
                )
            except (OSError, ValueError):
                n = None
        if n is None:
            from .checkpoint import open_checkpoint
            from .naming import layer_count

            target = p
            if (p / "adapter_config.json").is_file() and self.base_model and ref != self.base_model:
                return self._layers_of(self.base_model, checkpoints)
            ck = self._open(open_checkpoint, target, ref)
            try:
                n = layer_count(ck.names())
            finally:
                ck.close()
        self._layer_cache[ref] = int(n)
        return int(n)

    # ------------------------------------------------------------------ normalized slices
    def _normalized(self, method, checkpoints: Mapping | None = None, num_layers: int | None = None) -> list[_NSlice]:
        if self.slices is not None:
            out = []
            for i, s in enumerate(self.slices):
                srcs = [
                    _NSource(
                        src.model, src.layer_range[0], src.layer_range[1], src.parameters, f"slices[{i}].sources[{j}]"
                    )
                    for j, src in enumerate(s.sources)
                ]
                refs = [x.model for x in srcs]
                base = self.base_model if (self.base_model in refs and not self._base_is_input(method)) else None
                out.append(_NSlice(i, srcs, s.parameters, base, f"slices[{i}]"))
            return out
        entries = [(m.model, m.parameters, f"models[{i}]") for i, m in enumerate(self.models)]
        if self.base_model and self.base_model not in [m.model for m in self.models]:
            entries.append((self.base_model, None, "base_model"))
        srcs = []
        counts = {}
        for ref, params, path in entries:
            n = num_layers if num_layers is not None else self._layers_of(ref, checkpoints)
            counts[ref] = n
            srcs.append(_NSource(ref, 0, n, params, path))
        if len(set(counts.values())) > 1:
            self._fail(
                "models",
                "the models have different numbers of layers ("
                + ", ".join(f"{r}: {n}" for r, n in counts.items())
                + "); use `slices:` with explicit layer_range values to merge them",
            )
        base = self.base_model if (self.base_model and not self._base_is_input(method)) else None
        return [_NSlice(0, srcs, None, base, "models")]

    # ------------------------------------------------------------------ resolution
    def _resolve_at(
        self, method, sl: _NSlice, out_name: str, in_names: Mapping[str, str], t: float
    ) -> tuple[dict, dict]:
        where = self._where
        shared_chain = [(sl.parameters, f"{sl.path}.parameters"), (self.parameters, "parameters")]
        params = {}
        for spec in method.params:
            if spec.per_model:
                continue
            params[spec.name] = self._resolve_one(spec, shared_chain, out_name, t, where, None)
        model_params = {}
        for src in sl.sources:
            if src.model == sl.base:
                continue
            own = [(s.parameters, f"{s.path}.parameters") for s in sl.sources if s.model == src.model]
            chain = own + shared_chain
            name = in_names.get(src.model, out_name)
            model_params[src.model] = {
                spec.name: self._resolve_one(spec, chain, name, t, where, src)
                for spec in method.params
                if spec.per_model
            }
        return params, model_params

    def _resolve_one(self, spec, chain, tensor_name, t, where, src):
        for settings, path in chain:
            if settings is not None and spec.name in settings:
                v = evaluate_setting(settings[spec.name], tensor_name, t, spec, f"{path}.{spec.name}", where)
                if v is not None:
                    return v
        if spec.required:
            who = f"{src.path} ({src.model})" if src is not None else "parameters"
            self._fail(
                who,
                f"no `{spec.name}` applies to tensor {tensor_name} (its filters match nothing and no "
                f"top-level default is set); add a catch-all `- value: ...` entry or a top-level `{spec.name}`",
            )
        return copy.deepcopy(spec.default)

    def resolve(
        self, tensor_name: str, *, num_layers: int | None = None, checkpoints: Mapping | None = None
    ) -> Resolved:
        """Every parameter of one output tensor: global params + per-model params, defaults filled in.

        Needs the layer count for `models:` plans (taken from `num_layers`, the checkpoints, or the
        base's config.json)."""
        method = self.method()
        slices = self._normalized(method, checkpoints, num_layers)
        parts = _layer_split(tensor_name)
        if parts is None:
            sl = slices[0] if _is_pre(tensor_name) else slices[-1]
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
                    f"{self._where}{tensor_name}: layer {layer} is beyond the {offset} output layers of this plan"
                )
            idx = layer - offset
            n = sl.length
            t = idx / (n - 1) if n > 1 else 1
            in_names = {s.model: with_layer(tensor_name, s.start + idx) for s in sl.sources}
        params, model_params = self._resolve_at(method, sl, tensor_name, in_names, t)
        return Resolved(tensor_name, t, layer, sl.index, params, model_params, sl.base)

    # ------------------------------------------------------------------ tensor jobs
    def tensor_jobs(self, checkpoints, models: Sequence | None = None) -> Iterator[TensorJob]:
        """One job per output tensor, in output order (embeddings, layers, final norm/head).

        `checkpoints`: {model reference: Checkpoint} (from `open_checkpoints`), or a base Checkpoint
        with `models` the other checkpoints in `input_models()` order. Reads headers only; raises
        InputError for missing tensors, shape mismatches and unresolvable parameters."""
        cks = self._checkpoint_map(checkpoints, models)
        method = self.method()
        slices = self._normalized(method, cks)
        for sl in slices:
            for src in sl.sources:
                n = self._layers_of(src.model, cks)
                if src.end > n:
                    self._fail(
                        f"{src.path}.layer_range",
                        f"[{src.start}, {src.end}] is out of bounds: {src.model} has "
                        f"{n} layers (0..{n - 1}); end is exclusive, at most {n}",
                    )
        index = {ref: _LayerIndex(ck) for ref, ck in cks.items()}
        yield from self._global_jobs(method, slices[0], cks, index, pre=True)
        out_layer = 0
        for sl in slices:
            ref0 = sl.base if sl.base else sl.sources[0].model
            s0 = sl.source(ref0)
            n = sl.length
            for idx in range(n):
                t = idx / (n - 1) if n > 1 else 1
                for pre, suf in index[ref0].templates(s0.start + idx):
                    out_name = f"{pre}{out_layer}{suf}"
                    in_names = {s.model: f"{pre}{s.start + idx}{suf}" for s in sl.sources}
                    yield self._job(method, sl, cks, out_name, in_names, t, out_layer)
                out_layer += 1
        yield from self._global_jobs(method, slices[-1], cks, index, pre=False)

    def _checkpoint_map(self, checkpoints, models) -> dict:
        if isinstance(checkpoints, Mapping):
            cks = dict(checkpoints)
        else:
            refs = self.input_models()
            models = list(models or [])
            if len(models) != len(refs):
                raise ValueError(f"tensor_jobs: expected {len(refs)} model checkpoints ({refs}), got {len(models)}")
            cks = dict(zip(refs, models))
            if self.base_model:
                cks[self.base_model] = checkpoints
        missing = [r for r in self.referenced_models() if r not in cks]
        if missing:
            raise ValueError(f"tensor_jobs: no checkpoint for {missing}")
        return cks

    def _global_jobs(self, method, sl: _NSlice, cks, index, pre: bool):
        ref0 = sl.base if sl.base else sl.sources[0].model
        names = [n for n in index[ref0].globals if _is_pre(n) == pre]
        if not pre:  # mergekit's order: final norm, then the head
            names.sort(key=lambda n: {"norm": 0, "head": 2}.get(site_of(n).group, 1))
        if not pre:  # lm_head is written when any input has it (mergekit: optional, tied to embed_tokens)
            for s in sl.sources:
                for n in index[s.model].globals:
                    if n not in names and site_of(n).module == "lm_head" and not _is_pre(n):
                        names.append(n)
        for name in names:
            in_names = {}
            for s in sl.sources:
                if name in cks[s.model]:
                    in_names[s.model] = name
                elif site_of(name).module == "lm_head" and index[s.model].embed is not None:
                    in_names[s.model] = index[s.model].embed  # tied embeddings
                else:
                    self._fail(
                        s.path,
                        f"{s.model} has no tensor {name} (the {'base' if ref0 == self.base_model else 'first model'} "
                        f"{ref0} has it); the models do not share an architecture",
                    )
            # parameters are resolved against the nominal name (mergekit: the weight's own name)
            yield self._job(method, sl, cks, name, in_names, 0.0, None, param_names={s.model: name for s in sl.sources})

    def _job(
        self,
        method,
        sl: _NSlice,
        cks,
        out_name: str,
        in_names: dict,
        t: float,
        layer: int | None,
        param_names: dict | None = None,
    ) -> TensorJob:
        import torch

        infos = {}
        for s in sl.sources:
            n = in_names[s.model]
            if n not in cks[s.model]:
                self._fail(
                    s.path,
                    f"{s.model} has no tensor {n} (needed for output {out_name}); check the layer_range or the model",
                )
            infos[s.model] = cks[s.model].info(n)
        shapes = {tuple(i.shape) for i in infos.values()}
        if len(shapes) > 1:
            order = sorted(infos, key=lambda r: r != self.base_model)  # base first
            listing = ", ".join(f"{r}: {list(infos[r].shape)}" for r in order)
            self._fail(
                sl.path,
                f"tensor {out_name} has different shapes ({listing}); these models cannot be merged "
                f"tensor by tensor (different architecture or vocabulary; run `mergescope analyze`)",
            )
        params, model_params = self._resolve_at(method, sl, out_name, param_names or in_names, t)
        dtypes = [i.dtype for i in infos.values()]
        is_float = all(d.is_floating_point for d in dtypes)
        if is_float:
            want = self.out_dtype or self.dtype
            if want:
                out_dtype = torch_dtype(want)
            else:
                out_dtype = dtypes[0]
                for d in dtypes[1:]:
                    out_dtype = torch.promote_types(out_dtype, d)
        else:
            out_dtype = dtypes[0]
        shape = tuple(next(iter(infos.values())).shape)
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
        )

    # ------------------------------------------------------------------ output metadata
    def config_donor(self) -> str:
        """The model whose config.json the output gets (mergekit: base_model, else the first model)."""
        return self.base_model or self.referenced_models()[0]

    def tokenizer_donor(self) -> str:
        if self.tokenizer_source and self.tokenizer_source != "base":
            return self.tokenizer_source
        return self.config_donor()

    def compute_dtype(self):
        return torch_dtype(self.dtype) if self.dtype else None


class _LayerIndex:
    """Per checkpoint: block index -> (prefix, suffix) templates in name order, and non-block names."""

    def __init__(self, ck):
        self.layers: dict[int, list[tuple[str, str]]] = {}
        self.globals: list[str] = []
        self.embed = None
        for name in ck.names():
            parts = _layer_split(name)
            if parts is None:
                self.globals.append(name)
                if self.embed is None and site_of(name).module == "embed_tokens":
                    self.embed = name
            else:
                self.layers.setdefault(parts[1], []).append((parts[0], parts[2]))

    def templates(self, layer: int) -> list[tuple[str, str]]:
        return self.layers.get(layer, [])


def close_all(cks: Mapping) -> None:
    seen = set()
    for ck in cks.values():
        for c in (ck, getattr(ck, "base", None), getattr(ck, "lora", None)):
            if c is not None and id(c) not in seen:
                seen.add(id(c))
                try:
                    c.close()
                except Exception:  # closing is best effort
                    pass


def normalize_dtype(name: str) -> str | None:
    if not isinstance(name, str):
        return None
    n = name[len("torch.") :] if name.startswith("torch.") else name
    return n if n in DTYPES else None


def torch_dtype(name: str):
    import torch

    n = normalize_dtype(name)
    if n is None:
        raise InputError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return getattr(torch, n)


def _check_keys(d: dict, allowed: Sequence[str], path: str, fail) -> None:
    for k in d:
        if k not in allowed:
            hint = _suggest(str(k), allowed)
            fail(f"{path}.{k}", f"unknown key; {hint + ' ' if hint else ''}valid keys here: {', '.join(allowed)}")


def _check_setting_shape(setting, path: str, fail) -> None:
    """A value is a scalar, a gradient (list of scalars), a {filter, value} mapping or a list of them."""
    if _is_scalar(setting):
        return
    if setting is None:
        fail(path, "has no value; give a number, a gradient list, or a filter list (or remove the key)")
    if isinstance(setting, dict):
        _check_cond(setting, path, fail)
        return
    if isinstance(setting, list):
        if not setting:
            fail(path, "is an empty list; give a value, a gradient [start, ..., end] or a filter list")
        if all(_is_scalar(e) for e in setting):
            return
        if all(isinstance(e, dict) for e in setting):
            for i, e in enumerate(setting):
                _check_cond(e, f"{path}[{i}]", fail)
            return
        bad = next(i for i, e in enumerate(setting) if not _is_scalar(e))
        fail(
            f"{path}[{bad}]",
            "mixes a filter entry or nested list into a gradient; a list holds either plain values "
            "(a gradient) or `{filter: ..., value: ...}` entries",
        )
    fail(path, f"unexpected value {setting!r}; give a number, a gradient list, or a filter list")


def _check_cond(d: dict, path: str, fail) -> None:
    _check_keys(d, COND_KEYS, path, fail)
    if "value" not in d or d["value"] is None:
        fail(f"{path}.value", "missing; each filter entry needs `value:` (a number or a gradient list)")
    f = d.get("filter")
    if f is not None and not isinstance(f, str):
        fail(f"{path}.filter", f"expected a substring of tensor names (e.g. self_attn), got {f!r}")
    v = d["value"]
    if isinstance(v, dict) or (isinstance(v, list) and not all(_is_scalar(e) for e in v)):
        fail(f"{path}.value", "a filter's value is a number or a gradient list, not another filter")
    if isinstance(v, list) and not v:
        fail(f"{path}.value", "is an empty list; give a number or a gradient")


def _check_setting_values(setting, spec, path: str, fail) -> None:
    """Every scalar in a setting must be a valid value for the parameter."""

    def one(v, p):
        try:
            coerce_value(v, spec)
        except _CoerceError as exc:
            fail(p, f"`{spec.name}` {exc}")

    if _is_scalar(setting):
        one(setting, path)
    elif isinstance(setting, dict):
        _check_setting_values(setting["value"], spec, f"{path}.value", fail)
    elif isinstance(setting, list):
        for i, e in enumerate(setting):
            if isinstance(e, dict):
                _check_setting_values(e["value"], spec, f"{path}[{i}].value", fail)
            else:
                one(e, f"{path}[{i}]")


# ---------------------------------------------------------------------- per-group ratio tables
# A ratio table maps (group, band) to one value per model: group in embed/attn/mlp/norm/head/other,
# band a half-open block range (start, end) for per-block groups, or None for tensors outside the
# blocks (embed, head, the final norm, and `other` as the catch-all). It is written as mergekit
# filter lists, one per model, in this order (first match wins):
#   embed (None)   embed_tokens / wte / wpe / word_embeddings / tok_embeddings     scalar
#   head (None)    lm_head / embed_out                                              scalar
#   norm (None)    model.norm. / ln_f. / final_layernorm / final_layer_norm / norm_f scalar
#   norm (bands)   layernorm / _norm / ln_                                          per-layer gradient
#   attn (bands)   self_attn / attn / attention                                     per-layer gradient
#   mlp (bands)    mlp / feed_forward                                               per-layer gradient
#   other          catch-all `- value:`                                             scalar
# Non-block tensors get mergekit's t = 0, so they are always written as scalars; block groups are
# written as a list with one value per layer (t*(n-1) lands on each layer's own entry), or as a
# scalar when all bands agree. For a model without per-block "other" tensors this is exact.
GROUP_FILTERS: tuple[tuple[str, bool, tuple[str, ...]], ...] = (
    ("embed", False, ("embed_tokens", "wte", "wpe", "word_embeddings", "tok_embeddings")),
    ("head", False, ("lm_head", "embed_out")),
    ("norm", False, ("model.norm.", "ln_f.", "final_layernorm", "final_layer_norm", "norm_f")),
    ("norm", True, ("layernorm", "_norm", "ln_")),
    ("attn", True, ("self_attn", "attn", "attention")),
    ("mlp", True, ("mlp", "feed_forward")),
)
LLAMA_FILTERS = {
    ("embed", False): ("embed_tokens",),
    ("head", False): ("lm_head",),
    ("norm", False): ("model.norm.",),
    ("norm", True): ("layernorm",),
    ("attn", True): ("self_attn",),
    ("mlp", True): ("mlp",),
}


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


def _slot_of(name: str) -> tuple[str, bool]:
    s = site_of(name)
    banded = _layer_split(name) is not None
    if s.group in ("embed", "head") and not banded:
        return (s.group, False)
    if s.group == "norm" and not banded:
        return ("norm", False)
    if s.group in ("norm", "attn", "mlp") and banded:
        return (s.group, True)
    return ("other", None)


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
    from . import methods as _m

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
        other_vals = table.get(("other", None), [1.0] * n_vals)
    else:
        other_vals = [float(other)] * n_vals if isinstance(other, (int, float)) else [float(v) for v in other]
    slots = _choose_filters(names)

    def setting_for(i: int) -> list:
        entries = []
        for group, banded, filters in slots:
            if not banded:
                if (group, None) not in table:
                    continue
                value: Any = _num(table[(group, None)][i])
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
                per_layer = [_num(x) for x in per_layer]
                value = per_layer[0] if len(set(per_layer)) == 1 else per_layer
            for f in filters:
                entries.append({"filter": f, "value": copy.deepcopy(value)})
        entries.append({"value": _num(other_vals[i])})
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


def _num(v: float) -> float:
    return float(v)


def _verify_filters(plan: Plan, param: str, names: Sequence[str], per_model: bool) -> None:
    """Every tensor must get its own group's value (first matching filter), or the catch-all when the
    table has no entry for its group."""
    setting = plan.models[0].parameters[param] if per_model else plan.parameters[param]
    slot_of_filter = {}
    for group, banded, filters in GROUP_FILTERS:
        for f in filters:
            slot_of_filter.setdefault(f, (group, banded))
    written = {slot_of_filter[e["filter"]] for e in setting if e.get("filter") is not None}
    for name in names:
        want = _slot_of(name)
        if want not in written:
            want = ("other", None)
        hit = next(e for e in setting if e.get("filter") is None or e["filter"] in name)
        got = slot_of_filter[hit["filter"]] if hit.get("filter") is not None else ("other", None)
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
    where = f"{plan.source}: " if plan.source else ""
    if plan.models is None:
        raise InputError(f"{where}slices: a per-group table needs a `models:` plan")
    filter_slot = {}
    for group, banded, filters in GROUP_FILTERS:
        for f in filters:
            filter_slot.setdefault(f, (group, banded))
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
            if f is None or f == "*":
                slot = ("other", False)
            elif f in filter_slot:
                slot = filter_slot[f]
            else:
                raise InputError(
                    f"{where}{path}[{k}].filter: {f!r} is not one of the per-group filters; "
                    f"this plan is not a per-group table"
                )
            if slot in seen_slots and slot != ("other", False):
                continue  # an alternative spelling for the same group (e.g. wte and wpe)
            seen_slots.add(slot)
            group, banded = slot
            if not banded:
                if isinstance(v, list):
                    v = interpolate([float(x) for x in v], 0.0)  # mergekit evaluates these at t = 0
                out.setdefault((group, None), [None] * n_vals)[i] = float(v)
                if slot == ("other", False):
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
    if not isinstance(v, list):
        return [float(v)] * n
    vals = [float(x) for x in v]
    return [float(interpolate(vals, (j / (n - 1)) if n > 1 else 1)) for j in range(n)]


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
