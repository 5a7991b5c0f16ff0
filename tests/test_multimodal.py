"""LLaVA-style checkpoints (language model, CLIP vision tower, projector) merged with a plain `models:`
plan: every tensor kept, each stack with its own gradient positions (as mergekit's modules), the
analysis showing the vision tower and the projector as groups of their own, and the output loadable
by transformers."""

import pytest
import torch

from mergescope.io.naming import site_of
from mergescope.merge.plan import Plan
from mergescope.merge.run import run_merge
from tests.ckpt_utils import load_state, make_finetune

pytest.importorskip("transformers")
from tests.suite_models import make_picollava  # noqa: E402


@pytest.fixture(scope="module", params=["legacy", "v5"])
def llava(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"llava-{request.param}")
    base = make_picollava(root / "base", seed=0, layout=request.param)
    a = make_finetune(base, root / "a", scale=0.01, seed=1)
    b = make_finetune(base, root / "b", scale=0.01, seed=2)
    return request.param, base, a, b


def _plan(base, a, b) -> Plan:
    return Plan.from_yaml(
        f"merge_method: task_arithmetic\nbase_model: {base}\ndtype: float32\nmodels:\n"
        f"- model: {a}\n  parameters: {{weight: [0.0, 1.0]}}\n- model: {b}\n  parameters: {{weight: 0.5}}\n"
    )


def test_every_tensor_is_kept_and_each_stack_has_its_own_layers(llava, tmp_path):
    layout, base, a, b = llava
    run_merge(_plan(base, a, b), tmp_path / "out")
    out, B, A, Bm = (load_state(p) for p in (tmp_path / "out", base, a, b))
    assert set(out) == set(B)
    vis = next(n for n in B if "vision_tower" in n and "encoder.layers.1.self_attn.q_proj.weight" in n)
    txt = next(n for n in B if "language_model" in n and "layers.1.self_attn.q_proj.weight" in n)
    # both stacks have 2 layers: layer 1 is the last, t = 1 -> weight 1.0 for model a, in both stacks
    for n in (vis, txt):
        torch.testing.assert_close(out[n], B[n] + 1.0 * (A[n] - B[n]) + 0.5 * (Bm[n] - B[n]))
    proj = next(n for n in B if "multi_modal_projector.linear_1.weight" in n)
    torch.testing.assert_close(out[proj], B[proj] + 0.5 * (Bm[proj] - B[proj]))  # outside blocks: t = 0


def test_the_analysis_gives_vision_and_projector_their_own_groups(llava):
    _, base, _, _ = llava
    groups = {site_of(n).group for n in load_state(base)}
    assert {"vision", "projector", "attn", "mlp", "embed", "head"} <= groups
    layers = {site_of(n).layer for n in load_state(base) if "language_model" in n} - {None}
    assert layers == {0, 1}


def test_the_merged_model_loads_in_transformers(llava, tmp_path):
    from transformers import LlavaForConditionalGeneration

    layout, base, a, b = llava
    run_merge(_plan(base, a, b), tmp_path / "out")
    model = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "out"))
    merged = load_state(tmp_path / "out")
    from tests.suite_models import llava_v5_name

    state = model.state_dict()
    for name, t in merged.items():
        key = name if layout == "v5" else llava_v5_name(name)
        assert torch.equal(state[key], t), name
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 64) and torch.isfinite(logits).all()
