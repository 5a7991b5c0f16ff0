"""Plan: mergekit schema round-trip, mergekit 0.1.5 parameter resolution, validation messages, group ratios."""

from pathlib import Path

import pytest
import yaml

from mergescope.io.errors import InputError
from mergescope.io.naming import site_of
from mergescope.merge.plan import Plan, group_ratios_of, interpolate, plan_from_group_ratios
from tests.ckpt_utils import llama_shapes, make_finetune, make_llama, make_lora

FULL = """\
merge_method: ties
base_model: base
models:
- model: ft1
  parameters:
    weight: [0.2, 1.0]
    density:
    - filter: self_attn
      value: [0.3, 0.9]
    - filter: mlp
      value: 0.4
    - value: 0.5
- model: ft2
  parameters:
    weight: {filter: lm_head, value: 0.25}
parameters:
  weight: 0.75
  normalize: false
  lambda: 1.5
dtype: float32
out_dtype: bfloat16
tokenizer_source: base
"""

SLICES = """\
merge_method: slerp
base_model: a
slices:
- sources:
  - model: a
    layer_range: [0, 3]
  - model: b
    layer_range: [0, 3]
  parameters:
    t:
    - filter: self_attn
      value: [0.0, 0.5, 1.0]
    - value: 0.5
- sources:
  - model: a
    layer_range: [3, 4]
  - model: b
    layer_range: [2, 3]
parameters:
  t: [1.0, 0.0]
"""


def test_yaml_round_trip_is_stable():
    for text in (FULL, SLICES):
        p = Plan.from_yaml(text)
        again = Plan.from_yaml(p.to_yaml())
        assert again.to_dict() == p.to_dict() == yaml.safe_load(text)
        assert again.to_yaml() == p.to_yaml()
    # number lists are written in flow style, like mergekit's dumper
    assert "weight: [0.2, 1.0]" in Plan.from_yaml(FULL).to_yaml()


def test_dump_and_load(tmp_path):
    p = Plan.from_yaml(FULL)
    p.dump(tmp_path / "plan.yml")
    q = Plan.load(tmp_path / "plan.yml")
    assert q == p and q.source == str(tmp_path / "plan.yml")


def test_mergekit_gradient_formula():
    # s = t*(K-1); i0 = int(s); i1 = min(K-1, i0+1); f = s - i0; (1-f)*v[i0] + f*v[i1]
    assert interpolate([1.0, 2.0, 4.0], 0.0) == 1.0
    assert interpolate([1.0, 2.0, 4.0], 0.25) == pytest.approx(1.5)
    assert interpolate([1.0, 2.0, 4.0], 0.75) == pytest.approx(3.0)
    assert interpolate([1.0, 2.0, 4.0], 1.0) == 4.0
    assert interpolate([True, False, True], 0.6) is False  # non-numeric: v[int(t*(K-1))]


def test_resolve_models_plan_gradients_filters_and_t0_for_embed_head_norm():
    p = Plan.from_yaml(FULL)
    n = 5  # layers: t = j / 4
    for j in range(n):
        t = j / 4
        q = p.resolve(f"model.layers.{j}.self_attn.q_proj.weight", num_layers=n)
        assert q.t == t and q.layer == j
        assert q.params == {"int8_mask": False, "normalize": False, "rescale": False, "lambda": 1.5}
        ft1, ft2 = q.model_params["ft1"], q.model_params["ft2"]
        assert ft1["weight"] == pytest.approx(0.2 + 0.8 * t)
        assert ft1["density"] == pytest.approx(0.3 + 0.6 * t)
        # ft2's filter matches only lm_head: elsewhere the top-level weight applies
        assert ft2 == {"weight": 0.75, "density": 1.0}
        mlp = p.resolve(f"model.layers.{j}.mlp.up_proj.weight", num_layers=n).model_params["ft1"]
        assert mlp["density"] == 0.4
        ln = p.resolve(f"model.layers.{j}.input_layernorm.weight", num_layers=n).model_params["ft1"]
        assert ln["density"] == 0.5
    # embeddings, final norm and lm_head: mergekit's pre/post weights, always t = 0
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        r = p.resolve(name, num_layers=n)
        assert r.t == 0 and r.layer is None
        assert r.model_params["ft1"] == {"weight": 0.2, "density": 0.5}
    assert p.resolve("lm_head.weight", num_layers=n).model_params["ft2"]["weight"] == 0.25
    assert p.resolve("model.norm.weight", num_layers=n).model_params["ft2"]["weight"] == 0.75
    assert "base" not in p.resolve("lm_head.weight", num_layers=n).model_params  # base gets no task weight


