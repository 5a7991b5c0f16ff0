"""Mixture-of-experts checkpoints (Mixtral, Qwen3-MoE) in transformers' two layouts, per-expert tensors
and fused 3-D ones: each expert is a module of its own in the analysis and the router a group, the same
model analyses and merges to the same numbers in either layout (trims and draws per expert), the output
keeps its reference model's layout, and a filter on `experts.E.` addresses expert E in both."""

import json

import pytest
import torch

from mergescope.io.checkpoint import open_checkpoint
from mergescope.io.naming import site_of
from mergescope.merge.plan import Plan
from mergescope.merge.run import merge_in_memory, run_merge
from mergescope.stats.readiness import analyze
from tests.ckpt_utils import load_state, make_finetune
from tests.moe_utils import ARCHS, EXPERTS, fused_copy, make_moe, moe_config, per_expert_shapes, unfuse

LAYOUTS = ("per_expert", "fused")


@pytest.fixture(scope="module", params=ARCHS)
def family(request, tmp_path_factory):
    """{layout: (base, a, b)}: `a` changes attention and expert 2 only, `b` every tensor."""
    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    base = make_moe(root / "base", arch, seed=0)
    a = make_finetune(base, root / "a", scale=0.01, seed=1, only=("self_attn", "experts.2."))
    b = make_finetune(base, root / "b", scale=0.01, seed=2)
    fused = tuple(fused_copy(p, root / f"{p.name}-fused", arch) for p in (base, a, b))
    return arch, {"per_expert": (base, a, b), "fused": fused}


def _plan(base, a, b, method: str, extra: str = "", weight_a: str = "1.0") -> Plan:
    return Plan.from_yaml(
        f"merge_method: {method}\nbase_model: {base}\ndtype: float32\nmodels:\n"
        f"- model: {a}\n  parameters: {{{extra}weight: {weight_a}}}\n"
        f"- model: {b}\n  parameters: {{{extra}weight: 0.5}}\n"
    )


def test_experts_are_modules_and_the_router_a_group():
    cases = {
        "model.layers.3.block_sparse_moe.experts.5.w1.weight": (3, "mlp", "expert5.gate_proj"),
        "model.layers.3.block_sparse_moe.experts.5.w3.weight": (3, "mlp", "expert5.up_proj"),
        "model.layers.3.block_sparse_moe.experts.5.w2.weight": (3, "mlp", "expert5.down_proj"),
        "model.layers.3.block_sparse_moe.gate.weight": (3, "router", "router"),
        "model.layers.0.mlp.experts.12.gate_proj.weight": (0, "mlp", "expert12.gate_proj"),
        "model.layers.0.mlp.experts.12.down_proj.weight": (0, "mlp", "expert12.down_proj"),
        "model.layers.0.mlp.gate.weight": (0, "router", "router"),
        "model.layers.0.mlp.shared_expert.up_proj.weight": (0, "mlp", "shared_expert.up_proj"),
        "model.layers.0.mlp.shared_expert_gate.weight": (0, "router", "shared_expert_gate"),
        "model.layers.0.mlp.gate_proj.weight": (0, "mlp", "gate_proj"),  # a dense MLP is unchanged
    }
    for name, want in cases.items():
        s = site_of(name)
        assert (s.layer, s.group, s.module) == want, name


def test_fused_tensors_of_another_orientation_are_split_per_expert_only():
    from mergescope.io.checkpoint.experts import expert_slots

    pre = "model.layers.0.feed_forward.experts."
    slots = expert_slots({pre + "gate_up_proj": (2, 16, 48), pre + "down_proj": (2, 24, 16)}, "llama4")
    assert {n: (s.expert, s.rows, s.shape) for n, s in slots.items()} == {
        pre + "0.gate_up_proj": (0, None, (16, 48)),
        pre + "1.gate_up_proj": (1, None, (16, 48)),
        pre + "0.down_proj": (0, None, (24, 16)),
        pre + "1.down_proj": (1, None, (24, 16)),
    }
    assert slots[pre + "1.down_proj"].offset((2, 24, 16)) == 24 * 16


