"""Parameter values: scalar coercion, gradients, filter lists, and the checks of a setting's shape.

A setting is what a plan writes for one parameter: a scalar, a gradient `[v0, ..., vK-1]`, a
`{filter, value}` mapping or a list of them. The rules here are mergekit 0.1.5's
(`evaluate_setting` + pydantic's lax validators), kept in one place so that parsing, validation,
resolution and the per-group tables all read a setting the same way.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from typing import Any

from mergescope.io.dtypes import PLAN_ALIASES, PLAN_DTYPES, plan_dtype
from mergescope.io.errors import InputError
from mergescope.merge.methods.base import ParamValueError as _CoerceError

COND_KEYS = ("filter", "value")


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """'did you mean `x`?' for the closest of `options`, or ''."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else ""


def fmt_path(path: str) -> str:
    """A key path as messages show it."""
    return path or "(top level)"


def is_scalar(v) -> bool:
    return isinstance(v, (bool, int, float, str))


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def coerce_value(value, spec) -> Any:
    """Validate one scalar against a ParamSpec the way mergekit's pydantic validators do (lax mode): its
    kind (`ParamSpec.coerce`), a finite number, within the spec's range."""
    out = spec.coerce(value)
    if is_number(out):
        if spec.kind == "float" and not math.isfinite(out):
            raise _CoerceError(f"must be a finite number, got {out}")
        ex = getattr(spec, "exclusive", False)
        if spec.min is not None and (out <= spec.min if ex else out < spec.min):
            raise _CoerceError(f"must be {'>' if ex else '>='} {spec.min}, got {out}")
        if spec.max is not None and (out >= spec.max if ex else out > spec.max):
            raise _CoerceError(f"must be {'<' if ex else '<='} {spec.max}, got {out}{_likely(out, spec)}")
    return out


def _likely(value: float, spec) -> str:
    """For a fraction in [0, 1] written without its decimal point (1.7 for 0.17, 20 for 0.2): the hint."""
    if spec.min != 0 or spec.max != 1 or value <= 1:
        return ""
    guess = value / 10 ** math.ceil(math.log10(value))
    guess = guess if guess < 1 else guess / 10
    return f"; did you mean {guess:g}?"


def check_dtype(v, key: str, fail):
    """A plan's `dtype:` / `out_dtype:` value as written (None when absent), refused unless it names
    one of PLAN_DTYPES, with the canonical name of an alias as the hint."""
    if v is not None and (not isinstance(v, str) or plan_dtype(v) is None):
        alias = PLAN_ALIASES.get(str(v).lower().replace("torch.", ""))
        near = did_you_mean(str(v), PLAN_DTYPES)
        hint = f"did you mean `{alias}`? " if alias else (near + " " if near else "")
        fail(key, f"unknown dtype {v!r}; {hint}use one of {', '.join(PLAN_DTYPES)}")
    return v


def torch_dtype(name: str):
    """The torch dtype a plan's `dtype:` / `out_dtype:` names (InputError for other names; imports torch)."""
    from mergescope.io import dtypes

    n = plan_dtype(name)
    if n is None:
        raise InputError(f"unknown dtype {name!r}; use one of {', '.join(PLAN_DTYPES)}")
    return dtypes.torch_dtype(n)


# ---------------------------------------------------------------------- gradients and filter lists
def gradient_position(idx: int, n: int) -> float:
    """mergekit's gradient position of the idx-th layer of a slice of n layers: idx/(n-1), 1 when n == 1."""
    return idx / (n - 1) if n > 1 else 1


def interpolate(values: Sequence, t: float):
    """mergekit's gradient: linear interpolation over evenly spaced points at position t in [0, 1]."""
    if not all(is_number(v) for v in values):
        return values[int(t * (len(values) - 1))]
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * values[i0] + frac * values[i1]


def is_catch_all(flt) -> bool:
    """A filter entry without a filter (or with `*`) applies to every tensor."""
    return flt is None or flt == "*"


def matching_filter(entries: Sequence[dict], tensor_name: str) -> tuple[int, dict] | None:
    """The first filter entry that applies to `tensor_name` (its filter absent, `*`, or a substring of
    the name), with its index; None when none does."""
    for i, cond in enumerate(entries):
        f = cond.get("filter")
        if is_catch_all(f) or (tensor_name and f in tensor_name):
            return i, cond
    return None


