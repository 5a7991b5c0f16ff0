"""Properties every merge method must have, on hypothesis-generated tensors (the registry's functions
called directly, float32)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mergescope.merge.methods import REGISTRY
from mergescope.merge.methods.base import BaseUse, MergeContext

shapes = st.one_of(st.tuples(st.integers(1, 40)), st.tuples(st.integers(1, 12), st.integers(1, 12)))


@st.composite
def tensors(draw, n: int):
    shape = draw(shapes)
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    scale = draw(st.sampled_from([1e-3, 0.05, 1.0]))
    return base, [base + scale * torch.randn(shape, generator=g) for _ in range(n)]


def _merge(name, base, models, mp=None, params=None):
    m = REGISTRY[name]
    mps = mp if mp is not None else [{"weight": 1.0} for _ in models]
    return m.merge(base if m.base is not BaseUse.INPUT else None, models, mps, params or {}, MergeContext("t", seed=1))


@settings(max_examples=40, deadline=None)
@given(tensors(1), st.floats(0.1, 3.0))
def test_ties_of_one_model_at_density_one_is_task_arithmetic(data, w):
    base, (m,) = data
    ties = _merge("ties", base, [m], [{"weight": w, "density": 1.0}], {"normalize": False})
    ta = _merge("task_arithmetic", base, [m], [{"weight": w}])
    torch.testing.assert_close(ties, ta, rtol=0, atol=0)
    normed = _merge("ties", base, [m], [{"weight": w, "density": 1.0}])  # normalize: the weight cancels
    torch.testing.assert_close(normed, m, rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(tensors(1), st.floats(0.1, 3.0))
def test_linear_of_one_model_is_the_identity(data, w):
    _, (m,) = data
    torch.testing.assert_close(_merge("linear", None, [m], [{"weight": w}]), m, rtol=1e-6, atol=1e-7)
    assert torch.equal(_merge("linear", None, [m], [{"weight": 1.0}]), m)


@settings(max_examples=40, deadline=None)
@given(tensors(1))
def test_slerp_returns_its_endpoints(data):
    base, (m,) = data
    torch.testing.assert_close(_merge("slerp", base, [m], [{}], {"t": 0.0}), base, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_merge("slerp", base, [m], [{}], {"t": 1.0}), m, rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(tensors(1), st.floats(0.0, 1.0), st.floats(0.1, 2.0))
def test_merging_a_model_with_itself_gives_it_back(data, t, w):
    base, (m,) = data
    torch.testing.assert_close(_merge("linear", None, [m, m.clone()], [{"weight": w}, {"weight": 2 * w}]), m)
    torch.testing.assert_close(_merge("slerp", m, [m.clone()], [{}], {"t": t}), m)
    torch.testing.assert_close(_merge("nuslerp", None, [m, m.clone()], [{"weight": w}, {"weight": 1.0}]), m)


@settings(max_examples=25, deadline=None)
@given(tensors(3))
def test_every_method_keeps_shape_and_dtype(data):
    base, models = data
    for name, method in REGISTRY.items():
        n = method.max_models or 3
        n = max(method.min_models, min(n, 3))
        mp = [{"weight": 0.5, "density": 0.6, "epsilon": 0.1, "gamma": 0.01, "scale": 1.0} for _ in range(n)]
        keep = {p.name for p in method.params if p.per_model}
        mp = [{k: v for k, v in d.items() if k in keep} for d in mp]
        params = {"t": 0.3} if method.param("t") is not None else {}
        out = _merge(name, base, models[:n], mp, params)
        assert out.shape == base.shape and out.dtype == base.dtype, name
        assert bool(torch.isfinite(out).all()), name
