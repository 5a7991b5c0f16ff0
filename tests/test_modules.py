"""`modules:` plans (mergekit's multi-module configs): each stack of a vision-language model merged
with its own inputs, layer ranges and parameters."""

import json

import pytest
import torch

from mergescope.io.errors import InputError
from mergescope.io.model_parts import split
from mergescope.merge.plan import Plan
from mergescope.merge.run import run_merge
from tests.ckpt_utils import load_state, make_finetune, make_llama
from tests.mergekit_utils import mergekit_available, run_mergekit
from tests.multimodal_utils import make_vl


@pytest.fixture(scope="module")
def vl(tmp_path_factory):
    root = tmp_path_factory.mktemp("vl")
    base = make_vl(root / "base", text_layers=2, vision_layers=3)
    a = make_finetune(base, root / "a", scale=0.01, seed=1)
    c = make_finetune(base, root / "c", scale=0.01, seed=2)
    return base, a, c


def _plan(base, a, c, projector: bool = True) -> str:
    text = f"""merge_method: task_arithmetic
base_model: {base}
dtype: float32
parameters: {{weight: 0.3}}
modules:
  text_decoder:
    models:
    - model: {a}
      parameters: {{weight: 0.7}}
    - model: {c}
  vision_tower:
    parameters: {{weight: [0.1, 0.9]}}
    slices:
    - sources:
      - {{model: {base}, layer_range: [0, 2]}}
      - {{model: {a}, layer_range: [0, 2]}}
      - {{model: {c}, layer_range: [1, 3]}}
"""
    if projector:
        text += f"""  multi_modal_projector:
    models:
    - model: {a}
    - model: {c}
      parameters: {{weight: 1.0}}
"""
    return text


def test_the_tensors_split_into_mergekits_modules(vl):
    base, _, _ = vl
    parts = split(load_state(base))
    assert set(parts) == {"text_decoder", "vision_tower", "multi_modal_projector"}
    assert "lm_head.weight" in parts["text_decoder"] and "model.layers.1.mlp.up_proj.weight" in parts["text_decoder"]
    assert "visual.merger.mlp.0.weight" in parts["multi_modal_projector"]
    assert "visual.blocks.2.attn.qkv.weight" in parts["vision_tower"]
    # a plain model is one module
    assert set(split(["model.layers.0.mlp.up_proj.weight", "lm_head.weight"])) == {"default"}


def test_each_module_merges_with_its_own_inputs_and_parameters(vl, tmp_path):
    base, a, c = vl
    plan = Plan.from_yaml(_plan(base, a, c), source="p.yml")
    assert Plan.from_yaml(plan.to_yaml()) == plan
    plan.validate(open_models=True)
    res = run_merge(plan, tmp_path / "out")
    out, B, A, C = (load_state(p) for p in (tmp_path / "out", base, a, c))
    # text decoder: a's own weight 0.7, c falls through to the top-level 0.3
    n = "model.layers.1.self_attn.q_proj.weight"
    torch.testing.assert_close(out[n], B[n] + 0.7 * (A[n] - B[n]) + 0.3 * (C[n] - B[n]))
    # vision tower: 2 output layers; layer 1 = base/a layer 1 + c layer 2, gradient t = 1 -> 0.9
    n, src_c = "visual.blocks.1.mlp.up_proj.weight", "visual.blocks.2.mlp.up_proj.weight"
    torch.testing.assert_close(out[n], B[n] + 0.9 * (A[n] - B[n]) + 0.9 * (C[src_c] - B[n]))
    assert "visual.blocks.2.norm1.weight" not in out
    # the projector: a at the top-level 0.3, c at its own 1.0
    n = "visual.merger.mlp.2.weight"
    torch.testing.assert_close(out[n], B[n] + 0.3 * (A[n] - B[n]) + 1.0 * (C[n] - B[n]))
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["vision_config"]["depth"] == 2 and cfg["text_config"]["num_hidden_layers"] == 2
    assert not [f for f in res.findings if f.code == "module-not-listed"]
    # resolve by tensor name answers in the tensor's module
    r = plan.resolve("visual.blocks.0.attn.qkv.weight")
    assert r.t == 0 and r.model_params[str(a)]["weight"] == pytest.approx(0.1)


def test_a_module_left_out_is_not_written_and_the_merge_says_so(vl, tmp_path):
    base, a, c = vl
    res = run_merge(Plan.from_yaml(_plan(base, a, c, projector=False)), tmp_path / "out")
    out = load_state(tmp_path / "out")
    assert not [n for n in out if n.startswith("visual.merger.")]
    (f,) = [f for f in res.findings if f.code == "module-not-listed"]
    assert "multi_modal_projector is not listed" in f.message and "5 tensors" in f.message


def test_a_module_name_the_model_lacks_names_the_modules_it_has(vl):
    base, a, c = vl
    text = _plan(base, a, c).replace("vision_tower:", "vision_towr:")
    with pytest.raises(InputError) as e:
        Plan.from_yaml(text, source="p.yml").validate(open_models=True)
    msg = str(e.value)
    assert msg.startswith("p.yml: modules.vision_towr: ") and "its modules: text_decoder, vision_tower" in msg


def test_errors_inside_a_module_name_its_key_path(vl):
    base, a, c = vl
    with pytest.raises(InputError, match=r"modules\.vision_tower\.slices\[0\]\.sources\[2\]\.layer_range: \[2, 4\]"):
        Plan.from_yaml(_plan(base, a, c).replace("[1, 3]", "[2, 4]"), source="p.yml").validate(open_models=True)
    with pytest.raises(InputError, match=r"modules\.text_decoder\.models\[0\]\.parameters\.densty: unknown parameter"):
        Plan.from_yaml(_plan(base, a, c).replace("{weight: 0.7}", "{densty: 0.7}"), source="p.yml").validate()
    with pytest.raises(InputError, match=r"modules\.default: `default` is the whole model"):
        Plan.from_yaml(
            f"merge_method: linear\nmodules:\n  default: {{models: [{{model: {a}}}]}}\n  x: {{models: [{{model: {a}}}]}}\n"
        )


def test_the_default_module_of_a_plain_model_is_the_models_plan(tmp_path):
    base = make_llama(tmp_path / "base", n_layers=2, hidden=16, vocab=32, seed=0)
    a = make_finetune(base, tmp_path / "a", scale=0.01, seed=1)
    common = f"merge_method: task_arithmetic\nbase_model: {base}\n"
    models = f"models:\n- model: {a}\n  parameters: {{weight: [0.2, 0.8]}}\n"
    run_merge(Plan.from_yaml(common + models), tmp_path / "m")
    moduled = "modules:\n  default:\n    " + models.replace("\n", "\n    ").rstrip() + "\n"
    run_merge(Plan.from_yaml(common + moduled), tmp_path / "d")
    x, y = load_state(tmp_path / "m"), load_state(tmp_path / "d")
    assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.mergekit
def test_matches_mergekit(vl, tmp_path):
    ok, why = mergekit_available()
    if not ok:
        pytest.skip(why)
    base, a, c = vl
    cfg = tmp_path / "p.yml"
    cfg.write_text(_plan(base, a, c))
    run_mergekit([(cfg, tmp_path / "mk")])
    run_merge(Plan.load(cfg), tmp_path / "ms")
    mk, ms = load_state(tmp_path / "mk"), load_state(tmp_path / "ms")
    assert set(mk) == set(ms) and len(ms) == 57
    for k in mk:
        assert torch.equal(mk[k], ms[k]), k
    ck, cs = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("mk", "ms"))
    assert ck["vision_config"]["depth"] == cs["vision_config"]["depth"] == 2