def test_a_fused_checkpoint_reads_as_the_per_expert_one(family):
    arch, by = family
    per, fused = open_checkpoint(by["per_expert"][0]), open_checkpoint(by["fused"][0])
    stored = set(load_state(by["fused"][0]))
    assert any(n.endswith("experts.gate_up_proj") for n in stored)
    assert sorted(fused.names()) == sorted(per.names()) == sorted(per_expert_shapes(arch))
    for name in per.names():
        t = fused.get(name)
        assert tuple(fused.info(name).shape) == tuple(t.shape) == tuple(per.info(name).shape), name
        assert torch.equal(t, per.get(name)), name
        fused.release(name)
    slot = fused.slot(next(n for n in fused.names() if ".experts.3." in n))
    assert slot.expert == 3 and slot.stored in stored


def test_both_layouts_analyse_to_the_same_sites(family):
    _, by = family
    reports = {lay: analyze(str(by[lay][0]), [str(p) for p in by[lay][1:]], use_cache=False) for lay in LAYOUTS}
    per, fused = reports["per_expert"], reports["fused"]
    assert [s.to_dict() for s in per.sites] == [s.to_dict() for s in fused.sites]
    mods = per.modules()
    experts = [m for m in mods if m.startswith("expert")]
    assert experts == [f"expert{e}.{r}" for e in range(EXPERTS) for r in ("gate_proj", "up_proj", "down_proj")]
    assert "router" in {s.group for s in per.sites}
    # model a moved expert 2 only: its norm and the sign conflict live there, not in expert 1
    assert per.module_cell(0, "expert2.gate_proj").norm(0) > 0
    assert per.module_cell(0, "expert1.gate_proj").norm(0) == 0
    assert per.module_cell(0, "expert2.up_proj").sign_conflict_pair(0, 1) > 0.3
    assert per.module_cell(0, "expert1.up_proj").sign_conflict_pair(0, 1) == 0
    assert per.cell(1, "router").norm(1) > 0 and per.cell(1, "router").norm(0) == 0
    from mergescope.tui.state.heatdata import HeatData

    heat = HeatData(fused)  # the heatmap: a column per expert projection, the router a group column
    assert [c for c in heat.columns("modules") if c.startswith("expert")] == experts
    assert heat.columns("groups") == ["all", "attn", "mlp", "router", "norm"]


@pytest.mark.parametrize(
    "method,extra",
    [("task_arithmetic", ""), ("ties", "density: 0.4, "), ("dare_ties", "density: 0.5, "), ("breadcrumbs", "")],
)
def test_both_layouts_merge_to_the_same_weights(family, tmp_path, method, extra):
    arch, by = family
    outs = {}
    for lay in LAYOUTS:
        run_merge(_plan(*by[lay], method, extra), tmp_path / lay, seed=7)
        outs[lay] = load_state(tmp_path / lay)
    assert set(outs["fused"]) == set(load_state(by["fused"][0]))  # the output keeps the fused layout
    per, fused = outs["per_expert"], unfuse(outs["fused"], arch)
    assert set(per) == set(fused)
    for name in per:
        assert torch.equal(per[name], fused[name]), name


