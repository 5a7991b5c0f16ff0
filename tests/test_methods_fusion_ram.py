"""arcee_fusion, ram and ramplus_tl (mergekit 0.1.5 semantics) against independent float64 references,
their registry entries and what-if traits, and the plan's checks before any tensor is read."""

import numpy as np
import pytest
import torch

from mergescope.io.errors import InputError
from mergescope.merge.methods import REGISTRY, arcee_fusion, ram
from mergescope.merge.methods.base import BaseUse, Linear, MergeContext, Trim
from mergescope.merge.plan import Plan
from mergescope.merge.whatif import coefficients, method_note
from tests.ckpt_utils import load_state, make_finetune, make_llama


def _rand(*shape, seed=0, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _sparse_family(n, shape=(40, 24), seed=0, dtype=torch.float32, keep=0.5):
    """base + n task vectors: about `keep` of the entries moved, 10 % moved by less than 1e-5."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=torch.float64) * 0.02
    models = []
    for _ in range(n):
        u = torch.rand(shape, generator=g, dtype=torch.float64)
        d = 0.01 * torch.randn(shape, generator=g, dtype=torch.float64)
        d = torch.where(u < keep, d, 0.0)
        d = torch.where(u > 0.9, 1e-6 * torch.randn(shape, generator=g, dtype=torch.float64), d)
        models.append((base + d).to(dtype))
    return base.to(dtype), models


def _merge(name, base, tensors, params=None, ctx=None):
    snapshot = [base.clone(), *[t.clone() for t in tensors]]
    out = REGISTRY[name].merge(base, list(tensors), [{} for _ in tensors], params or {}, ctx or MergeContext("w"))
    for a, b in zip(snapshot, [base, *tensors]):
        assert torch.equal(a, b), "a merge method modified its inputs"
    return out


# ---------------------------------------------------------------- registry and traits


def test_registry_entries_match_mergekit():
    # mergekit 0.1.5: arcee_fusion(group) with base + exactly one other; ram(group, epsilon=1e-5) and
    # ramplus_tl(group, r=0.1, alpha=0.2, epsilon=1e-5), shared parameters, base required
    expected = {
        "arcee_fusion": {},
        "ram": {"epsilon": (False, 1e-5, False)},
        "ramplus_tl": {"r": (False, 0.1, False), "alpha": (False, 0.2, False), "epsilon": (False, 1e-5, False)},
    }
    for name, params in expected.items():
        m = REGISTRY[name]
        assert {p.name: (p.per_model, p.default, p.required) for p in m.params} == params, name
        assert all(p.min is None and p.max is None for p in m.params), name  # mergekit declares no range
        assert m.base is BaseUse.REQUIRED and not m.randomized and not m.elects_signs, name
    assert (REGISTRY["arcee_fusion"].min_models, REGISTRY["arcee_fusion"].max_models) == (1, 1)
    assert (REGISTRY["ram"].min_models, REGISTRY["ram"].max_models) == (1, None)
    assert (REGISTRY["ramplus_tl"].min_models, REGISTRY["ramplus_tl"].max_models) == (1, None)
    assert REGISTRY["arcee_fusion"].trim is Trim.IMPORTANCE_OUTLIERS
    assert REGISTRY["ram"].linear is REGISTRY["ramplus_tl"].linear is Linear.OVERLAP_MEAN


def test_whatif_traits():
    c = coefficients("ram", {"epsilon": 1e-5}, [{}, {}, None, {}])
    assert np.allclose(c.coeff, [1 / 3, 1 / 3, 0, 1 / 3])
    assert np.allclose(coefficients("ramplus_tl", {}, [{}, {}]).coeff, [0.5, 0.5])
    assert np.allclose(coefficients("arcee_fusion", {}, [{}, None]).coeff, [1.0, 0.0])
    assert "mean of the task vectors" in method_note("ram")
    assert "outlier mask" in method_note("arcee_fusion")


# ---------------------------------------------------------------- arcee_fusion


def _fusion_ref(base: torch.Tensor, model: torch.Tensor) -> tuple[np.ndarray, float, np.ndarray]:
    """(importance, threshold, result) in float64, from the definition (np.sort for the quantiles)."""
    b, m = base.double().numpy(), model.double().numpy()
    b2, m2 = b.reshape(-1, b.shape[-1]), m.reshape(-1, m.shape[-1])

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p, q = softmax(m2) + 1e-8, softmax(b2) + 1e-8
    kl = (p * np.log(p / q)).sum(axis=1, keepdims=True)
    imp = (np.abs(m2 - b2) * kl).reshape(b.shape)
    s = np.sort(imp.reshape(-1))
    n = s.size
    q1, med, q3 = s[int(0.25 * (n - 1))], s[int(0.5 * (n - 1))], s[int(0.75 * (n - 1))]
    thr = med + 1.5 * (q3 - q1)
    return imp, thr, np.where(imp >= thr, b + (m - b), b)


@pytest.mark.parametrize("shape", [(64, 48), (1000,), (3, 5, 40)])
def test_arcee_fusion_against_float64_reference(shape):
    base = _rand(*shape, seed=1, scale=0.05, dtype=torch.float64)
    model = base + _rand(*shape, seed=2, scale=0.01, dtype=torch.float64)
    imp, thr, ref = _fusion_ref(base, model)
    out = _merge("arcee_fusion", base, [model])
    assert out.dtype == torch.float64
    near = np.abs(imp - thr) <= 1e-9 * thr  # the two float64 computations may round across the threshold
    assert np.array_equal(out.numpy()[~near], ref[~near])
    kept = out.numpy() != base.numpy()
    assert 0.01 < kept.mean() < 0.5  # the upper outliers only
    # float32 inputs: computed in float32, the same mask away from the threshold
    out32 = _merge("arcee_fusion", base.float(), [model.float()])
    assert out32.dtype == torch.float32
    near32 = np.abs(imp - thr) <= 1e-3 * thr
    b32, m32 = base.float().numpy(), model.float().numpy()
    want = np.where(imp >= thr, b32 + (m32 - b32), b32)  # θ₀ + δ, rounded in float32
    assert np.array_equal(out32.numpy()[~near32], want[~near32])


def test_arcee_fusion_half_inputs_give_float32_like_mergekit():
    base = _rand(32, 16, seed=3, scale=0.05, dtype=torch.bfloat16)
    model = (base.float() + _rand(32, 16, seed=4, scale=0.01)).bfloat16()
    out = _merge("arcee_fusion", base, [model])
    assert out.dtype == torch.float32  # δ (bf16) times a float32 mask
    delta = (model - base).float()  # δ rounded to bf16, then θ₀ + δ in float32
    assert bool(((out == base.float()) | (out == base.float() + delta)).all())


def test_arcee_fusion_identical_model_returns_the_base_and_needs_one_model():
    base = _rand(8, 8, seed=5)
    assert torch.equal(_merge("arcee_fusion", base, [base.clone()]), base)
    with pytest.raises(InputError, match="exactly one other model"):
        _merge("arcee_fusion", base, [base, base])
    with pytest.raises(InputError, match="needs a base model"):
        REGISTRY["arcee_fusion"].merge(None, [base], [{}], {}, MergeContext("w"))


def _sorted_quantiles(x: torch.Tensor) -> list[float]:
    s = np.sort(x.double().numpy().reshape(-1))  # NaN last, like torch.sort
    n = s.size
    return [float(s[int(q * (n - 1))]) for q in (0.25, 0.5, 0.75)]


def test_exact_quantiles_large_ties_and_nan():
    g = torch.Generator().manual_seed(6)
    big = torch.rand((1 << 21) + 777, generator=g)  # above selection.DIRECT_MAX: the bracketed path
    got = [float(v) for v in arcee_fusion.exact_quantiles(big)]
    assert got == _sorted_quantiles(big)
    ties = (torch.randint(0, 5, (10001,), generator=g) * 0.25).to(torch.bfloat16)
    assert [float(v) for v in arcee_fusion.exact_quantiles(ties)] == _sorted_quantiles(ties)
    nan = torch.rand(1001, generator=g)
    nan[::7] = float("nan")
    got = [float(v) for v in arcee_fusion.exact_quantiles(nan)]
    want = _sorted_quantiles(nan)
    assert got[:2] == want[:2] and (np.isnan(got[2]) == np.isnan(want[2]))
    assert arcee_fusion.quantile_ranks(1) == (0, 0, 0) and arcee_fusion.quantile_ranks(1_000_000) == (
        249999,
        499999,
        749999,
    )


def test_sampled_quantiles_draw_like_mergekit():
    """Above 1M elements with a generator: one randint(n, (1M,)) draw, then the ranks in the sample."""
    x = torch.rand(1_200_000, generator=torch.Generator().manual_seed(7))
    got = [float(v) for v in arcee_fusion.sampled_quantiles(x, torch.Generator().manual_seed(99))]
    idx = torch.randint(x.numel(), (1_000_000,), generator=torch.Generator().manual_seed(99))
    assert got == _sorted_quantiles(x[idx])
    assert got != [float(v) for v in arcee_fusion.exact_quantiles(x)]


def test_arcee_fusion_large_tensor_exact_by_default_sampled_with_a_generator():
    base = _rand(1100, 1000, seed=8, scale=0.02)
    model = base + _rand(1100, 1000, seed=9, scale=0.003)
    a = _merge("arcee_fusion", base, [model], ctx=MergeContext("w", seed=1))
    b = _merge("arcee_fusion", base, [model], ctx=MergeContext("w", seed=2))
    assert torch.equal(a, b)  # no sampling without a generator: the seed does not matter
    imp = torch.abs(model - base) * arcee_fusion.row_kl(model, base)
    q1, med, q3 = _sorted_quantiles(imp)
    thr32 = torch.tensor(med) + 1.5 * (torch.tensor(q3) - torch.tensor(q1))  # the fence in float32
    assert torch.equal(a, torch.where(imp >= thr32, model, base))
    c = _merge("arcee_fusion", base, [model], ctx=MergeContext("w", generator=torch.Generator().manual_seed(5)))
    flips = a != c
    assert 0 < int(flips.sum()) < 0.005 * a.numel()  # only entries between the two thresholds
    assert bool(((a[flips] == base[flips]) | (a[flips] == model[flips])).all())


# ---------------------------------------------------------------- ram / ramplus_tl


def _ram_ref(base, models, eps=1e-5, plus=False, r=0.1, alpha=0.2):
    """Per entry, from the definition, in float64 (λ in float32)."""
    b = base.double().numpy()
    d = np.stack([m.double().numpy() - b for m in models])
    on = np.abs(d) > eps
    c = on.sum(axis=0)
    lam = np.ones(len(models))
    if plus:
        shared = (on & (c > 1)).sum(axis=tuple(range(1, d.ndim)))
        unique = (on & (c == 1)).sum(axis=tuple(range(1, d.ndim)))
        # λ in float32 arithmetic, as mergekit (integer counts divided by a float32 clamp)
        f = np.float32
        rho = shared.astype(f) / np.maximum(unique.astype(f), f(eps))
        lam = (f(1) + f(r) * np.clip(rho, f(0), f(alpha))).astype(np.float64)
    out = b.copy()
    for i in range(len(models)):
        alone = on[i] & (c == 1)
        with_others = on[i] & (c > 1)
        out = out + np.where(alone, lam[i] * d[i], 0.0) + np.where(with_others, d[i] / np.maximum(c, 1), 0.0)
    return out


@pytest.mark.parametrize("plus", [False, True])
@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_ram_against_float64_reference(n, plus):
    name = "ramplus_tl" if plus else "ram"
    params = {"r": 0.5, "alpha": 0.3} if plus else {}
    base, models = _sparse_family(n, seed=10 + n, dtype=torch.float64)
    ref = _ram_ref(base, models, plus=plus, **params)
    out = _merge(name, base, models, params)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-13, atol=1e-16)
    base32, models32 = base.float(), [m.float() for m in models]
    out32 = _merge(name, base32, models32, params)
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(
        out32.double().numpy(), _ram_ref(base32, models32, plus=plus, **params), rtol=1e-6, atol=2e-8
    )
    # entries no model moves by more than epsilon stay the base, bit for bit
    idle = np.all(np.stack([np.abs(m.numpy() - base32.numpy()) <= 1e-5 for m in models32]), axis=0)
    assert np.array_equal(out32.numpy()[idle], base32.numpy()[idle])


def test_ram_epsilon_and_single_model():
    base, (m,) = _sparse_family(1, seed=20)
    d = m - base
    assert torch.equal(_merge("ram", base, [m]), torch.where(d.abs() > 1e-5, base + d, base))
    assert torch.equal(_merge("ram", base, [m], {"epsilon": 1.0}), base)  # nothing moves by more than 1
    assert torch.equal(_merge("ram", base, []), base)


def test_ramplus_lambda_caps_when_a_model_moves_nothing_alone():
    base = torch.zeros(10)
    a = torch.full((10,), 0.1)
    b = torch.full((10,), 0.3)  # both move every entry: shared 10, unique 0 -> ρ = 10/eps, capped at alpha
    out = _merge("ramplus_tl", base, [a, b], {"r": 0.5, "alpha": 0.2})
    assert torch.equal(out, torch.full((10,), 0.2))  # no unique entry: λ never applies, the mean
    c = torch.tensor([0.1] * 5 + [0.0] * 5)
    out = _merge("ramplus_tl", base, [b, c], {"r": 0.5, "alpha": 0.2})
    # b: shared 5, unique 5 -> ρ = 1 -> λ = 1 + 0.5·0.2 = 1.1 on its unique entries
    want = torch.tensor([0.2] * 5 + [torch.tensor(0.3) * torch.tensor(1.1, dtype=torch.float32)] * 5)
    assert torch.equal(out, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["ram", "ramplus_tl"])
def test_ram_column_chunks_change_no_bit(monkeypatch, name, dtype):
    base, models = _sparse_family(5, shape=(37, 29), seed=30, dtype=dtype)
    whole = _merge(name, base, models)
    monkeypatch.setattr(ram, "_CHUNK", 256)  # a multiple of torch's vector column groups, like 2**18
    assert torch.equal(_merge(name, base, models), whole)
    if name == "ramplus_tl":
        assert whole.dtype == torch.float32  # the float32 λ promotes half inputs, as in mergekit
    else:
        assert whole.dtype == dtype


# ---------------------------------------------------------------- the plan


def _plan_err(text: str):
    with pytest.raises(InputError) as ei:
        Plan.from_yaml(text, source="plan.yml").validate(check_paths=False)
    return str(ei.value)


@pytest.mark.parametrize(
    "text, needle",
    [
        (
            "merge_method: arcee_fusion\nbase_model: base\nmodels:\n- model: a\n- model: b\n",
            "plan.yml: models: arcee_fusion takes exactly 1 models besides the base, got 2",
        ),
        ("merge_method: arcee_fusion\nmodels:\n- model: a\n", "plan.yml: base_model: missing"),
        (
            "merge_method: arcee_fusion\nbase_model: base\nmodels:\n- model: a\nparameters: {qqq: 0.5}\n",
            "unknown parameter for arcee_fusion; arcee_fusion takes: no parameters",
        ),
        ("merge_method: ram\nmodels:\n- model: a\n- model: b\n", "plan.yml: base_model: missing"),
        (
            "merge_method: ram\nbase_model: base\nmodels:\n- model: base\n",
            "ram takes at least 1 models besides the base, got 0",
        ),
        (
            "merge_method: ramplus_tl\nbase_model: base\nmodels:\n- model: a\nparameters: {epsilom: 0.1}\n",
            "did you mean `epsilon`",
        ),
        (
            "merge_method: ramplus_tl\nbase_model: base\nmodels:\n- model: a\nparameters: {alpha: abc}\n",
            "parameters.alpha: `alpha` expects a number",
        ),
    ],
)
def test_plan_validation(text, needle):
    assert needle in _plan_err(text)


def test_ramplus_epsilon_check_before_any_tensor_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_llama(tmp_path / "base", n_layers=2, hidden=8, vocab=16)
    make_finetune(tmp_path / "base", tmp_path / "a", seed=1)
    text = "merge_method: ramplus_tl\nbase_model: base\nmodels:\n- model: a\nparameters:\n  epsilon: [{filter: mlp, value: 0.0}, {value: 1e-5}]\n"
    p = Plan.from_yaml(text, source=str(tmp_path / "plan.yml"))
    p.validate(check_paths=True)  # the filter is resolved per tensor: found when the headers are read
    from mergescope.io.checkpoint import Checkpoint

    monkeypatch.setattr(Checkpoint, "get", lambda *a, **k: pytest.fail("a tensor was read"))
    with pytest.raises(InputError, match=r"ramplus_tl needs epsilon > 0 .*tensor model\.layers\.0\.mlp"):
        p.validate(open_models=True)


@pytest.mark.parametrize("name", ["arcee_fusion", "ram", "ramplus_tl"])
def test_merge_of_a_plan_equals_the_method_per_tensor(tmp_path, monkeypatch, name):
    from mergescope.merge.run import merge_in_memory

    monkeypatch.chdir(tmp_path)
    make_llama(tmp_path / "base", n_layers=2, hidden=16, vocab=32, dtype=torch.bfloat16)
    n = 1 if name == "arcee_fusion" else 3
    for i in range(n):
        make_finetune(tmp_path / "base", tmp_path / f"ft{i}", scale=0.01, seed=i + 1)
    models = "".join(f"- model: ft{i}\n" for i in range(n))
    (tmp_path / "p.yml").write_text(f"merge_method: {name}\nbase_model: base\nmodels:\n{models}dtype: float32\n")
    got = merge_in_memory(tmp_path / "p.yml").tensors
    b = load_state(tmp_path / "base")
    fts = [load_state(tmp_path / f"ft{i}") for i in range(n)]
    assert set(got) == set(b)
    for k, t in got.items():
        want = REGISTRY[name].merge(b[k].float(), [f[k].float() for f in fts], [{}] * n, {}, MergeContext(k))
        assert t.dtype == torch.float32 and torch.equal(t, want), k
