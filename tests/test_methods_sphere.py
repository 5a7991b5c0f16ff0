"""multislerp, karcher, nearswap and sce (mergekit 0.1.5 semantics): the registry's functions against
independent float64 computations, their edge cases, the plan's validation and the what-if's reading."""

import math

import pytest
import torch

from mergescope.io.errors import InputError
from mergescope.merge.methods import REGISTRY, get_method
from mergescope.merge.methods.base import BaseUse, Linear, MergeContext, Trim
from mergescope.merge.plan import Plan
from mergescope.merge.whatif import coefficients, method_note

SHAPE = (40, 56)


def _family(n=3, seed=0, scale=0.1, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + scale * torch.randn(shape, generator=g) for _ in range(n)]


def _merge(name, base, tensors, model_params=None, params=None):
    m = get_method(name)
    before = [t.clone() for t in ([base] if base is not None else []) + list(tensors)]
    mps = model_params if model_params is not None else [{} for _ in tensors]
    out = m.merge(base, list(tensors), mps, params or {}, MergeContext(tensor_name="w"))
    after = ([base] if base is not None else []) + list(tensors)
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "a merge method modified its inputs"
    return out


def _close(out, ref, tol=2e-5):
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref.double(), atol=tol, rtol=tol)


# ---------------------------------------------------------------- independent references (float64)


def ref_multislerp(base, xs, ws, normalize=True, eps=1e-8):
    """Tangent-space barycentre at the weighted mean direction, mapped back, times the weighted mean norm."""
    b = base.double().flatten() if base is not None else 0.0
    x = torch.stack([t.double().flatten() - b for t in xs])
    w = torch.tensor(ws, dtype=torch.float64)
    if normalize:
        w = w / w.sum()
    norms = x.norm(dim=1)
    u = x / (norms[:, None] + eps)
    m = w @ u
    m = m / m.norm()
    v = w @ (u - (u @ m)[:, None] * m[None, :])
    tau = v.norm() + eps
    out = (m * math.cos(tau) + v * (math.sin(tau) / tau)) * float(w @ norms)
    return (out + b).view(xs[0].shape)


def ref_karcher(xs, max_iter=10, tol=1e-5):
    """Riemannian gradient steps (log map, exp map) from the normalised mean direction, equal weights."""
    x = torch.stack([t.double().flatten() for t in xs])
    norms = x.norm(dim=1)
    u = x[norms > tol] / norms[norms > tol, None]
    m = u.mean(0)
    m = m / m.norm()
    for _ in range(max_iter):
        c = (u @ m).clamp(-1, 1)
        th = torch.acos(c)
        far = th >= tol
        g = ((th / torch.sin(th))[:, None] * (u - c[:, None] * m))[far].sum(0) / u.shape[0]
        gn = float(g.norm())
        if gn < tol:
            break
        m = math.cos(gn) * m + math.sin(gn) * g / gn
        m = m / m.norm()
    return (norms.mean() * m).view(xs[0].shape)


def ref_nearswap(a, b, t):
    """a + clip(b − a, −t, t): what nearswap is for t >= 1e-6."""
    a, b = a.double(), b.double()
    return a + (b - a).clamp(-t, t)


def ref_sce(base, xs, select_topk=1.0):
    d = torch.stack([t.double().flatten() - base.double().flatten() for t in xs])
    n_models = d.shape[0]
    if select_topk < 1:
        var = d.var(dim=0, unbiased=False)
        k = int(int(torch.count_nonzero(var)) * select_topk)
        keep = torch.zeros_like(var)
        keep[torch.argsort(var, descending=True, stable=True)[:k]] = 1
        d = d * keep
    energy = (d**2).mean(dim=1)
    w = energy / energy.sum() if abs(float(energy.sum())) >= 1e-6 else torch.full((n_models,), 1 / n_models)
    elected = torch.where(d.sum(0) >= 0, 1.0, -1.0).double()
    kept = (torch.sign(d) == elected).double() * w[:, None]
    out = (kept * d).sum(0) / kept.sum(0).clamp(min=1e-6)
    return (base.double().flatten() + out).view(base.shape)


# ---------------------------------------------------------------- registry entries


