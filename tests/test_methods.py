"""Merge methods (mergekit 0.1.5 semantics) against independent whole-tensor float64 references."""

import itertools
import math

import pytest
import torch

from mergescope.io.errors import InputError
from mergescope.merge.methods import REGISTRY, get_method, release_workspace
from mergescope.merge.methods import sparsify as sp
from mergescope.merge.methods.base import MergeContext

SHAPE = (48, 80)


def _rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _family(n_models=3, seed=0, shape=SHAPE):
    base = _rand(*shape, seed=seed)
    models = [base + _rand(*shape, seed=seed + 1 + i, scale=0.1) for i in range(n_models)]
    return base, models


def _merge(name, base, tensors, model_params, params=None, ctx=None):
    m = get_method(name)
    snapshot = [t.clone() for t in ([base] if base is not None else []) + list(tensors)]
    out = m.merge(base, list(tensors), model_params, params or {}, ctx or MergeContext(tensor_name="w"))
    after = ([base] if base is not None else []) + list(tensors)
    for a, b in zip(snapshot, after):
        assert torch.equal(a, b), "a merge method modified its inputs"
    return out


def _close(out, ref, atol=1e-5, rtol=1e-5):
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref.double(), atol=atol, rtol=rtol)


# ---------------------------------------------------------------- independent references (float64)


def ref_magnitude(delta, density):
    """Keep max(1, int(density n)) largest |x|; ties: a stable descending sort (lowest index first)."""
    if density >= 1:
        return delta.clone()
    n = delta.numel()
    if density <= 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * n))
    order = torch.argsort(delta.abs().flatten(), descending=True, stable=True)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[:k]] = True
    return torch.where(mask.view_as(delta), delta, torch.zeros_like(delta))


def ref_breadcrumbs(delta, density, gamma):
    if density >= 1:
        return delta.clone()
    n = delta.numel()
    target, n_top = int(density * n), int(gamma * n)
    n_bot = max(0, n - target - n_top)
    order = torch.argsort(delta.abs().flatten(), stable=True)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[n_bot : n_bot + target]] = True
    return torch.where(mask.view_as(delta), delta, torch.zeros_like(delta))


def ref_rescale_l1(orig, masked):
    before, after = orig.abs().sum(), masked.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked * (before / after)


def ref_gta(base, tensors, weights, *, trim=None, consensus=False, normalize=False, lam=1.0, rescale=False):
    """mergekit's generalized task arithmetic written out on whole float64 tensors."""
    B = base.double()
    deltas = []
    for t in tensors:
        d32 = t - base  # float32 like the inputs; the trim sees the same magnitudes
        d = trim(d32).double() if trim else d32.double()
        if rescale and trim:
            d = ref_rescale_l1(d32.double(), d)
        deltas.append(d)
    W = torch.stack([w * d for w, d in zip(weights, deltas)])
    w = torch.tensor(weights, dtype=torch.float64).view(-1, *([1] * base.dim()))
    if consensus:
        majority = torch.where(W.sum(0) >= 0, 1.0, -1.0).double()
        mask = (torch.sign(W) == majority).double()
        mixed = (W * mask).sum(0)
        divisor = (w * mask).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed = W.sum(0)
        divisor = w.sum()
        if divisor.abs() < 1e-8:
            divisor = torch.tensor(1.0, dtype=torch.float64)
    if normalize:
        mixed = mixed / divisor
    return B + lam * mixed


def ref_slerp(t, a, b):
    a64, b64 = a.double().flatten(), b.double().flatten()
    na, nb = a64.norm(), b64.norm()
    na = na if na > 1e-8 else 1.0
    nb = nb if nb > 1e-8 else 1.0
    dot = float(torch.clamp((a64 / na) @ (b64 / nb), -1, 1))
    if abs(dot) > 0.9995:
        res = (1 - t) * a64 + t * b64
    else:
        th = math.acos(dot)
        res = math.sin((1 - t) * th) / math.sin(th) * a64 + math.sin(t * th) / math.sin(th) * b64
    return res.view(a.shape)


def ref_nuslerp_vectors(t, v0, v1):
    """Row-wise over the last dim, float64."""
    v0, v1 = v0.double(), v1.double()
    u0 = v0 / v0.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / v1.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    c = (u0 * u1).sum(-1, keepdim=True).clamp(-1, 1)
    th = torch.acos(c)
    spherical = (torch.sin((1 - t) * th) * v0 + torch.sin(t * th) * v1) / torch.sin(th)
    return torch.where(1 - c * c <= 1e-16, (1 - t) * v0 + t * v1, spherical)