def test_ties_trims_each_expert_on_its_own(family, tmp_path):
    """Expert slices of one fused tensor with different magnitudes keep `density` of each, as the
    per-expert layout does; one trim over the whole fused tensor would empty the small expert."""
    arch, by = family
    base = by["fused"][0]
    sd = load_state(by["fused"][2])  # b moved every tensor
    name = next(n for n in sd if n.endswith("experts.down_proj"))
    b = load_state(base)[name]
    delta = sd[name] - b
    delta[0] *= 1e-3  # expert 0 moved a thousand times less than the others
    sd[name] = b + delta
    from tests.ckpt_utils import write_state

    a = write_state(tmp_path / "a", sd, config=json.loads((by["fused"][2] / "config.json").read_text()))
    merged = merge_in_memory(
        Plan.from_yaml(
            f"merge_method: ties\nbase_model: {base}\ndtype: float32\nmodels:\n"
            f"- model: {a}\n  parameters: {{density: 0.5, weight: 1.0}}\n"
        )
    ).tensors[name]
    kept = (merged - b).ne(0).flatten(1).float().mean(1)
    torch.testing.assert_close(kept, torch.full((EXPERTS,), 0.5))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_filter_on_experts_E_addresses_one_expert(family, tmp_path, layout):
    arch, by = family
    base, a, b = by[layout]
    weight = "[{filter: experts.1., value: 0.0}, {value: 1.0}]"
    plan = _plan(base, a, b, "task_arithmetic", weight_a=weight)
    plan.models[1].parameters["weight"] = [{"filter": "experts.1.", "value": 0.0}, {"value": 1.0}]
    out = load_state(run_merge(plan, tmp_path / "out").output_dir)
    out, ref = (unfuse(x, arch) if layout == "fused" else x for x in (out, load_state(base)))
    for name in ref:
        if ".experts.1." in name:
            assert torch.equal(out[name], ref[name]), name
        elif ".experts.2." in name or ".experts.0." in name:
            assert not torch.equal(out[name], ref[name]), name


def test_mixed_layouts_merge_in_the_reference_models_layout(family, tmp_path):
    arch, by = family
    (base, a, b), (fbase, _, fb) = by["per_expert"], by["fused"]
    mixed = load_state(run_merge(_plan(fbase, a, fb, "ties", "density: 0.5, "), tmp_path / "m").output_dir)
    assert set(mixed) == set(load_state(fbase))
    same = load_state(run_merge(_plan(base, a, b, "ties", "density: 0.5, "), tmp_path / "p").output_dir)
    unfused = unfuse(mixed, arch)
    for name in same:
        assert torch.equal(unfused[name], same[name]), name


# ---- transformers' own classes: the test checkpoints have their names and shapes, the outputs load
def _hf_model(arch: str):
    transformers = pytest.importorskip("transformers")
    cfg = {k: v for k, v in moe_config(arch).items() if k not in ("architectures", "model_type", "torch_dtype")}
    if arch == "mixtral":
        return transformers.MixtralForCausalLM(transformers.MixtralConfig(**cfg))
    return transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**cfg))


@pytest.mark.parametrize("arch", ARCHS)
def test_the_layouts_are_transformers_own(arch, tmp_path):
    torch.manual_seed(0)
    model = _hf_model(arch)
    from transformers.utils import logging

    logging.disable_progress_bar()
    model.save_pretrained(tmp_path / "per_expert")
    model.save_pretrained(tmp_path / "fused", save_original_format=False)
    ours = tmp_path / "ours"
    make_moe(ours / "per_expert", arch)
    make_moe(ours / "fused", arch, layout="fused")
    for lay in LAYOUTS:
        theirs, mine = load_state(tmp_path / lay), load_state(ours / lay)
        assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(v.shape) for k, v in mine.items()}, lay


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_merged_model_loads_in_transformers(family, tmp_path, layout):
    transformers = pytest.importorskip("transformers")
    arch, by = family
    out = run_merge(_plan(*by[layout], "ties", "density: 0.5, "), tmp_path / "out").output_dir
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    merged = load_state(out)
    state = model.state_dict()
    fused = {k.replace(".block_sparse_moe.", ".mlp."): v for k, v in merged.items()}
    if layout == "per_expert":
        from tests.moe_utils import fuse

        fused = fuse(merged, arch)
    assert set(state) == set(fused)
    for name, t in fused.items():
        assert torch.equal(state[name], t), name
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 32) and torch.isfinite(logits).all()