def test_registry_traits():
    ms, ka, ns, sc = (REGISTRY[n] for n in ("multislerp", "karcher", "nearswap", "sce"))
    assert (ms.base, ms.linear, ms.trim, ms.elects_signs) == (BaseUse.OPTIONAL, Linear.WEIGHT_SHARES, Trim.NONE, False)
    assert (ka.base, ka.linear, ka.trim, ka.elects_signs) == (BaseUse.INPUT, Linear.EQUAL_MEAN, Trim.NONE, False)
    assert (ns.base, ns.linear, ns.trim, ns.elects_signs) == (BaseUse.REQUIRED, Linear.CLIPPED, Trim.NONE, False)
    assert (sc.base, sc.linear, sc.trim, sc.elects_signs) == (
        BaseUse.REQUIRED,
        Linear.ENERGY_SHARES,
        Trim.VARIANCE,
        True,
    )
    assert not Trim.VARIANCE.by_magnitude
    assert [(m.min_models, m.max_models) for m in (ms, ka, ns, sc)] == [(1, None), (1, None), (1, 1), (1, None)]
    assert sc.param("select_topk").max == 1 and ns.param("t").min == 0 and ka.param("max_iter").kind == "int"
    assert not any(m.randomized for m in (ms, ka, ns, sc))


# ---------------------------------------------------------------- multislerp


@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_multislerp_matches_reference(with_base, normalize):
    base, xs = _family(3, seed=1)
    ws = [1.0, 2.0, 0.5] if normalize else [0.3, 0.5, 0.2]
    out = _merge(
        "multislerp", base if with_base else None, xs, [{"weight": w} for w in ws], {"normalize_weights": normalize}
    )
    assert out.dtype == torch.float32
    _close(out, ref_multislerp(base if with_base else None, xs, ws, normalize))


def test_multislerp_single_model_identical_models_and_bf16():
    base, xs = _family(3, seed=2)
    assert torch.equal(_merge("multislerp", base, xs[:1], [{"weight": 0.3}]), xs[0])  # returned unchanged
    same = _merge("multislerp", base, [xs[0], xs[0].clone()], [{"weight": 1.0}, {"weight": 3.0}])
    _close(same, xs[0], 1e-5)
    b16 = [x.bfloat16() for x in xs]
    out = _merge("multislerp", base.bfloat16(), b16, [{"weight": 1.0}] * 3)
    assert out.dtype == torch.bfloat16
    _close(out, ref_multislerp(base.bfloat16(), b16, [1.0] * 3), 0.05)


def test_multislerp_antipodal_and_zero_weights():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(50, generator=g)
    out = _merge("multislerp", None, [a, -a], [{"weight": 1.0}, {"weight": 1.0}])  # falls back to the weighted sum
    assert torch.equal(out, a * 0.5 + (-a) * 0.5)
    with pytest.raises(InputError, match="weighted mean direction is zero"):
        _merge("multislerp", None, [a, -a, a.clone(), -a], [{"weight": 1.0}] * 4)
    with pytest.raises(InputError, match="weights sum to 0"):
        _merge("multislerp", None, [a, 2 * a], [{"weight": 1.0}, {"weight": -1.0}])


# ---------------------------------------------------------------- karcher


def test_karcher_matches_reference():
    base, xs = _family(3, seed=4, scale=0.5)
    out = _merge("karcher", None, [base, *xs])
    _close(out, ref_karcher([base, *xs]))
    tight = _merge("karcher", None, xs, params={"max_iter": 60, "tol": 1e-7})
    _close(tight, ref_karcher(xs, 60, 1e-7))
    # at the Karcher mean the log maps of the inputs cancel (first-order optimality)
    m = tight.double().flatten() / tight.double().norm()
    u = torch.stack([x.double().flatten() / x.double().norm() for x in xs])
    c = (u @ m).clamp(-1, 1)
    log = (torch.acos(c) / torch.sqrt(1 - c**2))[:, None] * (u - c[:, None] * m)
    assert float(log.mean(0).norm()) < 1e-5
    assert math.isclose(float(tight.double().norm()), float(sum(x.double().norm() for x in xs) / 3), rel_tol=1e-6)


def test_karcher_edge_cases():
    base, xs = _family(2, seed=5)
    assert torch.equal(_merge("karcher", None, xs[:1]), xs[0])
    _close(_merge("karcher", None, [xs[0], xs[0].clone()]), xs[0], 1e-5)
    zero = torch.zeros(SHAPE)
    assert torch.equal(_merge("karcher", None, [zero, zero.clone()]), zero)
    # a zero input has no direction but counts toward the mean norm: half of x's norm, x's direction
    _close(_merge("karcher", None, [xs[0], zero]), xs[0] / 2, 1e-6)
    u = [x.double() / x.double().norm() for x in xs]
    start = (u[0] + u[1]) / (u[0] + u[1]).norm() * (xs[0].double().norm() + xs[1].double().norm()) / 2
    _close(_merge("karcher", None, xs, params={"max_iter": 0}), start, 1e-6)  # no step: the normalised mean
    ortho = _merge("karcher", None, [torch.tensor([3.0, 0.0]), torch.tensor([0.0, 1.0])])
    _close(ortho, torch.tensor([math.sqrt(2), math.sqrt(2)]), 1e-6)  # the bisector, at the mean norm 2
    b16 = _merge("karcher", None, [x.bfloat16() for x in xs])
    assert b16.dtype == torch.bfloat16
    _close(b16, ref_karcher([x.bfloat16() for x in xs]), 0.05)


