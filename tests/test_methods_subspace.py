"""tsv, iso_c and iso_cts (mergescope extensions): the registry's functions against independent float64
references written from the papers' equations, their defining properties, an end-to-end merge of a
checkpoint, and the plan's validation of their parameters."""

import numpy as np
import pytest
import torch

from mergescope.io.errors import InputError
from mergescope.merge.methods import REGISTRY, get_method
from mergescope.merge.methods.base import BaseUse, MergeContext
from mergescope.merge.methods.iso import split
from mergescope.merge.plan import Plan
from tests.ckpt_utils import load_state, make_finetune, make_llama

SUBSPACE = ("tsv", "iso_c", "iso_cts")
SHAPE = (40, 56)


def _family(n=3, seed=0, scale=0.1, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + scale * torch.randn(shape, generator=g) for _ in range(n)]


def _merge(name, base, tensors, params=None):
    before = [base.clone(), *(t.clone() for t in tensors)]
    out = get_method(name).merge(base, list(tensors), [{} for _ in tensors], params or {}, MergeContext("w"))
    assert all(torch.equal(a, b) for a, b in zip(before, [base, *tensors])), "a merge method modified its inputs"
    return out


# Relative error allowed on a merged task vector. The float32 SVDs set it: a truncated subspace moves by
# about eps32·‖Δ‖/gap at the cut; these seeds measure at most 7e-6 (and 8e-6 on the checkpoint's norm
# weights, where the stored float32 result near 1 rounds the 0.01-sized task vector).
TOL = 2e-5


def _rel(out, base, want_delta):
    """Relative error of the merged task vector against a float64 one."""
    got = out.double().numpy() - base.double().numpy()
    return np.linalg.norm(got - want_delta) / max(np.linalg.norm(want_delta), 1e-300)


# ---------------------------------------------------------------- independent references (float64, numpy)


def orthonormalize(a):
    """The nearest matrix with orthonormal columns (rows when wide): A (AᵀA)^-1/2, by an eigendecomposition."""
    if a.shape[0] < a.shape[1]:
        return orthonormalize(a.T).T
    w, q = np.linalg.eigh(a.T @ a)
    return a @ (q / np.sqrt(w)) @ q.T


def deltas_of(base, tensors):
    b = base.double().numpy()
    return b, [t.double().numpy() - b for t in tensors]


