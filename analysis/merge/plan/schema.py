"""The `Plan` object: mergekit's config schema parsed strictly, dumped back, and validated per method.

`from_dict` checks structure only (keys, types, value shapes), so a plan can be built and edited
without a method registry or any file on disk; `validate` adds what depends on the method (parameter
names, scopes, values, model counts, the base) and, when asked, on the checkpoints. Opening models and
resolving tensors are delegated to `refs` and `resolve`, which see the plan only through this object.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from mergescope.io.bounded import MAX_PLAN_BYTES, YamlTooBig, load_yaml, read_limited
from mergescope.io.dtypes import PLAN_DTYPES, plan_dtype
from mergescope.io.errors import InputError
from mergescope.merge.methods.base import BaseUse
from mergescope.merge.plan import checks, jobs, modules, refs, relocate, resolve
from mergescope.merge.plan.parse import (  # noqa: F401  (re-exported)
    MODEL_KEYS,
    MODULE_KEYS,
    SLICE_KEYS,
    SOURCE_KEYS,
    TOP_KEYS,
    ModelEntry,
    ModuleDef,
    OutputSlice,
    SliceSource,
    inputs_dict,
    parse,
    with_params,
)
from mergescope.merge.plan.settings import (
    did_you_mean,
    fmt_path,
    is_number,
    torch_dtype,
)
from mergescope.merge.plan.tokenizer_spec import TokenizerSpec


class _FlowDumper(yaml.SafeDumper):
    """Lists of numbers in flow style ([0.1, 0.5]), like mergekit's ConfigYamlDumper."""


