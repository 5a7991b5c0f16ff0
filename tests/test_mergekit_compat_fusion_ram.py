"""arcee_fusion, ram and ramplus_tl: mergescope vs mergekit 0.1.5 on the same YAML, element by element.

Optional, like tests/test_mergekit_compat.py (skipped without the mergekit 0.1.5 virtualenv); all
mergekit merges run in one child process with `--random-seed`, ours in-process.

Two families of a tied-embedding Llama (hidden 64, 2 layers) and three fine-tunes with sparse task
vectors (about 40 % of the entries unchanged, 5 % moved by less than epsilon, so RAM's unique, shared
and untouched entries all occur): `big` (vocab 20000: the embedding has 1.28M elements, the one tensor
above mergekit's 1M quantile-sampling size, and more than one of ram's column chunks) and `small`
(vocab 96) for the parameter variants.

Settings (inputs, `dtype:`): `f32` (float32, float32), `f32_nodtype` (float32, none), `bf16`
(bfloat16, float32), `bf16_bf16` (bfloat16, bfloat16): both tools compute in the same dtype, and every
tensor must be identical. `native` (bfloat16, none): mergekit computes in bfloat16, we in float32
(the executor's rule); reported and bounded. bf16 inputs are written with `out_dtype: bfloat16`.

arcee_fusion's embedding: mergekit samples its quantiles from torch's global generator, which
`--random-seed S` reseeds before the merge; the embedding is the only sampled tensor, so it gets the
first draw. Our method given a generator seeded S draws the same sample: identical. Our merge
(exact quantiles) differs from it only where the two thresholds disagree: each differing element is
the base's value in one output and the fine-tune's in the other, and there are few of them.
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

from mergescope.merge.methods import REGISTRY  # noqa: E402
from mergescope.merge.methods.base import MergeContext  # noqa: E402
from mergescope.merge.plan import Plan  # noqa: E402
from mergescope.merge.run import run_merge  # noqa: E402
from tests.ckpt_utils import llama_config, llama_shapes, write_state  # noqa: E402

SEED = 1234
VOCABS = {"big": 20000, "small": 96}
HIDDEN, N_LAYERS = 64, 2
EMBED = "model.embed_tokens.weight"

PLANS: dict[str, dict] = {
    "arcee_fusion": {"merge_method": "arcee_fusion", "base_model": "base", "models": [{"model": "ft0"}]},
    "arcee_fusion_base_listed": {
        "family": "small",
        "merge_method": "arcee_fusion",
        "base_model": "base",
        "models": [{"model": "base"}, {"model": "ft1"}],
    },
    "ram": {
        "merge_method": "ram",
        "base_model": "base",
        "models": [{"model": "ft0"}, {"model": "ft1"}, {"model": "ft2"}],
    },
    "ram_epsilon": {
        "family": "small",
        "merge_method": "ram",
        "base_model": "base",
        "models": [{"model": "ft0"}, {"model": "ft1"}],
        "parameters": {"epsilon": [{"filter": "mlp", "value": [1e-3, 1e-5]}, {"value": 2e-4}]},
    },
    "ramplus_tl": {
        "merge_method": "ramplus_tl",
        "base_model": "base",
        "models": [{"model": "ft0"}, {"model": "ft1"}, {"model": "ft2"}],
    },
    "ramplus_tl_params": {
        "family": "small",
        "merge_method": "ramplus_tl",
        "base_model": "base",
        "models": [{"model": "ft0"}, {"model": "ft1"}, {"model": "ft2"}],
        "parameters": {"r": [{"filter": "self_attn", "value": [0.5, 2.0]}, {"value": 1.0}], "alpha": 0.9},
    },
}
# (input dtype, plan dtype); out_dtype bfloat16 for bf16 inputs
SETTINGS = {
    "f32": (torch.float32, "float32"),
    "f32_nodtype": (torch.float32, None),
    "bf16": (torch.bfloat16, "float32"),
    "bf16_bf16": (torch.bfloat16, "bfloat16"),
    "native": (torch.bfloat16, None),
}


def _family(root: Path, dtype: torch.dtype, vocab: int) -> None:
    """base + three sparse fine-tunes (deterministic)."""
    g = torch.Generator().manual_seed(0)
    shapes = llama_shapes(N_LAYERS, HIDDEN, vocab, tied=True)
    base = {}
    for name, shape in shapes.items():
        t = (
            1.0 + 0.1 * torch.randn(shape, generator=g)
            if name.endswith("norm.weight")
            else 0.02 * torch.randn(shape, generator=g)
        )
        base[name] = t.to(dtype)
    cfg = llama_config(N_LAYERS, HIDDEN, vocab, dtype, tied=True)
    write_state(root / "base", base, config=cfg)
    for i in range(3):
        sd = {}
        for name, t in base.items():
            u = torch.rand(t.shape, generator=g)
            d = (0.002 * (i + 1)) * torch.randn(t.shape, generator=g)
            d = torch.where(u < 0.4, 0.0, torch.where(u < 0.45, 1e-6 * torch.randn(t.shape, generator=g), d))
            sd[name] = (t.float() + d).to(dtype)
        write_state(root / f"ft{i}", sd, config=cfg)


def _config(plan: dict, root: Path, in_dtype: torch.dtype, dtype: str | None) -> dict:
    cfg = copy.deepcopy(plan)
    root = root / cfg.pop("family", "big")
    cfg["base_model"] = str(root / cfg["base_model"])
    for m in cfg["models"]:
        m["model"] = str(root / m["model"])
    if dtype:
        cfg["dtype"] = dtype
    if in_dtype == torch.bfloat16:
        cfg["out_dtype"] = "bfloat16"
    return cfg


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """{(plan, setting): (mergekit state, our state, config dict, checkpoint root)}."""
    top = tmp_path_factory.mktemp("mkfusionram")
    roots = {}
    for dt in (torch.float32, torch.bfloat16):
        roots[dt] = top / str(dt).replace("torch.", "")
        for fam, vocab in VOCABS.items():
            _family(roots[dt] / fam, dt, vocab)
    jobs, cases = [], {}
    for name, plan in PLANS.items():
        for setting, (dt, compute) in SETTINGS.items():
            d = top / f"{name}-{setting}"
            d.mkdir()
            cfg = _config(plan, roots[dt], dt, compute)
            (d / "plan.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            jobs.append((d / "plan.yml", d / "mergekit"))
            cases[(name, setting)] = (d, cfg, roots[dt])
    for name in ("ramplus_tl", "arcee_fusion"):
        d = top / f"{name}-no_out_dtype"
        d.mkdir()
        cfg = _config(PLANS[name], roots[torch.bfloat16], torch.float32, None)
        (d / "plan.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        jobs.append((d / "plan.yml", d / "mergekit"))
        cases[(name, "no_out_dtype")] = (d, cfg, roots[torch.bfloat16])
    run_mergekit(jobs, extra_args=("--random-seed", str(SEED)))
    out = {}
    for key, (d, cfg, root) in cases.items():
        run_merge(Plan.load(d / "plan.yml"), d / "mergescope")
        out[key] = (load_dir(d / "mergekit"), load_dir(d / "mergescope"), cfg, root)
    return out


def _load(path: str, name: str) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))[name]


def _fusion_inputs(cfg: dict, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    other = next(m["model"] for m in cfg["models"] if m["model"] != cfg["base_model"])
    return _load(cfg["base_model"], name), _load(other, name)


def _kept(base: torch.Tensor, ft: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An entry arcee_fusion keeps: θ₀ + (θ₁ − θ₀)·1.0 with δ rounded to `dtype`, summed in float32 or wider."""
    wide = torch.promote_types(dtype, torch.float32)
    b = base.to(dtype)
    return torch.sub(ft.to(dtype), b).to(wide).add_(b)


