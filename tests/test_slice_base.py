"""A per-slice `base_model` (mergekit's): each slice merges relative to its own base."""

import pytest
import torch

from mergescope.io.errors import InputError
from mergescope.merge.plan import Plan
from mergescope.merge.run import run_merge
from tests.ckpt_utils import load_state, make_finetune, make_llama
from tests.mergekit_utils import mergekit_available, run_mergekit


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("sb")
    base = make_llama(root / "base", n_layers=2, hidden=16, vocab=32, seed=0)
    a = make_finetune(base, root / "a", scale=0.002, seed=1)
    b = make_finetune(base, root / "b", scale=0.002, seed=2)
    return root, base, a, b


def _yaml(base, a, b) -> str:
    return (
        f"merge_method: task_arithmetic\nbase_model: {base}\ndtype: float32\nslices:\n"
        f"- sources:\n  - {{model: {base}, layer_range: [0, 1]}}\n  - {{model: a_, layer_range: [0, 1], parameters: {{weight: 0.5}}}}\n"
        f"- base_model: {a}\n  sources:\n  - {{model: {a}, layer_range: [1, 2]}}\n"
        f"  - {{model: {b}, layer_range: [1, 2], parameters: {{weight: 0.5}}}}\n"
    ).replace("a_", str(a))


def test_each_slice_merges_against_its_own_base(fam, tmp_path):
    root, base, a, b = fam
    plan = Plan.from_yaml(_yaml(base, a, b))
    assert Plan.from_yaml(plan.to_yaml()) == plan and plan.slices[1].base_model == str(a)
    run_merge(plan, tmp_path / "out")
    out, B, A, Bm = load_state(tmp_path / "out"), load_state(base), load_state(a), load_state(b)
    n0 = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(out[n0], B[n0] + 0.5 * (A[n0] - B[n0]))
    n1 = "model.layers.1.mlp.up_proj.weight"
    torch.testing.assert_close(out[n1], A[n1] + 0.5 * (Bm[n1] - A[n1]))


def test_a_slice_base_must_be_among_its_sources(fam):
    root, base, a, b = fam
    text = (
        _yaml(base, a, b)
        .replace(f"- base_model: {a}", f"- base_model: {b}")
        .replace(f"model: {b}, layer_range: [1, 2]", f"model: {base}, layer_range: [1, 2]")
    )
    with pytest.raises(InputError, match=r"slices\[1\].sources: base_model .* is not among the sources"):
        Plan.from_yaml(text, source="p.yml").validate(check_paths=False)


@pytest.mark.mergekit
def test_matches_mergekit(fam, tmp_path):
    ok, why = mergekit_available()
    if not ok:
        pytest.skip(why)
    root, base, a, b = fam
    cfg = tmp_path / "p.yml"
    cfg.write_text(_yaml(base, a, b))
    run_mergekit([(cfg, tmp_path / "mk")])
    run_merge(Plan.load(cfg), tmp_path / "ms")
    mk, ms = load_state(tmp_path / "mk"), load_state(tmp_path / "ms")
    assert set(mk) == set(ms)
    for k in mk:
        assert torch.equal(mk[k], ms[k]), k


def test_residual_weight_is_accepted_and_reported_as_unused(fam, tmp_path):
    """mergekit 0.1.5 parses a slice's residual_weight and never reads it: accepted, kept, warned about."""
    root, base, a, b = fam
    text = _yaml(base, a, b).replace(f"- base_model: {a}\n", f"- base_model: {a}\n  residual_weight: 0.5\n")
    plan = Plan.from_yaml(text, source="p.yml")
    assert plan.slices[1].residual_weight == 0.5 and Plan.from_yaml(plan.to_yaml()) == plan
    res = run_merge(plan, tmp_path / "rw")
    run_merge(Plan.from_yaml(_yaml(base, a, b)), tmp_path / "plain")
    x, y = load_state(tmp_path / "rw"), load_state(tmp_path / "plain")
    assert all(torch.equal(x[k], y[k]) for k in x)
    (f,) = [f for f in res.findings if f.code == "ignored-key"]
    assert "slices[1].residual_weight" in f.message and "never uses it" in f.message
    card = (tmp_path / "rw" / "README.md").read_text()
    assert "residual_weight" in card