# ---------------------------------------------------------------- nearswap


@pytest.mark.parametrize("t", [0.0, 1e-6, 0.01, 0.05, 10.0])
def test_nearswap_is_a_clipped_task_vector(t):
    base, (m,) = _family(1, seed=6, scale=0.05)
    out = _merge("nearswap", base, [m], params={"t": t})
    _close(out, ref_nearswap(base, m, t), 1e-6)
    if t == 0.0:
        assert torch.equal(out, base)
    if t == 10.0:
        _close(out, m, 1e-6)


def test_nearswap_roundings_and_near_ties():
    a = torch.tensor([1.0, 1.0, 1.0, 2.0])
    b = torch.tensor([1.0, 1.0 + 5e-7, 1.5, -2.0])  # equal, closer than 1e-6, in reach, far
    out = _merge("nearswap", a, [b], params={"t": 0.6})
    w = torch.tensor([0.6 / 1e-6, 0.6 / 1e-6, 0.6 / 0.5, 0.6 / 4.0]).clamp(0, 1)
    _close(out, w * b + (1 - w) * a, 1e-7)
    b16 = _merge("nearswap", a.bfloat16(), [b.bfloat16()], params={"t": 0.6})
    assert b16.dtype == torch.bfloat16
    with pytest.raises(InputError, match="exactly one other model"):
        _merge("nearswap", a, [b, b])


# ---------------------------------------------------------------- sce


@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.1])
def test_sce_matches_reference(select_topk):
    base, xs = _family(3, seed=7, scale=0.05)  # mean squares ~2.5e-3: data-driven weights
    out = _merge("sce", base, xs, params={"select_topk": select_topk})
    _close(out, ref_sce(base, xs, select_topk))


def test_sce_uniform_weights_for_small_task_vectors_and_edge_cases():
    base, xs = _family(3, seed=8, scale=1e-4)  # mean squares ~1e-8: mergekit's uniform fallback
    _close(_merge("sce", base, xs), ref_sce(base, xs), 1e-6)
    assert torch.equal(_merge("sce", base, xs, params={"select_topk": 0.0}), base)
    one = _merge("sce", base, xs[:1], params={"select_topk": 0.5})
    _close(one, ref_sce(base, xs[:1], 0.5), 1e-6)
    assert torch.equal(_merge("sce", base, xs, params={"int8_mask": True}), _merge("sce", base, xs))
    b16 = _merge("sce", base.bfloat16(), [x.bfloat16() for x in xs], params={"select_topk": 0.5})
    assert b16.dtype == torch.bfloat16


def test_sce_selection_ties_follow_torch_topk():
    """Equal variances across the cut: the pick is torch.topk's (what mergekit calls), else the threshold."""
    from mergescope.merge.methods.sce import _selection_mask

    g = torch.Generator().manual_seed(9)
    for var in (torch.randint(1, 6, (5000,), generator=g).float(), torch.rand(5000, generator=g)):
        k = int(torch.count_nonzero(var) * 0.37)
        want = torch.zeros_like(var)
        want[torch.topk(var, k).indices] = 1
        assert torch.equal(_selection_mask(var, 0.37), want)
        assert torch.equal(_selection_mask(var.bfloat16(), 0.37), want.bfloat16()) or var.max() < 1


# ---------------------------------------------------------------- the plan: validation before any tensor


def _plan(text):
    p = Plan.from_yaml(text, source="plan.yml")
    p.validate(check_paths=False)
    return p


@pytest.mark.parametrize(
    "text, needle",
    [
        (
            "merge_method: multislerp\nmodels:\n- model: a\n- model: b\n  parameters: {weight: 1}\n",
            "no `weight` for 'a'",
        ),
        ("merge_method: nearswap\nbase_model: base\nmodels:\n- model: a\n", "no `t`"),
        (
            "merge_method: nearswap\nbase_model: base\nmodels:\n- model: a\n- model: b\nparameters: {t: 0.1}\n",
            "nearswap takes exactly 1 models besides the base, got 2",
        ),
        ("merge_method: nearswap\nmodels:\n- model: a\nparameters: {t: 0.1}\n", "base_model: missing"),
        ("merge_method: nearswap\nbase_model: b\nmodels:\n- model: a\nparameters: {t: -0.1}\n", "must be >= 0"),
        ("merge_method: sce\nmodels:\n- model: a\n", "base_model: missing"),
        (
            "merge_method: sce\nbase_model: base\nmodels:\n- model: base\n",
            "sce takes at least 1 models besides the base",
        ),
        ("merge_method: sce\nbase_model: b\nmodels:\n- model: a\nparameters: {select_topk: 3}\n", "did you mean 0.3"),
        ("merge_method: sce\nbase_model: b\nmodels:\n- model: a\n  parameters: {wieght: 1}\n", "unknown parameter"),
        ("merge_method: karcher\nmodels:\n- model: a\nparameters: {max_iter: 2.5}\n", "expects an integer"),
        (
            "merge_method: multislerp\nbase_model: base\nmodels:\n- model: base\n",
            "multislerp takes at least 1 models besides the base, got 0",
        ),
    ],
)
def test_plan_validation(text, needle):
    with pytest.raises(InputError, match="plan.yml") as e:
        _plan(text)
    assert needle in str(e.value)