def ref_tsv(base, tensors, alpha=1.0):
    """TSV-M: each task's top ⌊r/N⌋ singular triplets, U and V stacked and orthonormalised, Σ block-diagonal."""
    _, ds = deltas_of(base, tensors)
    if ds[0].ndim != 2:
        return alpha * np.mean(ds, axis=0)
    k = max(1, min(ds[0].shape) // len(ds))
    svds = [np.linalg.svd(d, full_matrices=False) for d in ds]
    u = np.hstack([u[:, :k] for u, _, _ in svds])
    v = np.hstack([vt[:k].T for _, _, vt in svds])
    sigma = np.diag(np.concatenate([s[:k] for _, s, _ in svds]))
    return alpha * orthonormalize(u) @ sigma @ orthonormalize(v).T


def ref_iso_c(base, tensors, alpha=1.0):
    """Iso-C: the sum Δ rescaled to an isotropic spectrum, mean(σ) · polar(Δ) = ‖Δ‖_* / r · Δ(ΔᵀΔ)^-1/2."""
    _, ds = deltas_of(base, tensors)
    if ds[0].ndim != 2:
        return alpha * np.mean(ds, axis=0)
    total = np.sum(ds, axis=0)
    return alpha * np.linalg.norm(total, "nuc") / min(total.shape) * orthonormalize(total)


def ref_iso_cts(base, tensors, alpha=1.0, fraction=0.8):
    """Iso-CTS: the sum's top k left/right directions plus each task's top p directions off the common
    left subspace, stacked, orthonormalised, every singular value set to the stacked values' mean."""
    _, ds = deltas_of(base, tensors)
    if ds[0].ndim != 2:
        return alpha * np.mean(ds, axis=0)
    r, n = min(ds[0].shape), len(ds)
    k = int(r * fraction)
    p = round((r - k) / n)
    k = r - n * p
    u, s, vt = np.linalg.svd(np.sum(ds, axis=0), full_matrices=False)
    us, vs, ss = [u[:, :k]], [vt[:k].T], [s[:k]]
    projector = np.eye(u.shape[0]) - u[:, :k] @ u[:, :k].T
    for d in ds:
        ut, st, vtt = np.linalg.svd(projector @ d, full_matrices=False)
        us.append(ut[:, :p])
        vs.append(vtt[:p].T)
        ss.append(st[:p])
    mean = np.concatenate(ss).mean()
    return alpha * mean * orthonormalize(np.hstack(us)) @ orthonormalize(np.hstack(vs)).T


REFS = {"tsv": ref_tsv, "iso_c": ref_iso_c, "iso_cts": ref_iso_cts}


# ---------------------------------------------------------------- against the references


@pytest.mark.parametrize("name", SUBSPACE)
@pytest.mark.parametrize("shape, n", [(SHAPE, 3), ((56, 40), 2), ((24, 24), 5), ((30, 12), 1)])
def test_matches_the_float64_reference(name, shape, n):
    base, tensors = _family(n=n, shape=shape, seed=n)
    out = _merge(name, base, tensors)
    assert out.shape == base.shape and out.dtype == torch.float32
    assert _rel(out, base, REFS[name](base, tensors)) < TOL


@pytest.mark.parametrize("name", SUBSPACE)
def test_alpha_scales_the_merged_task_vector(name):
    base, tensors = _family(n=2, seed=5)
    out = _merge(name, base, tensors, {"alpha": 2.5})
    assert _rel(out, base, REFS[name](base, tensors, alpha=2.5)) < TOL
    assert torch.equal(_merge(name, base, tensors, {"alpha": 0.0}), base)


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.95])
def test_iso_cts_common_space_fraction(fraction):
    base, tensors = _family(n=3, seed=7)
    out = _merge("iso_cts", base, tensors, {"common_space_fraction": fraction})
    assert _rel(out, base, ref_iso_cts(base, tensors, fraction=fraction)) < TOL


@pytest.mark.parametrize("name", SUBSPACE)
@pytest.mark.parametrize("shape", [(56,), (3, 4, 5), ()])
def test_non_matrix_tensors_take_the_mean_task_vector(name, shape):
    base, tensors = _family(n=3, shape=shape, seed=2)
    out = _merge(name, base, tensors, {"alpha": 0.7})
    want = base + 0.7 * torch.stack([t - base for t in tensors]).mean(dim=0)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- properties


def _orthonormal(m, k, g):
    return torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))[0]


def test_iso_c_of_one_task_is_the_base_plus_its_isotropic_task_vector():
    g = torch.Generator().manual_seed(11)
    base = torch.randn(SHAPE, generator=g)
    u, v = _orthonormal(SHAPE[0], 40, g), _orthonormal(SHAPE[1], 40, g)
    s = torch.linspace(0.01, 2.0, 40, dtype=torch.float64)
    ft = (base.double() + (u * s) @ v.T).float()
    want = base.double() + s.mean() * u @ v.T
    torch.testing.assert_close(_merge("iso_c", base, [ft]).double(), want, rtol=1e-5, atol=1e-5)


def test_tsv_of_tasks_in_orthogonal_subspaces_is_task_arithmetic():
    g = torch.Generator().manual_seed(12)
    base = torch.randn(SHAPE, generator=g)
    n, k = 4, SHAPE[0] // 4
    u, v = _orthonormal(SHAPE[0], n * k, g), _orthonormal(SHAPE[1], n * k, g)
    tensors = []
    for i in range(n):  # task i lives in columns [i·k, (i+1)·k) of u and v: rank k, mutually orthogonal
        s = torch.rand(k, generator=g, dtype=torch.float64) + 0.1
        tensors.append((base.double() + (u[:, i * k : (i + 1) * k] * s) @ v[:, i * k : (i + 1) * k].T).float())
    want = REGISTRY["task_arithmetic"].merge(base, tensors, [{"weight": 1.0}] * n, {}, MergeContext("w"))
    torch.testing.assert_close(_merge("tsv", base, tensors), want, rtol=1e-5, atol=1e-5)