def _flips(ref, ours, base, ft, ref_dtype, our_dtype) -> tuple[int, int]:
    """(entries where one output kept the fine-tune's value and the other the base's, other differences);
    `*_dtype`: the dtype each side computed in."""
    out = ref.dtype
    k_ref, k_ours, b = _kept(base, ft, ref_dtype).to(out), _kept(base, ft, our_dtype).to(out), base.to(out)
    d = ref != ours
    r, o = ref[d], ours[d]
    flips = int((((r == k_ref[d]) & (o == b[d])) | ((r == b[d]) & (o == k_ours[d]))).sum())
    return flips, int(d.sum()) - flips


def _compute_dtypes(cfg: dict, stored: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """(mergekit's compute dtype, ours): `dtype:` for both; without it the stored dtype vs float32."""
    if cfg.get("dtype"):
        return (getattr(torch, cfg["dtype"]),) * 2
    return stored, torch.float32


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s != "native"])
@pytest.mark.parametrize("name", list(PLANS))
def test_same_output_as_mergekit(merged, name, setting):
    ref, ours, cfg, root = merged[(name, setting)]
    assert set(ref) == set(ours), sorted(set(ref) ^ set(ours))
    sampled = name.startswith("arcee") and ref[EMBED].numel() > 1_000_000
    rest = {k: v for k, v in ref.items() if not (sampled and k == EMBED)}
    c = compare_states(rest, ours)
    print(f"{name} [{setting}]: {c.summary()}")
    assert not c.dtype_mismatch, c.dtype_mismatch
    assert c.n_diff == 0, f"{c.summary()}; worst {c.worst}"
    if not sampled:
        return
    # the one sampled tensor: our method with mergekit's generator state reproduces it bit for bit ...
    base, ft = _fusion_inputs(cfg, EMBED)
    mk_dtype, our_dtype = _compute_dtypes(cfg, base.dtype)
    gen = torch.Generator().manual_seed(SEED)
    again = REGISTRY["arcee_fusion"].merge(
        base.to(mk_dtype), [ft.to(mk_dtype)], [{}], {}, MergeContext(EMBED, generator=gen)
    )
    assert torch.equal(again.to(ref[EMBED].dtype), ref[EMBED])
    # ... and our merge's exact quantiles only flip the entries between the two thresholds
    flips, other = _flips(ref[EMBED], ours[EMBED], base, ft, mk_dtype, our_dtype)
    n = ref[EMBED].numel()
    diff = (ref[EMBED].double() - ours[EMBED].double()).abs().max()
    print(
        f"  {EMBED} ({n} entries, sampled by mergekit): {flips} mask flips ({100 * flips / n:.3f} %), max |diff| {float(diff):.3g}"
    )
    assert other == 0 and flips <= 0.005 * n