def _represent_list(dumper, data):
    flow = bool(data) and all(is_number(e) for e in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_FlowDumper.add_representer(list, _represent_list)
_FlowDumper.add_representer(tuple, _represent_list)


class Plan:
    """One merge, as mergekit's config schema. Build with `load`, `from_dict` or the constructor."""

    def __init__(
        self,
        merge_method: str,
        *,
        base_model: str | None = None,
        models: list[ModelEntry] | None = None,
        slices: list[OutputSlice] | None = None,
        modules: dict[str, ModuleDef] | None = None,
        parameters: dict | None = None,
        dtype: str | None = None,
        out_dtype: str | None = None,
        tokenizer_source: str | None = None,
        tokenizer: TokenizerSpec | None = None,
        chat_template: str | None = None,
        source: str | None = None,
        ignored: list[tuple[str, str]] | None = None,
    ):
        self.merge_method = merge_method
        self.base_model = base_model
        self.models = models
        self.slices = slices
        self.modules = modules
        self.parameters = parameters
        self.dtype = dtype
        self.out_dtype = out_dtype
        self.tokenizer_source = tokenizer_source
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.source = source  # file the plan came from (for messages and relative paths)
        self.ignored = list(ignored or [])  # (key path, why): keys accepted and not used, as mergekit
        self._layer_cache: dict[str, int] = {}
        # set on the per-module views of a `modules:` plan (see `module_views`)
        self.module_name: str | None = None
        self.module_parameters: dict | None = None
        self.key_prefix = ""  # key path of this view's inputs ('modules.NAME.')

    # ------------------------------------------------------------------ construction / YAML
    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        p = Path(path)
        try:
            text = read_limited(p, MAX_PLAN_BYTES, "plan").decode("utf-8")
        except FileNotFoundError:
            raise InputError(f"{path}: no such plan file; check the path") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(
                f"{path}: cannot read the plan ({getattr(exc, 'strerror', None) or exc}); check the file"
            ) from None
        return cls.from_yaml(text, source=str(path))

    @classmethod
    def from_yaml(cls, text: str, source: str | None = None) -> Plan:
        where = source or "plan"
        try:
            data = load_yaml(text)
        except YamlTooBig as exc:
            raise InputError(f"{where}: refused: {exc}; a plan lists models and parameters, fix the file") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise InputError(f"{where}: not valid YAML{at} ({problem}); fix the syntax") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, d: Any, source: str | None = None) -> Plan:
        """Parse and check the structure (keys, types, value shapes). Method-aware checks: `validate`."""
        return cls(**parse(d, source), source=source)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model is not None:
            d["base_model"] = self.base_model
        d.update(inputs_dict(self.models, self.slices))
        if self.modules is not None:
            d["modules"] = {
                name: with_params(inputs_dict(m.models, m.slices), m.parameters) for name, m in self.modules.items()
            }
        if self.parameters is not None:
            d["parameters"] = copy.deepcopy(self.parameters)
        for k in ("dtype", "out_dtype", "tokenizer_source"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        if self.tokenizer is not None:
            d["tokenizer"] = self.tokenizer.to_dict()
        if self.chat_template is not None:
            d["chat_template"] = self.chat_template
        return d

    def to_yaml(self, at: str | os.PathLike | None = None) -> str:
        """The plan as YAML; `at`: the file it is written to, whose model references are rewritten to
        resolve from there (relocate.py: relative to its folder when under it, else absolute)."""
        d = self.to_dict() if at is None else relocate.portable_dict(self, at)
        text = yaml.dump(
            d, Dumper=_FlowDumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120
        )
        note = self.extension_note()
        return f"# {note}\n{text}" if note else text

    def extension_note(self) -> str | None:
        """Why mergekit cannot run this plan (its method is a mergescope extension), or None."""
        from mergescope.merge.methods import REGISTRY

        m = REGISTRY.get(self.merge_method)
        if m is None or not m.extension:
            return None
        return (
            f"merge_method {m.name} is a mergescope extension, not a mergekit 0.1.5 method: "
            "run this plan with `mergescope merge` (mergekit-yaml refuses it)"
        )

    def dump(self, path: str | os.PathLike) -> None:
        """Write the plan file at `path`, its model references resolving from there."""
        Path(path).write_text(self.to_yaml(at=path), encoding="utf-8")

    def with_inputs(self, *, models=None, slices=None, modules=None) -> Plan:
        """This plan's method, base, parameters and output settings over other inputs (the objects are
        shared, not copied): the per-module plans of a `modules:` plan are made this way."""
        return Plan(
            self.merge_method,
            base_model=self.base_model,
            models=models,
            slices=slices,
            modules=modules,
            parameters=self.parameters,
            dtype=self.dtype,
            out_dtype=self.out_dtype,
            tokenizer_source=self.tokenizer_source,
            tokenizer=self.tokenizer,
            chat_template=self.chat_template,
            source=self.source,
        )

    def copy(self) -> Plan:
        return Plan.from_dict(self.to_dict(), source=self.source)

    def __eq__(self, other) -> bool:
        return isinstance(other, Plan) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Plan({self.merge_method!r}, base={self.base_model!r}, inputs={self.input_models()!r})"

    # ------------------------------------------------------------------ structure
    @property
    def where(self) -> str:
        """The message prefix naming the plan file ('' for plans built in memory)."""
        return f"{self.source}: " if self.source else ""

    def fail(self, path: str, msg: str) -> NoReturn:
        """Raise the InputError `FILE: KEY PATH: msg`."""
        raise InputError(f"{self.where}{fmt_path(path)}: {msg}")

    def method(self):
        """The registry's MergeMethod for `merge_method` (InputError with did-you-mean otherwise)."""
        from mergescope.merge import methods

        get = getattr(methods, "get_method", None)
        reg = getattr(methods, "REGISTRY", None)
        if get is None and reg is None:
            self.fail("merge_method", "no merge methods are available (analysis.methods has no registry)")
        if reg is not None and self.merge_method in reg:
            return reg[self.merge_method]
        try:
            if get is not None:
                return get(self.merge_method)
        except InputError as exc:
            self.fail("merge_method", str(exc))
        hint = did_you_mean(self.merge_method, list(reg or ()))
        self.fail(
            "merge_method",
            f"unknown method {self.merge_method!r}; {hint + ' ' if hint else ''}"
            f"available: {', '.join(sorted(reg or ()))}",
        )

    def referenced_models(self) -> list[str]:
        """Every model reference, base first, in order of first appearance."""
        found: list[str] = []
        if self.base_model:
            found.append(self.base_model)
        parts = [(self.models, self.slices)] + [(m.models, m.slices) for m in (self.modules or {}).values()]
        for models, slices in parts:
            for m in models or []:
                found.append(m.model)
            for s in slices or []:
                if s.base_model:
                    found.append(s.base_model)
                found.extend(src.model for src in s.sources)
        return list(dict.fromkeys(found))

    def all_slices(self) -> list[OutputSlice]:
        """The slices of the plan and of all its modules."""
        return [*(self.slices or []), *(s for m in (self.modules or {}).values() for s in m.slices or [])]

    def input_models(self) -> list[str]:
        """The non-base models, in plan order."""
        bases = {self.base_model, *(s.base_model for s in self.all_slices())}
        return [r for r in self.referenced_models() if r not in bases]

    def module_views(self) -> list[Plan]:
        """A `modules:` plan as one plan per module (its inputs, its parameters above the top-level
        ones, key paths under `modules.NAME.`), in the order written; [] for other plans."""
        return modules.views(self)

    def validate(self, open_models: bool = False, check_paths: bool = True) -> None:
        """Method-aware checks before any tensor is read: parameters (names, scopes, values), method
        name, model counts, base, required parameters, and (`check_paths`) that model paths exist.
        With `open_models`, also checkpoint headers, layer ranges, missing tensors, shapes and every
        tensor's parameters (reads headers only, never tensor data)."""
        method = self.method()
        checks.check_parameters(self, method)
        for key in ("dtype", "out_dtype"):
            v = getattr(self, key)
            if v is not None and plan_dtype(v) is None:
                self.fail(key, f"unknown dtype {v!r}; use one of {', '.join(PLAN_DTYPES)}")
        if (
            method.base is BaseUse.REQUIRED
            and not self.base_model
            and not (self.all_slices() and all(s.base_model for s in self.all_slices()))
        ):
            self.fail(
                "base_model",
                f"missing: {method.name} merges task vectors relative to a base model; add `base_model: PATH`",
            )
        for view in self.module_views() or [self]:
            checks.check_inputs(view, method)
            checks.check_required(view, method)
        if check_paths or open_models:
            self.check_paths()
        if open_models:
            cks = self.open_checkpoints()
            try:
                for _ in self.tensor_jobs(cks):
                    pass
            finally:
                refs.close_all(cks)

    def unused_settings(self) -> list[tuple[str, str]]:
        """(key path, why) of every key the plan sets that the merge does not use (checks.py)."""
        return checks.unused_settings(self)

    # ------------------------------------------------------------------ models on disk (refs)
    def model_path(self, ref: str) -> Path:
        """Local path of a model reference (as given, else relative to the plan file's directory)."""
        return refs.model_path(self, ref)

    def ref_paths(self, ref: str) -> tuple[Path, Path | None]:
        """(model path, adapter path or None) of a reference; `BASE+ADAPTER` is split."""
        return refs.ref_paths(self, ref)

    def path_refs(self) -> list[str]:
        """Every reference that names files: the models, and tokenizer_source when it names a model."""
        return refs.path_refs(self)

    def check_paths(self) -> None:
        refs.check_paths(self)

    def open_ref(self, ref: str, path: Path | None = None):
        """Open one reference's checkpoint (headers only), errors naming its key path."""
        return refs.open_ref(self, ref, path)

    def open_checkpoints(self) -> dict:
        """{model reference: Checkpoint} for every referenced model (headers only; LoRA as base+delta)."""
        return refs.open_checkpoints(self)

    def num_layers(self, checkpoints: Mapping | None = None) -> int:
        """Number of output layers: the sum of slice lengths, or the models' layer count."""
        return refs.num_layers(self, checkpoints)

    def layers_of(self, ref: str, checkpoints: Mapping | None = None) -> int:
        """Layer count of one referenced model (cached per plan)."""
        return refs.layers_of(self, ref, checkpoints, self._layer_cache)

    # ------------------------------------------------------------------ per tensor (resolve)
    def resolve(
        self, tensor_name: str, *, num_layers: int | None = None, checkpoints: Mapping | None = None
    ) -> resolve.Resolved:
        """Every parameter of one output tensor: global params + per-model params, defaults filled in.

        Needs the layer count for `models:` plans (taken from `num_layers`, the checkpoints, or the
        base's config.json)."""
        if self.modules is not None:
            return modules.resolve(self, tensor_name, num_layers=num_layers, checkpoints=checkpoints)
        own = modules.implied_for(self, tensor_name)
        if own is not None:
            return modules.resolve(own, tensor_name, checkpoints=checkpoints)
        return resolve.resolve(self, tensor_name, num_layers=num_layers, checkpoints=checkpoints)

    def tensor_jobs(self, checkpoints, models: Sequence | None = None) -> Iterator[jobs.TensorJob]:
        """One job per output tensor, in output order (embeddings, layers, final norm/head).

        `checkpoints`: {model reference: Checkpoint} (from `open_checkpoints`), or a base Checkpoint
        with `models` the other checkpoints in `input_models()` order. Reads headers only; raises
        InputError for missing tensors, shape mismatches and unresolvable parameters."""
        cks = jobs.checkpoint_map(self, checkpoints, models)
        if self.modules is not None:
            return modules.tensor_jobs(self, cks)
        implied = modules.implied(self, cks)  # a multi-module checkpoint: module by module, as mergekit
        return modules.tensor_jobs(implied, cks) if implied is not None else jobs.tensor_jobs(self, cks)

    # ------------------------------------------------------------------ output metadata
    def config_donor(self) -> str:
        """The model whose config.json the output gets (mergekit: base_model, else the first model)."""
        return self.base_model or self.referenced_models()[0]

    def tokenizer_donor(self) -> str:
        """The model whose tokenizer files are copied when the plan builds no vocabulary."""
        return self.config_donor()

    def vocab_spec(self) -> TokenizerSpec | None:
        """The vocabulary the output gets (mergekit's BuildTokenizer), or None: copy the donor's files."""
        if self.tokenizer is not None:
            return self.tokenizer
        if self.tokenizer_source is not None:
            return TokenizerSpec(self.tokenizer_source)
        return None

    def compute_dtype(self):
        return torch_dtype(self.dtype) if self.dtype else None