def test_iso_cts_without_room_for_task_directions_is_iso_c():
    base, tensors = _family(n=3, shape=(8, 10), seed=3)  # r = 8: k = int(7.2) = 7, round(1/3) = 0 per task
    assert split(8, 3, 0.9) == (8, 0)
    iso_c = _merge("iso_c", base, tensors)
    torch.testing.assert_close(_merge("iso_cts", base, tensors, {"common_space_fraction": 0.9}), iso_c)


def test_tsv_keeps_one_direction_per_task_when_tasks_outnumber_the_rank():
    base, tensors = _family(n=5, shape=(3, 7), seed=4)
    assert _rel(_merge("tsv", base, tensors), base, ref_tsv(base, tensors)) < TOL


def test_split_rounds_as_the_reference_and_never_leaves_a_negative_common_part():
    assert split(100, 8, 0.8) == (84, 2)  # int(80) = 80; round(20/8) = 2 (half to even); 100 − 16
    assert split(64, 3, 0.8) == (64 - 12, 4)  # int(51.2) = 51; round(13/3) = 4
    assert split(10, 4, 0.8) == (10, 0)  # round(2/4) = 0: no task-specific part
    assert split(3, 2, 0.1) == (1, 1)  # round(3/2) = 2 → 4 > 3: capped at ⌊3/2⌋·2
    for r in range(1, 40):
        for n in range(1, 9):
            for f in (0.01, 0.5, 0.8, 0.99):
                k, p = split(r, n, f)
                assert k >= 0 and p >= 0 and k + n * p == r


def test_bfloat16_inputs_are_computed_in_float32_and_returned_in_bfloat16():
    base, tensors = _family(n=2, seed=6)
    base, tensors = base.bfloat16(), [t.bfloat16() for t in tensors]
    for name in SUBSPACE:
        out = _merge(name, base, tensors)
        want = torch.from_numpy(base.double().numpy() + REFS[name](base, tensors))
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.double(), want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", SUBSPACE)
def test_input_errors(name):
    base, (a, b) = _family(n=2)
    merge = get_method(name).merge
    with pytest.raises(InputError, match="needs a base model"):
        merge(None, [a, b], [{}, {}], {}, MergeContext("w"))
    with pytest.raises(InputError, match="shape mismatch"):
        merge(base, [a, b[:, :-1]], [{}, {}], {}, MergeContext("w"))
    with pytest.raises(InputError, match="at least one model"):
        merge(base, [], [], {}, MergeContext("w"))