def ref_model_stock(base, tensors, filter_wise=False):
    w0 = base.double()
    ws = [t.double() for t in tensors]
    if filter_wise:
        rows = lambda x: x if x.dim() > 1 else x.unsqueeze(0)  # noqa: E731
        w0r, wsr = rows(w0), [rows(w) for w in ws]
    else:
        w0r, wsr = w0.flatten(), [w.flatten() for w in ws]
    offs = [w - w0r for w in wsr]
    cos = []
    for a, b in itertools.combinations(offs, 2):
        cos.append(((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cos).mean(0).unsqueeze(-1)
    n = len(ws)
    denom = 1 + (n - 1) * c
    t = torch.where(denom.abs() < 1e-6, torch.zeros_like(c), n * c / denom)
    avg = sum(wsr) / n
    return (t * avg + (1 - t) * w0r).reshape(base.shape)


# ---------------------------------------------------------------- registry and parameter specs

MERGEKIT_PARAMS = {
    # name: {param: (per_model, default, required)}
    "linear": {"weight": (True, None, True), "normalize": (False, True, False)},
    "task_arithmetic": {
        "weight": (True, None, True),
        "density": (True, 1.0, False),
        "normalize": (False, False, False),
        "rescale": (False, False, False),
        "lambda": (False, 1.0, False),
        "int8_mask": (False, False, False),
    },
    "ties": {
        "weight": (True, None, True),
        "density": (True, 1.0, False),
        "normalize": (False, True, False),
        "rescale": (False, False, False),
        "lambda": (False, 1.0, False),
        "int8_mask": (False, False, False),
    },
    "dare_linear": {
        "weight": (True, None, True),
        "density": (True, 1.0, False),
        "normalize": (False, False, False),
        "rescale": (False, True, False),
        "lambda": (False, 1.0, False),
        "int8_mask": (False, False, False),
    },
    "dare_ties": {
        "weight": (True, None, True),
        "density": (True, 1.0, False),
        "normalize": (False, False, False),
        "rescale": (False, True, False),
        "lambda": (False, 1.0, False),
        "int8_mask": (False, False, False),
    },
    "breadcrumbs": {
        "weight": (True, None, True),
        "density": (True, 1.0, False),
        "gamma": (True, 0.01, False),
        "normalize": (False, False, False),
        "rescale": (False, False, False),
        "lambda": (False, 1.0, False),
        "int8_mask": (False, False, False),
    },
    "breadcrumbs_ties": {
        "weight": (True, None, True),
        "density": (True, 1.0, False),
        "gamma": (True, 0.01, False),
        "normalize": (False, False, False),
        "rescale": (False, False, False),
        "lambda": (False, 1.0, False),
        "int8_mask": (False, False, False),
    },
    "della": {
        "weight": (True, None, True),
        "density": (True, 1.0, False),
        "epsilon": (True, 0.15, False),
        "normalize": (False, True, False),
        "rescale": (False, True, False),
        "lambda": (False, 1.0, False),
        "int8_mask": (False, False, False),
    },
    "della_linear": {
        "weight": (True, None, True),
        "density": (True, 1.0, False),
        "epsilon": (True, 0.15, False),
        "normalize": (False, False, False),
        "rescale": (False, True, False),
        "lambda": (False, 1.0, False),
        "int8_mask": (False, False, False),
    },
    "slerp": {"t": (False, None, True)},
    "nuslerp": {
        "weight": (True, None, True),
        "nuslerp_flatten": (False, True, False),
        "nuslerp_row_wise": (False, False, False),
    },
    "model_stock": {"filter_wise": (False, False, False)},
    "passthrough": {"scale": (True, None, False)},
    "multislerp": {
        "weight": (True, None, True),
        "normalize_weights": (False, True, False),
        "eps": (False, 1e-8, False),
    },
    "karcher": {"max_iter": (False, 10, False), "tol": (False, 1e-5, False)},
    "nearswap": {"t": (False, None, True)},
    "sce": {"int8_mask": (False, False, False), "select_topk": (False, 1.0, False)},
    "arcee_fusion": {},
    "ram": {"epsilon": (False, 1e-5, False)},
    "ramplus_tl": {"r": (False, 0.1, False), "alpha": (False, 0.2, False), "epsilon": (False, 1e-5, False)},
}


def test_registry_names_and_param_specs_match_mergekit():
    assert {n for n, m in REGISTRY.items() if not m.extension} == set(MERGEKIT_PARAMS)
    assert {n for n, m in REGISTRY.items() if m.extension} == {"tsv", "iso_c", "iso_cts"}
    for name, expected in MERGEKIT_PARAMS.items():
        m = REGISTRY[name]
        got = {p.name: (p.per_model, p.default, p.required) for p in m.params}
        assert got == expected, name
    from mergescope.merge.methods.base import BaseUse

    base_use = {"linear": BaseUse.INPUT, "nuslerp": BaseUse.OPTIONAL, "passthrough": BaseUse.INPUT}
    base_use |= {"multislerp": BaseUse.OPTIONAL, "karcher": BaseUse.INPUT}
    for name, m in ((n, m) for n, m in REGISTRY.items() if not m.extension):
        assert m.base is base_use.get(name, BaseUse.REQUIRED), name
    assert (REGISTRY["slerp"].min_models, REGISTRY["slerp"].max_models) == (1, 1)
    assert (REGISTRY["nuslerp"].min_models, REGISTRY["nuslerp"].max_models) == (2, 2)
    assert REGISTRY["model_stock"].min_models == 2
    assert (REGISTRY["passthrough"].min_models, REGISTRY["passthrough"].max_models) == (1, 1)
    assert {n for n, m in REGISTRY.items() if m.randomized} == {"dare_linear", "dare_ties", "della", "della_linear"}


def test_get_method_suggests_and_lists():
    assert get_method("ties") is REGISTRY["ties"]
    with pytest.raises(InputError) as e:
        get_method("dare_tie")
    assert "did you mean 'dare_ties'" in str(e.value) and "model_stock" in str(e.value)
    with pytest.raises(InputError):
        get_method("frankenstein")


# ---------------------------------------------------------------- sparsification


def test_magnitude_trim_keeps_exactly_k_with_ties():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-4, 5, (37, 53), generator=g).float()  # heavy ties at every threshold
    for density in (0.01, 0.2, 0.5, 0.77, 0.999):
        out = sp.sparsify(x, "magnitude", density)
        ref = ref_magnitude(x, density)
        assert torch.equal(out, ref), density
        assert int((out != 0).sum()) <= max(1, int(density * x.numel()))
        kept = torch.zeros_like(x, dtype=torch.bool).flatten()
        kept[torch.argsort(x.abs().flatten(), descending=True, stable=True)[: max(1, int(density * x.numel()))]] = 1
        assert int(sp.topk_mask(x.abs(), max(1, int(density * x.numel()))).sum()) == max(1, int(density * x.numel()))


def test_magnitude_trim_large_tensor_path_is_exact():
    """Above the direct-kthvalue size the sampled bracket is used; still exact, ties included."""
    n = (1 << 21) + 4099
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, generator=g).to(torch.bfloat16).float()  # bf16 values: many exact ties
    for density in (0.2, 0.9, 0.003):
        k = max(1, int(density * n))
        mask = sp.topk_mask(x.abs(), k)
        assert int(mask.sum()) == k
        order = torch.argsort(x.abs(), descending=True, stable=True)
        ref = torch.zeros(n, dtype=torch.bool)
        ref[order[:k]] = True
        assert torch.equal(mask, ref), density
    release_workspace()


