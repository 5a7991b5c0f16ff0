"""Checks of a plan's inputs that need the method but no file: model counts, the base, required parameters."""

from __future__ import annotations

from collections.abc import Iterator

from mergescope.merge.methods.base import BaseUse
from mergescope.merge.plan import refs
from mergescope.merge.plan.resolve import base_is_input, model_inputs, shared_settings, slice_base
from mergescope.merge.plan.settings import check_setting_values, did_you_mean


def check_inputs(plan, method) -> None:
    """The inputs of each slice, before any file is opened: no duplicates, the base among them when
    the method uses it as the base, and as many models as the method takes."""
    base_input = base_is_input(method)
    kp = plan.key_prefix
    if plan.models is not None:
        groups = [(f"{kp}models", [ref for _, ref, _ in model_inputs(plan)], plan.base_model)]
    else:
        groups = [
            (f"{kp}slices[{i}].sources", [src.model for src in s.sources], slice_base(plan, s))
            for i, s in enumerate(plan.slices)
        ]
    for path, group, base in groups:
        _check_distinct(plan, path, group, None if base_input else base)
        if base and not base_input and base not in group:
            plan.fail(
                path,
                f"base_model {base!r} is not among the sources; add a source `- model: {base}` with the same layer_range",
            )
        if method.base is BaseUse.REQUIRED and not base:
            plan.fail(
                path, f"this slice has no base model; {method.name} needs one: set `base_model` here or at the top"
            )
        n = len([r for r in group if base_input or r != base])
        lo, hi = method.min_models, method.max_models
        what = "models besides the base" if method.base is not BaseUse.INPUT else "input models"
        if n < lo or (hi is not None and n > hi):
            need = f"exactly {lo}" if hi == lo else (f"{lo} to {hi}" if hi is not None else f"at least {lo}")
            extra = ""
            if method.base is BaseUse.INPUT and plan.base_model and plan.models is not None:
                extra = " (mergekit merges base_model as one more input for this method; remove base_model if it should not be one)"
            plan.fail(path, f"{method.name} takes {need} {what}, got {n}{extra}")


def _check_distinct(plan, path: str, group: list[str], base: str | None) -> None:
    """No model twice in one slice, however spelled (paths compared resolved, files by identity); a
    model that is the base (for methods where the base is not an input) must be written as the base."""
    seen: dict = {}
    base_id = refs.identity(plan, base) if base else None
    for r in group:
        k = refs.identity(plan, r)
        if k in seen:
            first = seen[k]
            how = "is listed twice" if first == r else f"is the same model as {first!r} under another spelling"
            plan.fail(path, f"{r!r} {how}; each model may appear once per slice")
        seen[k] = r
        if base and r != base and k == base_id:
            plan.fail(path, f"{r!r} is base_model {base!r} under another spelling; write it as {base!r}")


def model_param_chains(plan, base_input: bool) -> Iterator[tuple[str, str, list]]:
    """(key path, model ref, [settings in precedence order]) for every input that gets per-model params:
    the source's own parameters, then the slice's, then the module's and the top-level ones."""
    kp = plan.key_prefix
    above = [settings for settings, _ in shared_settings(plan)]
    if plan.models is not None:
        for path, ref, p in model_inputs(plan):
            if base_input or ref != plan.base_model:
                yield path, ref, [p, *above]
    else:
        for i, s in enumerate(plan.slices):
            for j, src in enumerate(s.sources):
                if base_input or src.model != slice_base(plan, s):
                    yield f"{kp}slices[{i}].sources[{j}]", src.model, [src.parameters, s.parameters, *above]


def check_required(plan, method) -> None:
    """Every required parameter is set somewhere: per-model ones along each input's precedence chain,
    global ones at the top level or in a slice."""
    base_input = base_is_input(method)
    for spec in method.params:
        if not spec.required:
            continue
        if spec.per_model:
            for path, ref, chain in model_param_chains(plan, base_input):
                if not any(c and spec.name in c for c in chain):
                    plan.fail(
                        path,
                        f"no `{spec.name}` for {ref!r}; {method.name} needs it: add `{spec.name}: ...` "
                        f"to this model's parameters or to the top-level parameters",
                    )
        else:
            chains = [settings for settings, _ in shared_settings(plan)] + [s.parameters for s in plan.slices or []]
            if not any(c and spec.name in c for c in chains):
                plan.fail(
                    "parameters",
                    f"no `{spec.name}`; {method.name} needs it: add `{spec.name}: ...` to the top-level parameters",
                )


def param_sites(plan) -> Iterator[tuple[str, dict, str]]:
    """(key path, params dict, scope) for every parameters block; scope is 'model' or 'shared'."""
    kp = plan.key_prefix
    if plan.parameters is not None and plan.module_name is None:
        yield "parameters", plan.parameters, "shared"
    if plan.module_parameters is not None:
        yield f"{kp}parameters", plan.module_parameters, "shared"
    for i, m in enumerate(plan.models or []):
        if m.parameters is not None:
            yield f"{kp}models[{i}].parameters", m.parameters, "model"
    for i, s in enumerate(plan.slices or []):
        if s.parameters is not None:
            yield f"{kp}slices[{i}].parameters", s.parameters, "shared"
        for j, src in enumerate(s.sources):
            if src.parameters is not None:
                yield f"{kp}slices[{i}].sources[{j}].parameters", src.parameters, "model"
    for view in plan.module_views():
        yield from param_sites(view)


def check_parameters(plan, method) -> None:
    """Every parameters block: known names (with a did-you-mean), scopes and values."""
    names = [p.name for p in method.params]
    known = known_parameters()
    for path, params, scope in param_sites(plan):
        for pname, setting in params.items():
            spec = method.param(pname)
            if spec is None and pname in known:
                continue  # another method's parameter: ignored, as mergekit (see `unused_settings`)
            if spec is None:
                hint = did_you_mean(pname, names) or did_you_mean(pname, sorted(known))
                plan.fail(
                    f"{path}.{pname}",
                    f"unknown parameter for {method.name}; {hint + ' ' if hint else ''}"
                    f"{method.name} takes: {', '.join(names) or 'no parameters'}",
                )
            if scope == "model" and not spec.per_model:
                continue  # mergekit ignores a global parameter in a model's parameters
            check_setting_values(setting, spec, f"{path}.{pname}", plan.fail)


def unused_settings(plan) -> list[tuple[str, str]]:
    """(key path, why) of every key the plan sets that the merge does not use (mergekit ignores
    them too): another method's parameters, a global parameter in a model's parameters, and keys
    mergekit accepts but never reads. The pre-merge checks report them as warnings."""
    method = plan.method()
    names = ", ".join(p.name for p in method.params) or "no parameters"
    out = list(plan.ignored)
    for path, params, scope in param_sites(plan):
        for pname in params:
            spec = method.param(pname)
            if spec is None:
                out.append((f"{path}.{pname}", f"`{pname}` is ignored by {method.name} (it takes: {names})"))
            elif scope == "model" and not spec.per_model:
                out.append(
                    (
                        f"{path}.{pname}",
                        f"`{pname}` is a global parameter of {method.name}, ignored in a model's parameters "
                        "(as mergekit); move it to the top-level `parameters:`",
                    )
                )
    return out


def known_parameters() -> set[str]:
    """Every parameter name some mergekit method takes (mergekit's vocabulary of parameters; the
    extensions' own names stay errors elsewhere)."""
    from mergescope.merge.methods import REGISTRY

    return {p.name for m in REGISTRY.values() if not m.extension for p in m.params}