def test_resolve_single_layer_uses_t_1():
    p = Plan.from_yaml(
        "merge_method: linear\nmodels:\n- model: a\n  parameters: {weight: [2.0, 4.0]}\n"
        "- model: b\n  parameters: {weight: 1.0}\n"
    )
    assert p.resolve("model.layers.0.mlp.up_proj.weight", num_layers=1).model_params["a"]["weight"] == 4.0
    assert p.resolve("model.embed_tokens.weight", num_layers=1).model_params["a"]["weight"] == 2.0


def test_resolve_slices_t_per_slice_and_pre_post_slices():
    p = Plan.from_yaml(SLICES)
    assert p.num_layers() == 4
    # slice 0: 3 layers, t = 0, 0.5, 1; slice-level filter list on attention, 0.5 elsewhere
    assert [p.resolve(f"model.layers.{j}.self_attn.q_proj.weight").params["t"] for j in range(3)] == [0.0, 0.5, 1.0]
    assert p.resolve("model.layers.1.mlp.up_proj.weight").params["t"] == 0.5
    # slice 1: one layer, t = 1; only the top-level gradient [1, 0] applies -> 0.0
    r = p.resolve("model.layers.3.self_attn.q_proj.weight")
    assert (r.slice_index, r.t, r.params["t"]) == (1, 1, 0.0)
    # embeddings use slice 0's parameters at t = 0 (slice filter list -> catch-all 0.5);
    # final norm / head use the last slice's parameters at t = 0 (top-level gradient -> 1.0)
    assert p.resolve("model.embed_tokens.weight").params["t"] == 0.5
    assert p.resolve("lm_head.weight").params["t"] == 1.0
    assert p.resolve("model.norm.weight").params["t"] == 1.0


def test_per_model_filters_match_input_names_global_filters_match_output_names():
    text = """\
merge_method: linear
slices:
- sources:
  - model: a
    layer_range: [2, 4]
    parameters:
      weight: [{filter: layers.3., value: 5.0}, {value: 1.0}]
  - model: b
    layer_range: [0, 2]
    parameters:
      weight: [{filter: layers.3., value: 7.0}, {value: 1.0}]
parameters:
  normalize: [{filter: layers.0., value: false}, {value: true}]
"""
    p = Plan.from_yaml(text)
    r0 = p.resolve("model.layers.0.mlp.up_proj.weight")  # inputs: a layer 2, b layer 0
    assert r0.model_params == {"a": {"weight": 1.0}, "b": {"weight": 1.0}} and r0.params["normalize"] is False
    r1 = p.resolve("model.layers.1.mlp.up_proj.weight")  # inputs: a layer 3, b layer 1
    assert r1.model_params == {"a": {"weight": 5.0}, "b": {"weight": 1.0}} and r1.params["normalize"] is True


def test_filter_without_match_falls_through_and_star_matches():
    p = Plan.from_yaml(
        "merge_method: linear\nmodels:\n- model: a\n  parameters:\n    weight: [{filter: mlp, value: 3.0}]\n"
        "- model: b\n  parameters: {weight: [{filter: '*', value: 2.0}, {value: 9.0}]}\n"
        "parameters: {weight: 0.5}\n"
    )
    r = p.resolve("model.layers.0.self_attn.q_proj.weight", num_layers=2)
    assert r.model_params == {"a": {"weight": 0.5}, "b": {"weight": 2.0}}
    assert p.resolve("model.layers.0.mlp.up_proj.weight", num_layers=2).model_params["a"]["weight"] == 3.0


def test_scientific_notation_strings_and_bools():
    # PyYAML reads 1e-3 as a string; mergekit's validators turn it into a number for float parameters
    p = Plan.from_yaml(
        "merge_method: breadcrumbs\nbase_model: base\nmodels:\n- model: a\n"
        "  parameters: {weight: 1, gamma: 1e-3}\nparameters: {normalize: 'yes'}\n"
    )
    r = p.resolve("model.layers.0.mlp.up_proj.weight", num_layers=1)
    assert r.model_params["a"]["gamma"] == 0.001 and r.params["normalize"] is True


