"""One owner for method parameters: the plan's resolution hands every method complete, typed parameters;
a method entry completes what a direct caller leaves out the same way; the what-if reads each method's own
coefficients."""

import numpy as np
import pytest
import torch

from mergescope.io.errors import InputError
from mergescope.merge import methods
from mergescope.merge.methods import REGISTRY
from mergescope.merge.methods._util import define
from mergescope.merge.methods.base import BaseUse, Linear, MergeContext, ParamSpec
from mergescope.merge.plan import Plan
from mergescope.merge.whatif import coefficients

KINDS = {"float": float, "int": int, "bool": bool, "str": str}
# the required parameters, written as a plan may write them (an int for a float, a string for a number)
GIVEN = {"weight": 1, "t": "0.25"}


def _plan(method) -> Plan:
    n = max(method.min_models, 2) if method.max_models is None else method.max_models
    params = {s.name: GIVEN[s.name] for s in method.params if s.required and not s.per_model}
    mparams = {s.name: GIVEN[s.name] for s in method.params if s.required and s.per_model}
    models = [{"model": f"m{i}", **({"parameters": dict(mparams)} if mparams else {})} for i in range(n)]
    d = {"merge_method": method.name, "models": models, "parameters": params}
    if method.base is not BaseUse.INPUT:
        d["base_model"] = "base"
    return Plan.from_dict(d)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_resolution_gives_every_parameter_complete_and_typed(name):
    method = REGISTRY[name]
    res = _plan(method).resolve("model.layers.1.mlp.up_proj.weight", num_layers=4)
    assert list(res.params) == [s.name for s in method.params if not s.per_model]
    assert res.model_params and all(
        list(mp) == [s.name for s in method.params if s.per_model] for mp in res.model_params.values()
    )
    for spec in method.params:
        for value in (
            [res.params[spec.name]] if not spec.per_model else [mp[spec.name] for mp in res.model_params.values()]
        ):
            if spec.name in GIVEN:
                assert value == float(GIVEN[spec.name])
            if value is None:
                assert spec.default is None  # passthrough's `scale`: unset means "copy as is"
            else:
                assert type(value) is KINDS[spec.kind], (spec.name, value)
                assert value == (spec.default if spec.name not in GIVEN else value)


def test_direct_calls_complete_and_coerce_like_a_plan():
    base = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    models = [base + 0.1 * torch.randn(6, 5, generator=torch.Generator().manual_seed(i)) for i in (1, 2)]
    ties = REGISTRY["ties"]
    full = [{"weight": 0.5, "density": 1.0}, {"weight": 0.25, "density": 1.0}]
    want = ties.merge(base, models, full, {"normalize": True, "lambda": 1.0, "rescale": False, "int8_mask": False})
    lax = [{"weight": "0.5"}, {}]  # a string read as a number; the missing weight from the global ones
    assert torch.equal(ties.merge(base, models, lax, {"weight": 0.25, "normalize": "yes"}), want)
    with pytest.raises(InputError, match=r"parameter 'weight' for model #2 expects a number, got 'lots' \(tensor w\)"):
        ties.merge(base, models, [{"weight": 1.0}, {"weight": "lots"}], {}, MergeContext("w"))
    with pytest.raises(InputError, match=r"parameter 'normalize' expects true or false"):
        ties.merge(base, models, full, {"normalize": 2})


def test_coerce_is_the_plans_reading():
    f, i, b = ParamSpec("x"), ParamSpec("x", kind="int"), ParamSpec("x", kind="bool")
    assert f.coerce(1) == 1.0 and type(f.coerce(1)) is float and f.coerce(" 2.5 ") == 2.5
    assert i.coerce(3.0) == 3 and type(i.coerce(3.0)) is int and i.coerce("-4") == -4
    assert b.coerce("off") is False and b.coerce(1) is True
    for spec, bad in ((f, True), (f, "x"), (i, 2.5), (b, 2), (ParamSpec("x", kind="str"), 1)):
        with pytest.raises(ValueError):
            spec.coerce(bad)


def test_a_method_is_one_file(monkeypatch):
    """A method declared with `define` gets the preamble (checks, complete parameters, one dtype) and
    its own what-if coefficients, with nothing to add anywhere else."""
    seen = {}

    def kernel(inp):
        seen.update(params=inp.params, model_params=inp.model_params, dtype=inp.dtype)
        return inp.base + inp.params["gain"] * sum(
            inp.values("share")[i] * (m - inp.base) for i, m in enumerate(inp.models)
        )

    method = define(
        "scaled_sum",
        kernel,
        base=BaseUse.REQUIRED,
        linear=Linear.TASK_SUM,
        params=(ParamSpec("gain", 2, "float"), ParamSpec("share", 0.5, "float", per_model=True)),
        coefficients=lambda x: (x.values("share") * x.params["gain"], x.values("share")),
    )
    monkeypatch.setitem(methods.REGISTRY, "scaled_sum", method)
    base, m = torch.zeros(3, dtype=torch.bfloat16), torch.ones(3)
    out = method.merge(base, [m], [{}], {})
    assert seen == {"params": {"gain": 2.0}, "model_params": [{"share": 0.5}], "dtype": torch.float32}
    assert torch.equal(out, torch.ones(3))
    with pytest.raises(InputError, match="scaled_sum needs a base model"):
        method.merge(None, [m], [{}], {})
    c = coefficients("scaled_sum", {"gain": 3}, [{"share": 0.25}, None, {}])
    assert c.coeff.tolist() == [0.75, 0.0, 1.5] and c.weight.tolist() == [0.25, 0.0, 0.5]


def test_every_method_declares_its_coefficients():
    for name, method in REGISTRY.items():
        assert method.coefficients is not None, name
        required = {s.name: GIVEN[s.name] for s in method.params if s.required}
        n = 2 if method.max_models != 1 else 1
        c = coefficients(name, required, [dict(required)] * n + [None], cosine=0.5, energy=[1.0, 1.0, 1.0])
        assert c.coeff[-1] == 0 and np.all(np.isfinite(c.coeff)) and np.any(c.coeff != 0), name