def test_registry_entries():
    for name in SUBSPACE:
        m = REGISTRY[name]
        assert m.extension and m.base is BaseUse.REQUIRED and not m.randomized and m.min_models == 1
        assert m.param("alpha").default == 1.0 and m.param("weight") is None
    assert REGISTRY["iso_cts"].param("common_space_fraction").default == 0.8
    assert not any(m.extension for n, m in REGISTRY.items() if n not in SUBSPACE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", SUBSPACE)
def test_on_cuda(name):
    base, tensors = _family(n=3)
    ctx = MergeContext("w", device="cuda")
    out = get_method(name).merge(base.cuda(), [t.cuda() for t in tensors], [{}] * 3, {}, ctx)
    assert out.device.type == "cuda" and _rel(out.cpu(), base, REFS[name](base, tensors)) < TOL


# ---------------------------------------------------------------- end to end and the plan


def _family_on_disk(tmp_path, n=3):
    make_llama(tmp_path / "base", n_layers=2, hidden=16, vocab=32, dtype=torch.float32)
    for i in range(n):
        make_finetune(tmp_path / "base", tmp_path / f"ft{i}", scale=0.01, seed=i + 1)
    return "".join(f"- model: {tmp_path / f'ft{i}'}\n" for i in range(n))


@pytest.mark.parametrize(
    "name, params", [("tsv", {}), ("iso_c", {"alpha": 1.5}), ("iso_cts", {"common_space_fraction": 0.5})]
)
def test_merges_a_checkpoint_end_to_end(tmp_path, name, params):
    from mergescope.merge.run import run_merge

    models = _family_on_disk(tmp_path)
    extra = "".join(f"  {k}: {v}\n" for k, v in params.items())
    text = f"merge_method: {name}\nbase_model: {tmp_path / 'base'}\nmodels:\n{models}"
    text += f"parameters:\n{extra}" if extra else ""
    res = run_merge(Plan.from_yaml(text, source="plan.yml"), tmp_path / "out")
    got = load_state(res.output_dir)
    b = load_state(tmp_path / "base")
    fts = [load_state(tmp_path / f"ft{i}") for i in range(3)]
    assert set(got) == set(b)
    alpha = params.get("alpha", 1.0)
    kw = {"fraction": params["common_space_fraction"]} if name == "iso_cts" else {}
    for k, t in got.items():
        assert t.dtype == torch.float32 and t.shape == b[k].shape
        want = REGISTRY[name].merge(b[k], [f[k] for f in fts], [{}] * 3, params, MergeContext(k))
        assert torch.equal(t, want), k
        assert _rel(t, b[k], REFS[name](b[k], [f[k] for f in fts], alpha, **kw)) < TOL, k


def _plan(text, open_models=False):
    p = Plan.from_yaml(text, source="plan.yml")
    p.validate(check_paths=open_models, open_models=open_models)
    return p


@pytest.mark.parametrize(
    "text, needles",
    [
        ("merge_method: tsv\nmodels:\n- model: a\n", ["plan.yml: base_model: missing"]),
        (
            "merge_method: iso_c\nbase_model: b\nmodels:\n- model: a\nparameters: {alpha: .inf}\n",
            ["parameters.alpha", "must be a finite number"],
        ),
        (
            "merge_method: tsv\nbase_model: b\nmodels:\n- model: a\nparameters: {alpha: big}\n",
            ["parameters.alpha", "expects a number"],
        ),
        (
            "merge_method: iso_cts\nbase_model: b\nmodels:\n- model: a\nparameters: {common_space_fraction: 80}\n",
            ["parameters.common_space_fraction", "must be < 1", "did you mean 0.8"],
        ),
        (
            "merge_method: iso_cts\nbase_model: b\nmodels:\n- model: a\nparameters: {common_space_fraction: -0.2}\n",
            ["parameters.common_space_fraction", "must be > 0"],
        ),
        (
            "merge_method: iso_cts\nbase_model: b\nmodels:\n- model: a\nparameters: {common_space_fracton: 0.5}\n",
            ["parameters.common_space_fracton", "unknown parameter", "common_space_fraction"],
        ),
        (
            "merge_method: iso_c\nbase_model: b\nmodels:\n- model: b\n",
            ["iso_c takes at least 1 models besides the base, got 0"],
        ),
    ],
)
def test_plan_validation(text, needles):
    with pytest.raises(InputError, match="plan.yml") as e:
        _plan(text)
    assert all(n in str(e.value) for n in needles), str(e.value)


@pytest.mark.parametrize("fraction", [0, 1])
def test_iso_cts_refuses_the_ends_of_the_fraction_before_any_file(fraction):
    """An open interval: both ends are refused by the plan check, naming the key."""
    with pytest.raises(InputError, match=r"parameters\.common_space_fraction: .*must be (> 0|< 1)"):
        _plan(
            f"merge_method: iso_cts\nbase_model: b\nmodels:\n- model: a\nparameters: {{common_space_fraction: {fraction}}}\n"
        )


def test_plan_resolves_the_defaults():
    name = "model.layers.0.mlp.up_proj.weight"
    p = _plan("merge_method: iso_cts\nbase_model: b\nmodels:\n- model: a\n- model: c\n")
    r = p.resolve(name, num_layers=1)
    assert r.base == "b" and r.params == {"alpha": 1.0, "common_space_fraction": 0.8}
    assert _plan("merge_method: tsv\nbase_model: b\nmodels:\n- model: a\n").resolve(name, num_layers=1).params == {
        "alpha": 1.0
    }