def test_base_appended_as_input_for_linear():
    # mergekit adds a base_model that is not listed to the inputs; linear then needs its weight
    p = Plan.from_yaml(
        "merge_method: linear\nbase_model: base\nmodels:\n- model: a\n  parameters: {weight: 1.0}\n"
        "parameters: {weight: 0.5}\n"
    )
    r = p.resolve("model.layers.0.mlp.up_proj.weight", num_layers=1)
    assert r.base is None and r.model_params == {"a": {"weight": 1.0}, "base": {"weight": 0.5}}
    bad = Plan.from_yaml(
        "merge_method: linear\nbase_model: base\nmodels:\n- model: a\n  parameters: {weight: 1.0}\n", source="p.yml"
    )
    with pytest.raises(InputError, match=r"p.yml: base_model: no `weight` for 'base'"):
        bad.validate(check_paths=False)


# --------------------------------------------------------------------------------- validation


def _err(text, tmp_path=None, open_models=False, check_paths=False):
    p = Plan.from_yaml(text, source="plan.yml")
    p.validate(open_models=open_models, check_paths=check_paths)


TIES = "merge_method: ties\nbase_model: base\nmodels:\n- model: a\n  parameters: {weight: 1.0}\n"


@pytest.mark.parametrize(
    "text, needles",
    [
        (
            "merge_methd: ties\nmodels:\n- model: a\n",
            ["plan.yml: merge_methd: unknown key", "did you mean `merge_method`"],
        ),
        (
            TIES.replace("weight: 1.0", "weight: 1.0, densty: 0.5"),
            ["plan.yml: models[0].parameters.densty: unknown parameter for ties", "did you mean `density`"],
        ),
        (TIES.replace("ties", "tiess"), ["plan.yml: merge_method: ", "did you mean 'ties'"]),
        (
            "merge_method: slerp\nbase_model: base\nmodels:\n- model: a\n- model: b\nparameters: {t: 0.5}\n",
            ["plan.yml: models: slerp takes exactly 1 models besides the base, got 2"],
        ),
        (
            "merge_method: ties\nmodels:\n- model: a\n  parameters: {weight: 1.0}\n",
            ["plan.yml: base_model: missing", "add `base_model: PATH`"],
        ),
        (
            "merge_method: slerp\nbase_model: base\nslices:\n- sources:\n  - model: a\n    layer_range: [0, 2]\n"
            "  - model: b\n    layer_range: [0, 2]\nparameters: {t: 0.5}\n",
            ["plan.yml: slices[0].sources: base_model 'base' is not among the sources"],
        ),
        (TIES + "dtype: bf16\n", ["plan.yml: dtype: unknown dtype 'bf16'", "did you mean `bfloat16`"]),
        (TIES + "out_dtype: float33\n", ["plan.yml: out_dtype: unknown dtype", "float32"]),
        (
            TIES.replace("weight: 1.0", "weight: [{fliter: mlp, value: 1}]"),
            ["plan.yml: models[0].parameters.weight[0].fliter: unknown key", "did you mean `filter`"],
        ),
        (TIES.replace("weight: 1.0", "weight: abc"), ["models[0].parameters.weight: `weight` expects a number"]),
        (
            TIES.replace("weight: 1.0", "weight: [{filter: mlp, value: [{value: 1}]}]"),
            ["models[0].parameters.weight[0].value: a filter's value is a number or a gradient list"],
        ),
        (
            "merge_method: linear\nmodels:\n- model: a\n- model: b\n  parameters: {weight: 1}\n",
            ["plan.yml: models[0]: no `weight` for 'a'"],
        ),
        (TIES + "modules: {}\n", ["plan.yml: (top level): give exactly one of `models:`, `slices:` or `modules:`"]),
        (
            "merge_method: linear\nmodules: {text_decoder: {models: [{model: a}], slices: [{sources: []}]}}\n",
            ["plan.yml: modules.text_decoder: give exactly one of `models:` or `slices:` for this module"],
        ),
        (
            "merge_method: linear\nmodules: {text_decoder: {model: a}}\n",
            ["plan.yml: modules.text_decoder.model: unknown key"],
        ),
        (TIES + "tokenizer_source: union\ntokenizer: {source: base}\n", ["plan.yml: tokenizer: give either"]),
        (
            TIES + "tokenizer: {pad_to_multiple_of: 0}\n",
            ["plan.yml: tokenizer.pad_to_multiple_of: expected a positive"],
        ),
        (TIES + "tokenizer: {tokens: {x: {sorce: base}}}\n", ["tokenizer.tokens['x'].sorce: unknown key"]),
        (TIES + "tokenizer: {tokens: {x: {source: {kind: zeros}}}}\n", ["tokenizer.tokens['x'].source.kind: expected"]),
        (TIES + "chat_template: chatlm\n", ["plan.yml: chat_template: 'chatlm' is neither a known template"]),
        ("merge_method: ties\nbase_model: base\nmodels:\n- a\n", ["plan.yml: models[0]: write `- model: a`"]),
        (
            "merge_method: passthrough\nslices:\n- sources:\n  - model: a\n    layer_range: [0, 2]\n"
            "  - model: b\n    layer_range: [0, 3]\n",
            ["plan.yml: slices[0].sources: all sources of a slice must span"],
        ),
        (
            "merge_method: passthrough\nslices:\n- sources:\n  - model: a\n    layer_range: [3, 1]\n",
            ["plan.yml: slices[0].sources[0].layer_range: [3, 1] is empty"],
        ),
        (
            "merge_method: passthrough\nslices:\n- sources:\n  - model: a\n    layer_rnge: [0, 1]\n",
            ["plan.yml: slices[0].sources[0].layer_rnge: unknown key", "did you mean `layer_range`"],
        ),
        (
            "merge_method: linear\nmodels:\n- model: a\nslices: []\n",
            ["give exactly one of `models:`, `slices:` or `modules:`"],
        ),
        (
            "merge_method: linear\nmodels:\n- model: a\n  parameters: {weight: []}\n",
            ["models[0].parameters.weight: is an empty list"],
        ),
    ],
)
def test_validation_messages_name_file_key_and_fix(text, needles):
    with pytest.raises(InputError) as ei:
        _err(text)
    msg = str(ei.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_missing_paths_and_layer_range_out_of_bounds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_llama(tmp_path / "base", n_layers=2, hidden=8, vocab=16)
    make_finetune(tmp_path / "base", tmp_path / "ft", seed=1)
    with pytest.raises(InputError, match=r"plan.yml: models\[0\].model: nope: no such file or directory.*fix the path"):
        _err(TIES.replace("model: a", "model: nope"), check_paths=True)
    text = (
        "merge_method: slerp\nbase_model: base\nslices:\n- sources:\n  - model: base\n    layer_range: [0, 3]\n"
        "  - model: ft\n    layer_range: [0, 3]\nparameters: {t: 0.5}\n"
    )
    with pytest.raises(
        InputError,
        match=r"plan.yml: slices\[0\].sources\[0\].layer_range: \[0, 3\] is out of bounds: "
        r"base has 2 layers",
    ):
        _err(text, open_models=True)
    # a tensor shape mismatch is found from headers, before any data is read
    make_llama(tmp_path / "other", n_layers=2, hidden=8, vocab=20)
    with pytest.raises(
        InputError, match=r"model.embed_tokens.weight has different shapes \(base: \[16, 8\], other: \[20, 8\]\)"
    ):
        _err(TIES.replace("model: a", "model: other"), open_models=True)
    # per-tensor parameters: a filter list that leaves some tensor without a required weight
    with pytest.raises(
        InputError, match=r"models\[0\] \(ft\): no `weight` applies to tensor model.embed_tokens.weight"
    ):
        _err(
            TIES.replace("model: a", "model: ft").replace("weight: 1.0", "weight: [{filter: layers, value: 1}]"),
            open_models=True,
        )


def test_bad_yaml_and_not_a_mapping(tmp_path):
    (tmp_path / "p.yml").write_text("merge_method: [ties\n")
    with pytest.raises(InputError, match=r"p.yml: not valid YAML at line 2"):
        Plan.load(tmp_path / "p.yml")
    (tmp_path / "q.yml").write_text("- just a list\n")
    with pytest.raises(InputError, match=r"q.yml: \(top level\): a plan is a YAML mapping"):
        Plan.load(tmp_path / "q.yml")
    with pytest.raises(InputError, match=r"no such plan file"):
        Plan.load(tmp_path / "missing.yml")


# --------------------------------------------------------------------------------- tensor jobs


def test_tensor_jobs_slices_remap_layers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_llama(tmp_path / "a", n_layers=4, hidden=8, vocab=16, seed=0)
    make_llama(tmp_path / "b", n_layers=4, hidden=8, vocab=16, seed=1)
    p = Plan.from_yaml(
        "merge_method: passthrough\nslices:\n- sources:\n  - model: a\n    layer_range: [0, 2]\n"
        "- sources:\n  - model: b\n    layer_range: [1, 4]\n"
    )
    cks = p.open_checkpoints()
    jobs = list(p.tensor_jobs(cks))
    names = [j.name for j in jobs]
    assert names[0] == "model.embed_tokens.weight" and names[-2:] == ["model.norm.weight", "lm_head.weight"]
    assert len(jobs) == 3 + 5 * 9
    by = {j.name: j for j in jobs}
    assert by["model.layers.1.mlp.up_proj.weight"].inputs[0].name == "model.layers.1.mlp.up_proj.weight"
    assert by["model.layers.1.mlp.up_proj.weight"].inputs[0].model == "a"
    j = by["model.layers.4.self_attn.q_proj.weight"]
    assert (j.inputs[0].model, j.inputs[0].name, j.layer, j.t) == (
        "b",
        "model.layers.3.self_attn.q_proj.weight",
        4,
        1.0,
    )
    assert by["model.embed_tokens.weight"].inputs[0].model == "a"  # pre weights from the first slice
    assert by["lm_head.weight"].inputs[0].model == "b"  # post weights from the last slice


def test_tied_lm_head_uses_embeddings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_llama(tmp_path / "base", n_layers=1, hidden=8, vocab=16)
    make_llama(tmp_path / "tied", n_layers=1, hidden=8, vocab=16, tied=True, seed=3)
    p = Plan.from_yaml(TIES.replace("model: a", "model: tied"))
    jobs = {j.name: j for j in p.tensor_jobs(p.open_checkpoints())}
    assert jobs["lm_head.weight"].inputs[0].name == "model.embed_tokens.weight"
    # all tied: no lm_head in the output
    make_llama(tmp_path / "tied2", n_layers=1, hidden=8, vocab=16, tied=True, seed=4)
    p = Plan.from_yaml(TIES.replace("model: a", "model: tied").replace("base_model: base", "base_model: tied2"))
    assert "lm_head.weight" not in {j.name for j in p.tensor_jobs(p.open_checkpoints())}


def test_ref_paths_and_open_ref_name_the_key_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_llama(tmp_path / "base", n_layers=1, hidden=8, vocab=16)
    make_lora(tmp_path / "base", tmp_path / "lora", rank=2)
    (tmp_path / "broken").mkdir()
    p = Plan.from_yaml(
        "merge_method: linear\nmodels:\n- model: base+lora\n- model: broken\ntokenizer_source: base\n",
        source="plan.yml",
    )
    assert p.ref_paths("base+lora") == (Path("base"), Path("lora"))  # relative to the working directory
    assert p.ref_paths("broken") == (Path("broken"), None)
    assert p.path_refs() == ["base+lora", "broken"]  # tokenizer_source: base names no files
    ck = p.open_ref("base+lora", Path("base"))
    try:
        assert "model.embed_tokens.weight" in ck
    finally:
        ck.close()
    with pytest.raises(InputError, match=r"^plan.yml: models\[1\].model: "):
        p.open_ref("broken")


def test_gradient_position_and_filter_lookup_are_mergekits():
    from mergescope.merge.plan import gradient_position, matching_filter

    assert [gradient_position(i, 3) for i in range(3)] == [0.0, 0.5, 1.0]
    assert gradient_position(0, 1) == 1
    entries = [{"filter": "mlp", "value": 1}, {"filter": "*", "value": 2}, {"value": 3}]
    assert matching_filter(entries, "model.layers.0.mlp.up_proj.weight") == (0, entries[0])
    assert matching_filter(entries, "model.norm.weight") == (1, entries[1])
    assert matching_filter(entries[:1], "lm_head.weight") is None


def test_importing_the_plan_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, mergescope.merge.plan; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd="/", timeout=60).returncode == 0


