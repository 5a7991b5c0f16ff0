"""mergescope vs mergekit 0.1.5 on the same YAML for multislerp, karcher, nearswap and sce.

Optional, like tests/test_mergekit_compat.py (same helpers, same child process for all mergekit runs):
skipped unless a mergekit 0.1.5 virtualenv is available. Settings per plan:

- `f32`: float32 checkpoints, `dtype: float32` (outputs float32),
- `f32_nodtype`: float32 checkpoints, no `dtype` (both compute in float32),
- `bf16`: bfloat16 checkpoints, `dtype: float32` (outputs float32),
- `bf16_dtype`: bfloat16 checkpoints, `dtype: bfloat16` (both compute in bfloat16),
- `native`: bfloat16 checkpoints, no `dtype`: mergekit computes in bfloat16, we in float32, rounded once.

The first four must be identical element by element (these methods reproduce mergekit's operations,
reduction layouts and ties). `native` is measured and bounded (see the README's methods section).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from tests.mergekit_utils import compare_states, load_dir, mergekit_available, run_mergekit

pytestmark = pytest.mark.mergekit

_OK, _WHY = mergekit_available()
if not _OK:
    pytest.skip(_WHY, allow_module_level=True)

from mergescope.merge.plan import Plan  # noqa: E402
from mergescope.merge.run import run_merge  # noqa: E402
from tests.ckpt_utils import make_finetune, make_llama  # noqa: E402

N_LAYERS = 3
_W = [{"filter": "self_attn", "value": [0.9, 0.3]}, {"filter": "mlp", "value": 0.6}, {"value": 0.45}]

PLANS: dict[str, dict] = {
    "multislerp": {
        "merge_method": "multislerp",
        "base_model": "base",
        "models": [
            {"model": "ft0", "parameters": {"weight": [1.0, 0.3]}},
            {"model": "ft1", "parameters": {"weight": _W}},
            {"model": "ft2", "parameters": {"weight": 0.5}},
        ],
    },
    "multislerp_no_base_unnormalized": {
        "merge_method": "multislerp",
        "models": [{"model": f"ft{i}", "parameters": {"weight": w}} for i, w in enumerate((0.2, 0.5, 0.1, 0.3, 0.15))],
        "parameters": {"normalize_weights": False},
    },
    "karcher": {  # base_model not listed: mergekit merges it as one more input
        "merge_method": "karcher",
        "base_model": "base",
        "models": [{"model": "ft0"}, {"model": "ft1"}, {"model": "ft2"}],
    },
    "karcher_tight": {
        "merge_method": "karcher",
        "models": [{"model": "ft0"}, {"model": "ft3"}, {"model": "ft4"}, {"model": "small"}],
        "parameters": {"max_iter": 25, "tol": 1e-7},
    },
    "nearswap": {
        "merge_method": "nearswap",
        "base_model": "base",
        "models": [{"model": "base"}, {"model": "ft2"}],
        "parameters": {"t": [{"filter": "mlp", "value": [0.001, 0.02]}, {"value": 0.005}]},
    },
    "sce": {
        "merge_method": "sce",
        "base_model": "base",
        "models": [{"model": "ft0"}, {"model": "ft1"}, {"model": "ft2"}],
    },
    "sce_select": {
        "merge_method": "sce",
        "base_model": "base",
        "models": [{"model": f"ft{i}"} for i in range(5)],
        "parameters": {"select_topk": [0.7, 0.2], "int8_mask": True},
    },
    "sce_uniform": {  # tiny task vectors: mergekit's uniform weights (Σ mean(δ²) < 1e-6)
        "merge_method": "sce",
        "base_model": "base",
        "models": [{"model": "small"}, {"model": "small2"}],
        "parameters": {"select_topk": 0.5},
    },
}
# (checkpoint dtype, `dtype:`)
SETTINGS = {
    "f32": (torch.float32, "float32"),
    "f32_nodtype": (torch.float32, None),
    "bf16": (torch.bfloat16, "float32"),
    "bf16_dtype": (torch.bfloat16, "bfloat16"),
    "native": (torch.bfloat16, None),
}


def _abs_config(plan: dict, root: Path, dtype: str | None) -> dict:
    cfg = copy.deepcopy(plan)
    if "base_model" in cfg:
        cfg["base_model"] = str(root / cfg["base_model"])
    for m in cfg["models"]:
        m["model"] = str(root / m["model"])
    if dtype:
        cfg["dtype"] = dtype
    return cfg


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """{(plan, setting): (mergekit state, our state)}, all merged up front (mergekit in one process)."""
    top = tmp_path_factory.mktemp("mkcompat_sphere")
    roots = {}
    for dt in (torch.float32, torch.bfloat16):
        root = top / str(dt).replace("torch.", "")
        base = make_llama(root / "base", n_layers=N_LAYERS, hidden=64, vocab=96, dtype=dt, seed=0)
        for i in range(5):
            make_finetune(base, root / f"ft{i}", scale=0.003 * (i % 3 + 1), seed=10 + i)
        make_finetune(base, root / "small", scale=1e-4, seed=20)
        make_finetune(base, root / "small2", scale=2e-4, seed=21)
        roots[dt] = root
    jobs, cases = [], {}
    for name, plan in PLANS.items():
        for setting, (dt, compute) in SETTINGS.items():
            d = top / f"{name}-{setting}"
            d.mkdir()
            (d / "plan.yml").write_text(yaml.safe_dump(_abs_config(plan, roots[dt], compute), sort_keys=False))
            jobs.append((d / "plan.yml", d / "mergekit"))
            cases[(name, setting)] = d
    run_mergekit(jobs)
    out = {}
    for key, d in cases.items():
        run_merge(Plan.load(d / "plan.yml"), d / "mergescope")
        out[key] = (load_dir(d / "mergekit"), load_dir(d / "mergescope"))
    return out


@pytest.mark.parametrize("setting", ["f32", "f32_nodtype", "bf16", "bf16_dtype"])
@pytest.mark.parametrize("name", list(PLANS))
def test_identical_to_mergekit(merged, name, setting):
    ref, ours = merged[(name, setting)]
    assert not set(ref) ^ set(ours), f"tensor names differ: {sorted(set(ref) ^ set(ours))[:5]}"
    c = compare_states(ref, ours)
    print(f"{name} [{setting}]: {c.summary()}")
    assert not c.dtype_mismatch, c.dtype_mismatch
    assert c.n_diff == 0, f"{c.summary()}; worst tensors {c.worst}"


@pytest.mark.parametrize("name", list(PLANS))
def test_native_bf16_is_close(merged, name):
    """No `dtype:` on bf16 checkpoints: mergekit rounds every intermediate to bf16, we round once."""
    ref, ours = merged[(name, "native")]
    assert not set(ref) ^ set(ours)
    c = compare_states(ref, ours)
    print(f"{name} [native bf16 vs our float32]: {c.summary()}")
    assert not c.dtype_mismatch, c.dtype_mismatch
    assert c.n_over_1ulp <= 0.15 * c.n, c.summary()
