"""mergekit ignores parameters a method does not use; so does mergescope, with a warning that names
them (printed, and in the model card). A name no method takes stays an error with a did-you-mean."""

import pytest
import torch

from mergescope.io.errors import InputError
from mergescope.merge.methods import REGISTRY, get_method
from mergescope.merge.plan import Plan
from mergescope.merge.run import run_merge
from tests.ckpt_utils import load_state, make_finetune, make_llama
from tests.mergekit_utils import mergekit_available, mergekit_python

MERGEKIT_METHODS = (
    "arcee_fusion breadcrumbs breadcrumbs_ties dare_linear dare_ties della della_linear karcher linear "
    "model_stock multislerp nearswap nuslerp passthrough ram ramplus_tl sce slerp task_arithmetic ties"
).split()


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("ig")
    base = make_llama(root / "base", n_layers=2, hidden=16, vocab=32, seed=0)
    return (
        base,
        make_finetune(base, root / "a", scale=0.01, seed=1),
        make_finetune(base, root / "b", scale=0.01, seed=2),
    )


def _slerp(base, a, b, extra=""):
    return (
        f"merge_method: slerp\nbase_model: {base}\nmodels:\n- model: {base}\n  parameters: {{weight: 1.0}}\n"
        f"- model: {a}\n  parameters: {{weight: 1.0}}\nparameters: {{t: 0.4{extra}}}\n"
    )


def test_another_methods_parameter_is_a_warning_and_changes_nothing(fam, tmp_path, capsys):
    base, a, b = fam
    plan = Plan.from_yaml(_slerp(base, a, b), source="p.yml")
    plan.validate()
    assert [p for p, _ in plan.unused_settings()] == ["models[0].parameters.weight", "models[1].parameters.weight"]
    assert "`weight` is ignored by slerp (it takes: t)" in plan.unused_settings()[0][1]
    res = run_merge(plan, tmp_path / "w")
    run_merge(Plan.from_yaml(_slerp(base, a, b).replace("{weight: 1.0}", "{}")), tmp_path / "plain")
    x, y = load_state(tmp_path / "w"), load_state(tmp_path / "plain")
    assert all(torch.equal(x[k], y[k]) for k in x)
    warned = [f.message for f in res.findings if f.code == "ignored-key"]
    assert len(warned) == 2 and "`weight` is ignored by slerp" in warned[0]
    assert "`weight` is ignored by slerp" in (tmp_path / "w" / "README.md").read_text()


def test_the_cli_prints_the_warning(fam, tmp_path, capsys):
    from mergescope.tui.cli import main

    base, a, b = fam
    p = tmp_path / "p.yml"
    p.write_text(_slerp(base, a, b))
    assert main(["merge", str(p), str(tmp_path / "out")]) == 0
    err = capsys.readouterr()
    assert "`weight` is ignored by slerp" in err.out + err.err


def test_a_global_parameter_in_a_models_parameters_is_ignored_with_a_warning(fam):
    base, a, b = fam
    text = f"merge_method: ties\nbase_model: {base}\nmodels:\n- model: {a}\n  parameters: {{weight: 1, density: 0.5, normalize: false}}\n"
    plan = Plan.from_yaml(text)
    plan.validate()
    ((path, why),) = plan.unused_settings()
    assert path == "models[0].parameters.normalize" and "global parameter of ties" in why


def test_a_name_no_method_takes_is_an_error_with_a_suggestion(fam):
    base, a, b = fam
    with pytest.raises(InputError, match=r"p\.yml: parameters\.tt: unknown parameter for slerp; did you mean `t`\?"):
        Plan.from_yaml(_slerp(base, a, b).replace("{t: 0.4", "{tt: 0.4"), source="p.yml").validate()
    with pytest.raises(InputError, match=r"densty: unknown parameter for ties; did you mean `density`\?"):
        Plan.from_yaml(
            f"merge_method: ties\nbase_model: {base}\nmodels:\n- model: {a}\n  parameters: {{weight: 1, densty: 0.5}}\n"
        ).validate()


@pytest.mark.parametrize("name", MERGEKIT_METHODS)
def test_every_mergekit_method_name_is_a_method(name):
    assert get_method(name) is REGISTRY[name]


def test_names_outside_both_tools_get_a_suggestion():
    with pytest.raises(InputError, match=r"unknown merge_method 'dare_linaer'; did you mean 'dare_linear'\?"):
        get_method("dare_linaer")
    with pytest.raises(InputError, match=r"did you mean 'arcee_fusion'\?"):
        get_method("arcee-fusion")


@pytest.mark.mergekit
def test_the_method_list_is_mergekits():
    ok, why = mergekit_available()
    if not ok:
        pytest.skip(why)
    import subprocess

    code = "import mergekit.merge_methods as m; print(' '.join(sorted(x.spec.name for x in m.registered_methods())))"
    names = subprocess.run([str(mergekit_python()), "-c", code], capture_output=True, text=True, check=True).stdout
    assert names.split() == sorted(MERGEKIT_METHODS)
    assert set(MERGEKIT_METHODS) <= set(REGISTRY)