# --------------------------------------------------------------------------------- group ratios

RATIOS = {
    ("embed", None): [0.1, 0.2],
    ("head", None): [0.3, 0.4],
    ("norm", None): [0.5, 0.6],
    ("attn", (0, 2)): [1.0, 0.0],
    ("attn", (2, 4)): [0.5, 0.5],
    ("attn", (4, 6)): [0.0, 1.0],
    ("mlp", (0, 3)): [0.7, 0.3],
    ("mlp", (3, 6)): [0.2, 0.8],
    ("norm", (0, 6)): [0.9, 0.1],
    ("other", None): [1.0, 1.0],
}
BANDS = {"attn": [(0, 2), (2, 4), (4, 6)], "mlp": [(0, 3), (3, 6)], "norm": [(0, 6)]}


def _expected(name, ratios, i):
    s = site_of(name)
    if s.layer is None:
        return ratios[(s.group, None)][i]
    for (g, band), v in ratios.items():
        if g == s.group and band is not None and band[0] <= s.layer < band[1]:
            return v[i]
    raise AssertionError(name)


def test_group_ratios_round_trip_through_yaml_and_resolve_agrees():
    names = list(llama_shapes(6, 8, 16))
    p = plan_from_group_ratios("task_arithmetic", "base", ["a", "b"], RATIOS, num_layers=6, names=names)
    text = p.to_yaml()
    q = Plan.from_yaml(text)
    q.validate(check_paths=False)
    assert group_ratios_of(q, num_layers=6, bands=BANDS) == RATIOS
    assert group_ratios_of(q, num_layers=6) == RATIOS  # adjacent bands differ, so runs recover them
    # every tensor gets its group's value under mergekit's rules (filters first match, gradients, t)
    for name in names:
        r = q.resolve(name, num_layers=6)
        for i, m in enumerate(["a", "b"]):
            assert r.model_params[m]["weight"] == pytest.approx(_expected(name, RATIOS, i), abs=1e-12), name
    # the filters are plain substrings of Llama names, ordered so the final norm is not a layer norm
    filters = [e.get("filter") for e in q.models[0].parameters["weight"]]
    assert filters == ["embed_tokens", "lm_head", "model.norm.", "layernorm", "self_attn", "mlp", None]