def evaluate_setting(setting, tensor_name: str, t: float, spec, path: str = "", where: str = ""):
    """Resolve one parameter setting (scalar / gradient / filter list) for one tensor at position t.

    Returns None when a filter list has no matching entry (the next scope is consulted)."""

    def fail(msg):
        raise InputError(f"{where}{path}: {msg}")

    if isinstance(setting, dict):
        setting = [setting]
    if is_scalar(setting):
        try:
            return coerce_value(setting, spec)
        except _CoerceError as exc:
            fail(f"`{spec.name}` {exc}")
    if isinstance(setting, list):
        if not setting:
            return None
        if all(is_scalar(e) for e in setting):
            try:
                values = [coerce_value(e, spec) for e in setting]
            except _CoerceError as exc:
                fail(f"`{spec.name}` {exc}")
            result = interpolate(values, t)
            try:
                return coerce_value(result, spec)
            except _CoerceError as exc:
                fail(f"gradient gives {result} at t={t:g} for {tensor_name}, but `{spec.name}` {exc}")
        hit = matching_filter(setting, tensor_name)
        if hit is None:
            return None
        i, cond = hit
        return evaluate_setting(cond["value"], tensor_name, t, spec, f"{path}[{i}].value", where)
    fail(f"unexpected value {setting!r}")


# ---------------------------------------------------------------------- checks of a setting
def check_keys(d: dict, allowed: Sequence[str], path: str, fail) -> None:
    """Refuse keys outside `allowed`, with a did-you-mean."""
    for k in d:
        if k not in allowed:
            hint = did_you_mean(str(k), allowed)
            fail(f"{path}.{k}", f"unknown key; {hint + ' ' if hint else ''}valid keys here: {', '.join(allowed)}")


def check_setting_shape(setting, path: str, fail) -> None:
    """A value is a scalar, a gradient (list of scalars), a {filter, value} mapping or a list of them."""
    if is_scalar(setting):
        return
    if setting is None:
        fail(path, "has no value; give a number, a gradient list, or a filter list (or remove the key)")
    if isinstance(setting, dict):
        _check_cond(setting, path, fail)
        return
    if isinstance(setting, list):
        if not setting:
            fail(path, "is an empty list; give a value, a gradient [start, ..., end] or a filter list")
        if all(is_scalar(e) for e in setting):
            return
        if all(isinstance(e, dict) for e in setting):
            for i, e in enumerate(setting):
                _check_cond(e, f"{path}[{i}]", fail)
            return
        bad = next(i for i, e in enumerate(setting) if not is_scalar(e))
        fail(
            f"{path}[{bad}]",
            "mixes a filter entry or nested list into a gradient; a list holds either plain values "
            "(a gradient) or `{filter: ..., value: ...}` entries",
        )
    fail(path, f"unexpected value {setting!r}; give a number, a gradient list, or a filter list")


def _check_cond(d: dict, path: str, fail) -> None:
    check_keys(d, COND_KEYS, path, fail)
    if "value" not in d or d["value"] is None:
        fail(f"{path}.value", "missing; each filter entry needs `value:` (a number or a gradient list)")
    f = d.get("filter")
    if f is not None and not isinstance(f, str):
        fail(f"{path}.filter", f"expected a substring of tensor names (e.g. self_attn), got {f!r}")
    v = d["value"]
    if isinstance(v, dict) or (isinstance(v, list) and not all(is_scalar(e) for e in v)):
        fail(f"{path}.value", "a filter's value is a number or a gradient list, not another filter")
    if isinstance(v, list) and not v:
        fail(f"{path}.value", "is an empty list; give a number or a gradient")


def check_setting_values(setting, spec, path: str, fail) -> None:
    """Every scalar in a setting must be a valid value for the parameter."""

    def one(v, p):
        try:
            coerce_value(v, spec)
        except _CoerceError as exc:
            fail(p, f"`{spec.name}` {exc}")

    if is_scalar(setting):
        one(setting, path)
    elif isinstance(setting, dict):
        check_setting_values(setting["value"], spec, f"{path}.value", fail)
    elif isinstance(setting, list):
        for i, e in enumerate(setting):
            if isinstance(e, dict):
                check_setting_values(e["value"], spec, f"{path}[{i}].value", fail)
            else:
                one(e, f"{path}[{i}]")