def test_plan_inputs_and_parameters():
    name = "model.layers.0.mlp.up_proj.weight"
    ka = _plan("merge_method: karcher\nbase_model: base\nmodels:\n- model: a\n- model: b\n")
    r = ka.resolve(name, num_layers=1)
    assert r.base is None and r.model_params == {"a": {}, "b": {}, "base": {}}  # the base: one more input
    assert r.params == {"max_iter": 10, "tol": 1e-5}
    ms = _plan(
        "merge_method: multislerp\nbase_model: base\nmodels:\n- model: a\n- model: b\nparameters: {weight: 0.5}\n"
    )
    r = ms.resolve(name, num_layers=1)
    assert r.base == "base" and r.model_params == {"a": {"weight": 0.5}, "b": {"weight": 0.5}}
    ns = _plan(
        "merge_method: nearswap\nbase_model: base\nmodels:\n- model: base\n- model: a\nparameters: {t: [0.1, 0.3]}\n"
    )
    assert ns.resolve("model.layers.1.mlp.up_proj.weight", num_layers=2).params == {"t": 0.3}
    sc = _plan("merge_method: sce\nbase_model: base\nmodels:\n- model: a\nparameters: {select_topk: 0.25}\n")
    assert sc.resolve(name, num_layers=1).params == {"int8_mask": False, "select_topk": 0.25}


# ---------------------------------------------------------------- the what-if's reading


def test_whatif_coefficients():
    mp = [{"weight": 1.0}, {"weight": 3.0}, None]
    assert coefficients("multislerp", {}, mp).coeff.tolist() == [0.25, 0.75, 0.0]
    assert coefficients("multislerp", {"normalize_weights": False}, mp).coeff.tolist() == [1.0, 3.0, 0.0]
    assert coefficients("multislerp", {}, [{"weight": 0.2}, None]).coeff.tolist() == [1.0, 0.0]
    assert coefficients("karcher", {}, [{}, {}, None]).coeff.tolist() == [0.5, 0.5, 0.0]
    assert coefficients("karcher", {}, [{}, {}, None], base_param={}).coeff.tolist() == pytest.approx([1 / 3, 1 / 3, 0])
    assert coefficients("nearswap", {"t": 0.1}, [{}, None]).coeff.tolist() == [1.0, 0.0]
    energy = [3e-3, 1e-3, 5.0]
    assert coefficients("sce", {}, [{}, {}, None], energy=energy).coeff.tolist() == pytest.approx([0.75, 0.25, 0])
    assert coefficients("sce", {}, [{}, {}, None], energy=[3e-8, 1e-8, 1]).coeff.tolist() == [0.5, 0.5, 0.0]
    notes = {n: method_note(n) for n in ("multislerp", "karcher", "nearswap", "sce")}
    assert "linearised" in notes["multislerp"] and "mean of the inputs" in notes["karcher"]
    assert "upper bound" in notes["nearswap"] and "‖τ‖²" in notes["sce"] and "sign election" in notes["sce"]


def test_whatif_from_plan_sce_uses_the_measured_energy(tmp_path):
    from mergescope.merge.whatif import from_plan
    from mergescope.stats.readiness import analyze
    from tests.ckpt_utils import make_family

    base, models = make_family(tmp_path, dtype=torch.float32, n_models=2)
    report = analyze(str(base), [str(m) for m in models], use_cache=False)
    plan = Plan.from_dict(
        {"merge_method": "sce", "base_model": str(base), "models": [{"model": str(m)} for m in models]}
    )
    wi = from_plan(report, plan)
    for s in report.sites:
        c = wi.site_coeffs[s.key].coeff
        e = s.sq / s.numel
        want = e / e.sum() if e.sum() >= 1e-6 else [0.5, 0.5]
        assert c.tolist() == pytest.approx(list(want))