def test_magnitude_trim_never_sorts_and_survives_a_bad_sample(monkeypatch):
    n = (1 << 21) + 17
    x = torch.randn(n, generator=torch.Generator().manual_seed(6))
    k = int(0.2 * n)
    ref = torch.zeros(n, dtype=torch.bool)
    ref[torch.argsort(x.abs(), descending=True, stable=True)[:k]] = True

    def forbidden(*a, **kw):
        raise AssertionError("whole-tensor sort")

    for fn in ("sort", "argsort", "topk", "msort"):
        monkeypatch.setattr(torch, fn, forbidden)
    monkeypatch.setattr(torch.Tensor, "sort", forbidden)
    monkeypatch.setattr(torch.Tensor, "argsort", forbidden)
    assert torch.equal(sp.sparsify(x, "magnitude", 0.2) != 0, ref)
    # a sample that misses the threshold (only the first 1 % of positions) must fall back, still exact
    real_randint = torch.randint
    monkeypatch.setattr(torch, "randint", lambda high, size, **kw: real_randint(high // 100, size, **kw))
    xs = torch.arange(n, dtype=torch.float32)  # ascending: the sample sees only small values
    assert torch.equal(sp.topk_mask(xs, k), xs >= n - k)
    release_workspace()


def test_magnitude_edge_cases():
    x = _rand(10, 10)
    assert torch.equal(sp.sparsify(x, "magnitude", 1.0), x)
    assert torch.equal(sp.sparsify(x, "magnitude", 1.5), x)
    assert torch.equal(sp.sparsify(x, "magnitude", 0.0), torch.zeros_like(x))
    one = sp.sparsify(x, "magnitude", 0.001)  # int(0.1) = 0 -> at least one kept
    assert int((one != 0).sum()) == 1 and one.abs().max() == x.abs().max()
    z = torch.zeros(7, 9)
    assert torch.equal(sp.sparsify(z, "magnitude", 0.3, rescale=True), z)


def test_magnitude_rescale_matches_l1():
    x = _rand(30, 40, seed=2)
    out = sp.sparsify(x, "magnitude", 0.3, rescale=True)
    _close(out, ref_rescale_l1(x.double(), ref_magnitude(x, 0.3).double()))


@pytest.mark.parametrize("density,gamma", [(0.9, 0.01), (0.5, 0.1), (0.3, 0.8), (0.95, 0.2), (0.0, 0.01)])
def test_breadcrumbs_mask(density, gamma):
    g = torch.Generator().manual_seed(11)
    x = torch.randint(-9, 10, (41, 29), generator=g).float()  # ties at both cuts
    out = sp.sparsify(x, "magnitude_outliers", density, gamma=gamma)
    assert torch.equal(out, ref_breadcrumbs(x, density, gamma))


def test_dare_mask_rate_rescale_and_reproducibility():
    x = _rand(200, 500, seed=4) + 3.0  # no zeros
    g1 = torch.Generator().manual_seed(1)
    out = sp.sparsify(x, "random", 0.3, rescale=True, generator=g1)
    kept = out != 0
    rate = kept.double().mean().item()
    sigma = math.sqrt(0.3 * 0.7 / x.numel())
    assert abs(rate - 0.3) < 6 * sigma
    ratio = x.double().abs().sum() / (x.double() * kept).abs().sum()
    _close(out, torch.where(kept, x.double() * ratio, 0.0))
    again = sp.sparsify(x, "random", 0.3, rescale=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    other = sp.sparsify(x, "random", 0.3, rescale=True, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(out, other)
    plain = sp.sparsify(x, "random", 0.3, rescale=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain, torch.where(kept, x, 0.0))  # same draws, no rescale
    assert torch.equal(sp.sparsify(x, "random", 1.0), x)


def test_della_keep_probability_follows_rank():
    rows, m = 400, 101
    x = torch.arange(1, m + 1, dtype=torch.float32).repeat(rows, 1)
    x = x[:, torch.randperm(m, generator=torch.Generator().manual_seed(0))]  # ranks known per column
    density, eps = 0.5, 0.3
    out = sp.sparsify(
        x, "della_magprune", density, epsilon=eps, rescale=False, generator=torch.Generator().manual_seed(7)
    )
    rate = (out != 0).double().mean(0)  # per column
    rank_norm = (x[0] - 1) / (m - 1)
    expected = density - eps + 2 * eps * rank_norm
    assert (rate - expected).abs().max() < 6 * math.sqrt(0.25 / rows)
    assert torch.equal(out[out != 0], x[out != 0])
    with pytest.raises(InputError):
        sp.sparsify(x, "della_magprune", 0.9, epsilon=0.15)
    with pytest.raises(InputError):
        sp.sparsify(x, "della_magprune", 0.1, epsilon=0.15)
    lone = sp.sparsify(torch.ones(5, 1), "della_magprune", 0.5, epsilon=0.1, generator=torch.Generator())
    assert lone.shape == (5, 1)  # mergekit fails on 1-element rows (0/0); here p = density


def test_della_rescale_matches_l1():
    x = _rand(20, 60, seed=9)
    out = sp.sparsify(x, "della_magprune", 0.4, epsilon=0.1, rescale=True, generator=torch.Generator().manual_seed(3))
    kept = out != 0
    _close(out, ref_rescale_l1(x.double(), torch.where(kept, x.double(), 0.0)))


# ---------------------------------------------------------------- generalized task arithmetic

GTA_CASES = {
    "task_arithmetic": dict(trim=None, consensus=False, normalize=False, rescale=False),
    "ties": dict(trim="magnitude", consensus=True, normalize=True, rescale=False),
    "breadcrumbs": dict(trim="breadcrumbs", consensus=False, normalize=False, rescale=False),
    "breadcrumbs_ties": dict(trim="breadcrumbs", consensus=True, normalize=False, rescale=False),
}


def _trim_fn(kind, densities, gammas):
    it = iter(range(len(densities)))

    def f(d):
        i = next(it)
        if kind == "magnitude":
            return ref_magnitude(d, densities[i])
        return ref_breadcrumbs(d, densities[i], gammas[i])

    return f if kind else None


@pytest.mark.parametrize("name", list(GTA_CASES))
@pytest.mark.parametrize("weights", [[1.0, 0.5, 0.8], [0.7, -0.4, 1.2], [1.0]])
def test_gta_methods_against_reference(name, weights):
    case = GTA_CASES[name]
    base, models = _family(len(weights), seed=21)
    densities = [0.3, 0.6, 0.45][: len(weights)]
    gammas = [0.05, 0.02, 0.1][: len(weights)]
    mps = [{"weight": w, "density": d, "gamma": g} for w, d, g in zip(weights, densities, gammas)]
    if name in ("task_arithmetic", "ties"):
        mps = [{k: v for k, v in mp.items() if k != "gamma"} for mp in mps]
    for normalize, lam in ((case["normalize"], 1.0), (not case["normalize"], 0.7)):
        out = _merge(name, base, models, mps, {"normalize": normalize, "lambda": lam})
        ref = ref_gta(
            base,
            models,
            weights,
            trim=_trim_fn(case["trim"], densities, gammas),
            consensus=case["consensus"],
            normalize=normalize,
            lam=lam,
        )
        _close(out, ref)


def test_ties_defaults_normalize_and_rescale_option():
    base, models = _family(3, seed=5)
    mps = [{"weight": w, "density": 0.4} for w in (0.3, 0.3, 0.6)]
    out = _merge("ties", base, models, mps)  # defaults: normalize true, lambda 1, rescale false
    ref = ref_gta(base, models, [0.3, 0.3, 0.6], trim=lambda d: ref_magnitude(d, 0.4), consensus=True, normalize=True)
    _close(out, ref)
    out_r = _merge("ties", base, models, mps, {"rescale": True})
    ref_r = ref_gta(
        base,
        models,
        [0.3, 0.3, 0.6],
        trim=lambda d: ref_magnitude(d, 0.4),
        consensus=True,
        normalize=True,
        rescale=True,
    )
    _close(out_r, ref_r)
    assert not torch.allclose(out, out_r)


def test_ties_sign_election_uses_weighted_sum_and_ties_go_positive():
    base = torch.zeros(1, 4)
    a = torch.tensor([[1.0, -3.0, 2.0, 1.0]])
    b = torch.tensor([[-2.0, 1.0, -2.0, 0.0]])
    out = _merge("ties", base, [a, b], [{"weight": 1.0}, {"weight": 1.0}])
    # col0: sum -1 -> '-': keep b (-2)/1; col1: sum -2 -> '-': keep a (-3)/1;
    # col2: sum 0 -> '+': keep a (2)/1; col3: only a nonzero (+1) -> 1/1
    assert torch.equal(out, torch.tensor([[-2.0, -3.0, 2.0, 1.0]]))
    # count-wise majority would differ from the sum: 2 small positives vs one big negative
    c = [torch.tensor([[1.0]]), torch.tensor([[1.0]]), torch.tensor([[-5.0]])]
    out = _merge("ties", torch.zeros(1, 1), c, [{"weight": 1.0}] * 3)
    assert torch.equal(out, torch.tensor([[-5.0]]))


def test_negative_weight_negates_task_vector():
    base, (m,) = _family(1, seed=8)
    out = _merge("task_arithmetic", base, [m], [{"weight": -1.0}])
    _close(out, 2 * base.double() - m.double())
    # in TIES the negated vector votes with its weighted sign, and its weight enters the divisor
    base, models = _family(2, seed=9)
    out = _merge("ties", base, models, [{"weight": 1.0, "density": 0.5}, {"weight": -0.5, "density": 0.5}])
    ref = ref_gta(base, models, [1.0, -0.5], trim=lambda d: ref_magnitude(d, 0.5), consensus=True, normalize=True)
    _close(out, ref)


def test_gta_edge_cases():
    base, models = _family(2, seed=13)
    # zero deltas: the base comes back, no NaN from the divisor
    for name in ("ties", "task_arithmetic", "breadcrumbs_ties", "dare_ties", "della"):
        out = _merge(
            name,
            base,
            [base.clone(), base.clone()],
            [{"weight": 1.0, "density": 0.5}] * 2,
            ctx=MergeContext(tensor_name="w", seed=1),
        )
        assert torch.equal(out, base), name
    # density 1 = no trimming: ties == sign-consensus task arithmetic
    out = _merge("ties", base, models, [{"weight": 0.5}, {"weight": 0.5}])
    _close(out, ref_gta(base, models, [0.5, 0.5], consensus=True, normalize=True))
    # one model with normalize: the weight cancels, the trimmed delta is added whole
    out = _merge("ties", base, models[:1], [{"weight": 0.25, "density": 0.3}])
    _close(out, base.double() + ref_magnitude(models[0] - base, 0.3).double())
    # weights that sum to 0 without consensus: divisor falls back to 1
    out = _merge("task_arithmetic", base, models, [{"weight": 1.0}, {"weight": -1.0}], {"normalize": True})
    _close(out, base.double() + models[0].double() - models[1].double())
    # dare/della at density 1 are deterministic and equal their non-random counterparts
    _close(
        _merge("dare_ties", base, models, [{"weight": 0.6}, {"weight": 0.4}], {"normalize": True}),
        ref_gta(base, models, [0.6, 0.4], consensus=True, normalize=True),
    )
    _close(_merge("della_linear", base, models, [{"weight": 0.6}, {"weight": 0.4}]), ref_gta(base, models, [0.6, 0.4]))


def test_gta_param_resolution():
    base, models = _family(2, seed=14)
    with pytest.raises(InputError, match="weight"):
        _merge("ties", base, models, [{"density": 0.5}, {"density": 0.5}])
    with pytest.raises(InputError, match="base"):
        _merge("ties", None, models, [{"weight": 1.0}] * 2)
    # per-model params fall back to the global value, then to the default
    a = _merge("ties", base, models, [{}, {}], {"weight": 0.5, "density": 0.3})
    b = _merge("ties", base, models, [{"weight": 0.5, "density": 0.3}] * 2)
    assert torch.equal(a, b)


def test_int8_mask_has_no_numerical_effect():
    base, models = _family(3, seed=15)
    mps = [{"weight": 1.0, "density": 0.5}] * 3
    assert torch.equal(_merge("ties", base, models, mps, {"int8_mask": True}), _merge("ties", base, models, mps))


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties", "della", "della_linear"])
def test_random_methods_reproducible_per_tensor(name):
    base, models = _family(3, seed=16)
    mps = [{"weight": 0.4, "density": 0.4, "epsilon": 0.1}] * 3
    if name.startswith("dare"):
        mps = [{"weight": 0.4, "density": 0.4}] * 3
    run = lambda seed, tname: _merge(name, base, models, mps, ctx=MergeContext(tensor_name=tname, seed=seed))  # noqa
    a1 = run(1, "x")
    run(1, "y")  # another tensor in between must not shift the draws
    assert torch.equal(a1, run(1, "x"))
    assert not torch.equal(a1, run(2, "x"))
    assert not torch.equal(a1, run(1, "y"))
    # it is a real drop: different from the density-1 result
    full = [dict(mp, density=1.0) for mp in mps]
    assert not torch.allclose(a1, _merge(name, base, models, full))


def test_dare_linear_against_reference_with_recovered_mask():
    base, (m,) = _family(1, seed=17, shape=(100, 200))
    out = _merge(
        "dare_linear", base, [m], [{"weight": 0.8, "density": 0.35}], ctx=MergeContext(tensor_name="t", seed=3)
    )
    d = (m - base).double()
    kept = (out.double() - base.double()).abs() > 1e-12
    assert abs(kept.double().mean().item() - 0.35) < 0.02
    ref = base.double() + 0.8 * ref_rescale_l1(d, torch.where(kept, d, 0.0))
    _close(out, ref)


def test_gta_bfloat16_inputs_compute_in_bfloat16():
    base, models = _family(2, seed=18)
    bb, mb = base.bfloat16(), [m.bfloat16() for m in models]
    out = _merge("ties", bb, mb, [{"weight": 0.5, "density": 0.5}] * 2)
    assert out.dtype == torch.bfloat16
    ref = ref_gta(
        bb.float(),
        [m.float() for m in mb],
        [0.5, 0.5],
        trim=lambda d: ref_magnitude(d, 0.5),
        consensus=True,
        normalize=True,
    )
    _close(out, ref, atol=0.03, rtol=0.02)


# ---------------------------------------------------------------- linear


def test_linear_against_reference():
    _, models = _family(3, seed=30)
    w = [0.2, 0.5, 0.3]
    out = _merge("linear", None, models, [{"weight": x} for x in w])
    _close(out, sum(x * m.double() for x, m in zip(w, models)) / sum(w))
    out = _merge("linear", None, models, [{"weight": x} for x in (1.0, 2.0, -1.0)], {"normalize": False})
    _close(out, models[0].double() + 2 * models[1].double() - models[2].double())
    out = _merge("linear", None, models[:1], [{"weight": 3.0}])
    _close(out, models[0])
    with pytest.raises(InputError):
        _merge("linear", None, models[:2], [{"weight": 1.0}, {"weight": -1.0}])
    half = _merge("linear", None, [m.half() for m in models], [{"weight": 1.0}] * 3)
    assert half.dtype == torch.float16


# ---------------------------------------------------------------- slerp


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0, 1.4])
def test_slerp_against_reference(t):
    base, (m,) = _family(1, seed=31)
    other = _rand(*SHAPE, seed=99)  # far from colinear
    out = _merge("slerp", base, [other], None, {"t": t})
    _close(out, ref_slerp(t, base, other))
    if t == 0.0:
        _close(out, base)
    if t == 1.0:
        _close(out, other)


def test_slerp_colinear_falls_back_to_lerp():
    a = _rand(20, 30, seed=32)
    for b in (2.5 * a, -a, a + 1e-6):
        out = _merge("slerp", a, [b], None, {"t": 0.25})
        _close(out, 0.75 * a.double() + 0.25 * b.double())
    z = torch.zeros(5)
    _close(_merge("slerp", z, [torch.ones(5)], None, {"t": 0.5}), ref_slerp(0.5, z, torch.ones(5)))


def test_slerp_needs_base_and_t():
    a = _rand(3, 3)
    with pytest.raises(InputError):
        _merge("slerp", None, [a], None, {"t": 0.5})
    with pytest.raises(InputError, match="'t'"):
        _merge("slerp", a, [a], None, {})


# ---------------------------------------------------------------- nuslerp


def test_nuslerp_against_reference():
    base, models = _family(2, seed=40)
    x0, x1 = _rand(*SHAPE, seed=41), _rand(*SHAPE, seed=42)
    w = [{"weight": 1.0}, {"weight": 3.0}]  # t = 0.75
    # no base, flattened (default)
    out = _merge("nuslerp", None, [x0, x1], w)
    _close(out, ref_nuslerp_vectors(0.75, x0.flatten(), x1.flatten()).view(SHAPE))
    # with base: task vectors interpolated
    out = _merge("nuslerp", base, models, w)
    d0, d1 = (models[0] - base).flatten(), (models[1] - base).flatten()
    _close(out, base.double() + ref_nuslerp_vectors(0.75, d0, d1).view(SHAPE))
    # rows, and columns with row_wise
    out = _merge("nuslerp", None, [x0, x1], w, {"nuslerp_flatten": False})
    _close(out, ref_nuslerp_vectors(0.75, x0, x1))
    out = _merge("nuslerp", None, [x0, x1], w, {"nuslerp_flatten": False, "nuslerp_row_wise": True})
    _close(out, ref_nuslerp_vectors(0.75, x0.T, x1.T).T)
    # weights summing to ~0 -> t = 0.5; colinear -> lerp
    out = _merge("nuslerp", None, [x0, 3 * x0], [{"weight": 1.0}, {"weight": -1.0}])
    _close(out, 2 * x0.double())


# ---------------------------------------------------------------- model_stock


@pytest.mark.parametrize("filter_wise", [False, True])
@pytest.mark.parametrize("n", [2, 3])
def test_model_stock_against_reference(filter_wise, n):
    base, models = _family(n, seed=50)
    models = [m + 0.05 * (models[0] - base) for m in models]  # positively correlated offsets
    out = _merge("model_stock", base, models, None, {"filter_wise": filter_wise})
    _close(out, ref_model_stock(base, models, filter_wise))
    bias_base, bias_models = _family(n, seed=51, shape=(33,))
    out = _merge("model_stock", bias_base, bias_models, None, {"filter_wise": filter_wise})
    _close(out, ref_model_stock(bias_base, bias_models, filter_wise))


def test_model_stock_singular_keeps_base():
    base = _rand(4, 6, seed=52)
    d = _rand(4, 6, seed=53)
    out = _merge("model_stock", base, [base + d, base - d], None)  # cos = -1, denominator 0
    _close(out, base)


# ---------------------------------------------------------------- passthrough


def test_passthrough():
    x = _rand(5, 7, seed=60)
    assert torch.equal(_merge("passthrough", None, [x], [{}]), x)
    _close(_merge("passthrough", None, [x], [{"scale": 0.5}]), 0.5 * x.double())
    with pytest.raises(InputError):
        _merge("passthrough", None, [x, x], [{}, {}])


# ---------------------------------------------------------------- streaming kernel (gta_stream)


def _stream_vs_merge(name, base, models, mps, params=None, out_dtype=torch.bfloat16):
    """The streaming kernel on the stored tensors == gta_merge on float32 copies, bit for bit."""
    m = get_method(name)
    ctx = MergeContext(tensor_name="w")
    got = m.stream(base, models, mps, dict(params or {}), ctx, out_dtype)
    assert got is not None and got.dtype == out_dtype and got.shape == base.shape
    ref = m.merge(base.float(), [x.float() for x in models], mps, dict(params or {}), ctx).to(out_dtype)
    assert torch.equal(
        got.view(-1).view(torch.int16 if out_dtype.itemsize == 2 else torch.int32),
        ref.view(-1).view(torch.int16 if out_dtype.itemsize == 2 else torch.int32),
    )
    return got


@pytest.mark.parametrize("c_kernels", [True, False])  # large n: the analysis kernel's buckets, or a sample
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n", [3000, 300_000])  # small: direct selection; large: bracketed
def test_stream_kernel_equals_general_path(dtype, n, c_kernels, monkeypatch):
    from mergescope.merge.methods import gta_stream
    from mergescope.stats import kernels, selection

    if not c_kernels:
        monkeypatch.setenv("MERGESCOPE_NO_C_KERNELS", "1")
    elif n < 10_000:
        pytest.skip("small tensors never use the kernels")
    elif kernels.lib() is None:
        pytest.skip(f"no C kernels: {kernels.build_error}")
    routes = {"sample": 0, "buckets": 0}
    orig_sample, orig_buckets = selection._sample_bracket, selection._bucket_brackets

    def count(name, fn):
        def wrapped(*a):
            routes[name] += 1
            return fn(*a)

        return wrapped

    monkeypatch.setattr(selection, "_sample_bracket", count("sample", orig_sample))
    monkeypatch.setattr(selection, "_bucket_brackets", count("buckets", orig_buckets))
    monkeypatch.setattr(gta_stream, "CHUNK", 1 << 14)  # many chunks: tie budgets cross chunk boundaries
    monkeypatch.setattr(selection, "STREAM_DIRECT_MAX", 1 << 16)
    g = torch.Generator().manual_seed(n)
    base = (0.02 * torch.randn(n, generator=g)).to(dtype)
    # bf16 task vectors are quantised: thousands of |delta| tie at every trim threshold
    models = [(base.float() + 0.0003 * (i + 1) * torch.randn(n, generator=g)).to(dtype) for i in range(3)]
    shape = (n // 100, 100)
    base, models = base.view(shape), [x.view(shape) for x in models]
    ws = [0.5, 0.3, 0.2]
    _stream_vs_merge("task_arithmetic", base, models, [{"weight": w} for w in ws])
    _stream_vs_merge(
        "task_arithmetic", base, models[:2], [{"weight": 1.0}, {"weight": -0.7}], {"normalize": True, "lambda": 1.3}
    )
    _stream_vs_merge("ties", base, models, [{"weight": w, "density": 0.2} for w in ws])
    _stream_vs_merge(
        "ties",
        base,
        models,
        [{"weight": 0.8, "density": 0.3}, {"weight": -0.5, "density": 0.9}, {"weight": 0.3, "density": 0.0}],
        {"normalize": False, "lambda": 0.7},
    )
    _stream_vs_merge("ties", base, models[:1], [{"weight": 1.0, "density": 0.05}], out_dtype=torch.float32)
    if n > 10_000:
        assert routes["buckets"] > 0
        assert (routes["sample"] > 0) == (not c_kernels)  # with the kernels, no sample is needed


def test_stream_kernel_bad_sample_falls_back_exactly(monkeypatch):
    from mergescope.stats import selection

    monkeypatch.setattr(selection, "_sample_bracket", lambda *a: (0.0, 1e-30))  # a bracket that misses
    monkeypatch.setattr(selection, "STREAM_DIRECT_MAX", 1 << 16)
    n = 200_000
    base = _rand(n, seed=1)
    models = [base + _rand(n, seed=2 + i, scale=0.01) for i in range(2)]
    _stream_vs_merge("ties", base, models, [{"weight": 1.0, "density": 0.2}, {"weight": 0.5, "density": 0.4}])


def test_stream_kernel_non_finite_large_tensor_keeps_nan_semantics(monkeypatch):
    """The analysis kernel reads non-finite values as 0, which is not the merge's rule (NaN never
    counts toward k): such tensors take the sampled route and still equal the general path."""
    from mergescope.stats import passes, selection, tvstats

    monkeypatch.setattr(selection, "STREAM_DIRECT_MAX", 1 << 16)
    n = 200_000
    base = _rand(n, seed=4)
    models = [base + _rand(n, seed=5 + i, scale=0.01) for i in range(2)]
    models[1] = models[1].clone()
    models[1][::997] = float("nan")
    models[1][5] = float("inf")
    assert tvstats.bucket_histograms(base, models) is None
    if passes.CPasses.usable(base, models[:1], torch.device("cpu")):
        assert tvstats.bucket_histograms(base, models[:1]) is not None  # the finite one alone would use it
    _stream_vs_merge(
        "ties",
        base,
        models,
        [{"weight": 1.0, "density": 0.2}, {"weight": 0.5, "density": 0.4}],
        out_dtype=torch.float32,
    )


def test_stream_kernel_nan_and_declines():
    base, models = _family(2)
    models[0] = models[0].clone()
    models[0][0, :5] = float("nan")
    _stream_vs_merge(
        "ties",
        base,
        models,
        [{"weight": 1.0, "density": 0.3}, {"weight": 1.0, "density": 0.5}],
        out_dtype=torch.float32,
    )
    m = get_method("ties")
    ctx = MergeContext(tensor_name="w")
    # rescale is left to the general path; so are methods without a kernel
    assert m.stream(base, models, [{"weight": 1.0}] * 2, {"rescale": True}, ctx, torch.float32) is None
    assert get_method("breadcrumbs").stream is None and get_method("dare_ties").stream is None