@pytest.mark.parametrize("name", list(PLANS))
def test_native_bf16_is_close(merged, name):
    """No `dtype:` on bf16 inputs: mergekit computes in bf16, we in float32 (rounding once at the end)."""
    ref, ours, cfg, root = merged[(name, "native")]
    assert set(ref) == set(ours)
    c = compare_states(ref, ours)
    print(f"{name} [native bf16 vs our float32]: {c.summary()}")
    assert not c.dtype_mismatch, c.dtype_mismatch
    if not name.startswith("arcee"):  # δ, δ/c, the sum and θ₀ + merged each rounded to bf16 there
        assert c.n_over_1ulp <= 0.05 * c.n, c.summary()
        return
    # arcee_fusion: in bf16, p/q rounds to 1 ± 2⁻⁷ and each row's KL is rounding noise (here about 100x
    # the float32 value, and <= 0 for a quarter of the rows), so the masks differ widely (mask flips);
    # the entries both keep are θ₀ + bf16(θ₁ − θ₀) there, θ₁ here (one ulp apart at most)
    n = flips = other = 0
    for k in ref:
        base, ft = _fusion_inputs(cfg, k)
        f, o = _flips(ref[k], ours[k], base, ft, torch.bfloat16, torch.float32)
        flips, other, n = flips + f, other + o, n + ref[k].numel()
    print(f"  {flips} mask flips ({100 * flips / n:.3f} %), {other} other differences")
    assert flips <= 0.3 * n and other <= 0.02 * n


def test_mergekit_output_dtype_without_out_dtype(merged):
    """Recorded: without `out_dtype`, mergekit 0.1.5 writes what the method returns; ramplus_tl (a float32
    λ) and arcee_fusion (a float32 mask) return float32 for bf16 inputs, so mergekit writes float32 where
    we write the inputs' bfloat16 (the executor's output-dtype rule). Values: as in the native setting."""
    for name in ("ramplus_tl", "arcee_fusion"):
        ref, ours, _, _ = merged[(name, "no_out_dtype")]
        assert {t.dtype for t in ref.values()} == {torch.float32}, name
        assert {t.dtype for t in ours.values()} == {torch.bfloat16}, name