def test_group_ratios_gpt2_names_and_global_param():
    names = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"]
    for i in range(2):
        names += [
            f"transformer.h.{i}.ln_1.weight",
            f"transformer.h.{i}.attn.c_attn.weight",
            f"transformer.h.{i}.ln_2.weight",
            f"transformer.h.{i}.mlp.c_fc.weight",
        ]
    ratios = {
        ("embed", None): 0.1,
        ("norm", None): 0.2,
        ("attn", (0, 2)): 0.3,
        ("mlp", (0, 1)): 0.4,
        ("mlp", (1, 2)): 0.6,
        ("norm", (0, 2)): 0.5,
        ("other", None): 0.9,
    }
    p = plan_from_group_ratios("slerp", "base", ["a"], ratios, num_layers=2, names=names, param="t")
    with pytest.raises(ValueError, match="slerp has no parameter 'weight'"):
        plan_from_group_ratios("slerp", "base", ["a"], ratios, num_layers=2)
    assert "t" in p.parameters and p.models[0].parameters is None  # slerp's t is global
    q = Plan.from_yaml(p.to_yaml())
    for name in names:
        s = site_of(name)
        want = (
            ratios[(s.group, None)]
            if s.layer is None
            else next(v for (g, b), v in ratios.items() if g == s.group and b and b[0] <= s.layer < b[1])
        )
        assert q.resolve(name, num_layers=2).params["t"] == pytest.approx(want), name
    back = group_ratios_of(q, param="t", num_layers=2)
    assert back == {k: [v] for k, v in ratios.items()}


def test_group_ratios_of_rejects_hand_written_filters():
    p = Plan.from_yaml(
        "merge_method: linear\nmodels:\n- model: a\n  parameters:\n    weight: [{filter: q_proj, value: 1}, {value: 2}]\n",
        source="x.yml",
    )
    with pytest.raises(InputError, match=r"x.yml: models\[0\].parameters.weight\[0\].filter: 'q_proj' is not one of"):
        group_ratios_of(p, num_layers=2)


def test_a_plan_with_an_extension_method_says_so_in_a_yaml_comment(monkeypatch):
    import dataclasses

    from mergescope.merge import methods

    ext = dataclasses.replace(methods.REGISTRY["linear"], name="x_linear", extension=True)
    monkeypatch.setitem(methods.REGISTRY, "x_linear", ext)
    plan = Plan.from_yaml("merge_method: x_linear\nmodels:\n- model: a\n  parameters: {weight: 1}\n")
    text = plan.to_yaml()
    assert text.startswith("# merge_method x_linear is a mergescope extension") and "mergekit-yaml refuses it" in text
    assert Plan.from_yaml(text) == plan
    assert Plan.from_yaml("merge_method: linear\nmodels:\n- model: a\n").to_yaml().startswith("merge_method: linear")
