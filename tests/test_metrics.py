"""Every metric of the README's analysis table against an independent whole-tensor float64 computation."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mergescope.io.checkpoint import open_models
from mergescope.io.naming import site_of
from mergescope.io.progress import Cancelled
from mergescope.stats.readiness import analyze
from mergescope.stats.scan import analyze_checkpoints
from tests.ckpt_utils import H, L, family_shapes, make_family


def _load_all(path):
    from mergescope.io.checkpoint import open_checkpoint

    ck = open_checkpoint(path)
    return {n: ck.get(n).float().numpy().astype(np.float64) for n in ck.names()}


def reference(base_sd, model_sds, density):
    """Straightforward whole-tensor computation of the README metric table (float64)."""
    n = len(model_sds)
    taus = [
        {k: (m[k].astype(np.float32) - base_sd[k].astype(np.float32)).astype(np.float64) for k in base_sd}
        for m in model_sds
    ]
    cells = {}
    for name in base_sd:
        s = site_of(name)
        cells.setdefault((s.layer, s.group), []).append(name)
    out = {}

    def trim(x, dens):
        flat = np.abs(x.ravel())
        k = int(math.floor(dens * flat.size))
        if k <= 0:
            return np.zeros_like(x)
        thr = np.sort(flat)[::-1][k - 1]
        return np.where(np.abs(x) >= thr, x, 0.0)

    def topk_energy(x):
        flat = np.sort(np.abs(x.ravel()))[::-1]
        k = int(math.floor(0.2 * flat.size))
        return float((flat[:k] ** 2).sum())

    for key, names in cells.items():
        b = np.concatenate([base_sd[t].ravel() for t in names])
        vs = [np.concatenate([taus[i][t].ravel() for t in names]) for i in range(n)]
        norms = [np.sqrt((x**2).sum()) for x in vs]
        res = {"norm": norms, "base_norm": np.sqrt((b**2).sum())}
        res["relative_norm"] = [x / res["base_norm"] for x in norms]
        res["cosine"] = {}
        res["sign_conflict_pair"] = {}
        for i in range(n):
            for j in range(i + 1, n):
                res["cosine"][i, j] = float(vs[i] @ vs[j] / (norms[i] * norms[j])) if norms[i] * norms[j] else 0.0
                both = (vs[i] != 0) & (vs[j] != 0)
                opp = both & (np.sign(vs[i]) != np.sign(vs[j]))
                res["sign_conflict_pair"][i, j] = opp.sum() / both.sum() if both.sum() else 0.0
        stack = np.stack(vs)
        nz = (stack != 0).sum(0)
        conflict = (stack > 0).any(0) & (stack < 0).any(0)
        res["sign_conflict"] = conflict.sum() / (nz >= 2).sum() if (nz >= 2).sum() else 0.0
        tstack = np.stack([np.concatenate([trim(taus[i][t], density).ravel() for t in names]) for i in range(n)])
        tnz = (tstack != 0).sum(0)
        tconf = (tstack > 0).any(0) & (tstack < 0).any(0)
        res["trimmed_sign_conflict"] = tconf.sum() / (tnz >= 2).sum() if (tnz >= 2).sum() else 0.0
        res["magnitude_asymmetry"] = max(norms) / min(norms) if min(norms) else math.inf
        res["topk_energy"] = [
            sum(topk_energy(taus[i][t]) for t in names) / (norms[i] ** 2) if norms[i] else 0.0 for i in range(n)
        ]
        out[key] = res
    allb = np.concatenate([base_sd[t].ravel() for t in base_sd])
    whole = {}
    for i in range(n):
        ti = np.concatenate([model_sds[i][t].astype(np.float32).astype(np.float64).ravel() for t in base_sd])
        tv = np.concatenate([taus[i][t].ravel() for t in base_sd])
        whole[i] = {
            "relative_norm": np.sqrt((tv**2).sum() / (allb**2).sum()),
            "cosine_to_base": float(ti @ allb / np.sqrt((ti**2).sum() * (allb**2).sum())),
        }
    return out, whole


def check_report(report, base_sd, model_sds, density):
    ref, whole_ref = reference(base_sd, model_sds, density)
    n = len(model_sds)
    assert set(report.cell_keys()) == set(ref)
    for key, r in ref.items():
        agg = report.cell(*key)
        for i in range(n):
            assert agg.norm(i) == pytest.approx(r["norm"][i], rel=1e-5, abs=1e-9), key
            assert agg.relative_norm(i) == pytest.approx(r["relative_norm"][i], rel=1e-5, abs=1e-9)
            assert agg.topk_energy(i) == pytest.approx(r["topk_energy"][i], rel=1e-5, abs=1e-9)
        for (i, j), c in r["cosine"].items():
            assert agg.cosine(i, j) == pytest.approx(c, rel=1e-4, abs=1e-6), key
            assert agg.sign_conflict_pair(i, j) == pytest.approx(r["sign_conflict_pair"][i, j], abs=1e-12)
            if r["norm"][j]:
                assert agg.magnitude_ratio(i, j) == pytest.approx(r["norm"][i] / r["norm"][j], rel=1e-5)
        assert agg.sign_conflict == pytest.approx(r["sign_conflict"], abs=1e-12), key
        assert agg.trimmed_sign_conflict == pytest.approx(r["trimmed_sign_conflict"], abs=1e-12), key
        if math.isfinite(r["magnitude_asymmetry"]):
            assert agg.magnitude_asymmetry == pytest.approx(r["magnitude_asymmetry"], rel=1e-5)
        else:
            assert agg.magnitude_asymmetry == math.inf
    whole = report.whole()
    for i in range(n):
        assert whole.relative_norm(i) == pytest.approx(whole_ref[i]["relative_norm"], rel=1e-5)
        assert whole.cosine_to_base(i) == pytest.approx(whole_ref[i]["cosine_to_base"], rel=1e-6)


KERNELS = {
    "c": {},
    "torch": {"_C": False},
    # tiny chunks: exercises chunk seams
    "torch-chunked": {"_C": False, "CHUNK_CPU": 1000},
    "pairwise": {"MAX_HIST_MODELS": 1},
    # room for one set-aside index at first (tv_bracket runs again with room for all)
    "c-set-aside": {"SET_ASIDE_MIN": 1},
    # every open bucket resolved by pass 2 instead of being set aside
    "c-pass2": {"AMBIGUOUS_MAX": -1.0},
    # tensors read in segments of 100 elements (pages released between passes)
    "c-segmented": {"SEGMENT": 100},
    "c-segmented-pass2": {"SEGMENT": 100, "AMBIGUOUS_MAX": -1.0},
    "torch-segmented": {"_C": False, "SEGMENT": 100},
}


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize(
    "dtype,shards,sparse,density",
    [
        (torch.bfloat16, 1, False, 0.2),
        (torch.float16, 2, True, 0.35),
        (torch.float32, 3, False, 0.2),
        (torch.bfloat16, 1, True, 1.0),
        (torch.bfloat16, 1, False, 0.0),
    ],
)
def test_metrics_match_reference(tmp_path, monkeypatch, kernel, dtype, shards, sparse, density):
    import mergescope.stats.passes as passes
    import mergescope.stats.tvstats as tv

    for k, v in KERNELS[kernel].items():
        if k == "_C":
            monkeypatch.setenv("MERGESCOPE_NO_C_KERNELS", "1")
        else:  # the kernel's settings live in passes.py; tvstats holds copies of some
            for mod in (tv, passes):
                if hasattr(mod, k):
                    monkeypatch.setattr(mod, k, v)
    base_p, paths = make_family(tmp_path, dtype=dtype, shards=shards, sparse=sparse)
    base, models = open_models(base_p, paths)
    report = analyze_checkpoints(base, models, density=density)
    check_report(report, _load_all(base_p), [_load_all(p) for p in paths], density)


def test_lora_adapter_is_a_finetune(tmp_path):
    base_p, _ = make_family(tmp_path, n_models=0)
    base_sd = _load_all(base_p)
    g = torch.Generator().manual_seed(5)
    ad = tmp_path / "lora"
    ad.mkdir()
    r, alpha = 4, 8
    tensors = {}
    targets = [f"model.layers.{i}.self_attn.{p}_proj" for i in range(L) for p in "qv"]
    for t in targets:
        out_dim, in_dim = family_shapes()[t + ".weight"]
        tensors[f"base_model.model.{t}.lora_A.weight"] = torch.randn(r, in_dim, generator=g).to(torch.bfloat16)
        tensors[f"base_model.model.{t}.lora_B.weight"] = (0.05 * torch.randn(out_dim, r, generator=g)).to(
            torch.bfloat16
        )
    save_file(tensors, str(ad / "adapter_model.safetensors"))
    (ad / "adapter_config.json").write_text(
        json.dumps(
            {
                "r": r,
                "lora_alpha": alpha,
                "target_modules": ["q_proj", "v_proj"],
                "base_model_name_or_path": str(base_p),
                "peft_type": "LORA",
            }
        )
    )
    base, models = open_models(base_p, [ad])
    assert models[0].info(targets[0] + ".weight").shape == (H, H)
    report = analyze_checkpoints(base, models, density=0.2)
    # independent: full-shape delta B @ A * alpha / r in float64
    ft = {}
    for name, b in base_sd.items():
        t = name[: -len(".weight")]
        if t in targets:
            A = tensors[f"base_model.model.{t}.lora_A.weight"].double().numpy()
            B = tensors[f"base_model.model.{t}.lora_B.weight"].double().numpy()
            ft[name] = b + B @ A * (alpha / r)
        else:
            ft[name] = b
    ref, _ = reference(base_sd, [ft], 0.2)
    for key, rr in ref.items():
        agg = report.cell(*key)
        assert agg.norm(0) == pytest.approx(rr["norm"][0], rel=1e-4, abs=1e-6), key
    attn = report.cell(1, "attn")
    assert attn.norm(0) > 0 and report.cell(1, "mlp").norm(0) == 0


def test_json_contract_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_CACHE_DIR", str(tmp_path / "cache"))
    base_p, paths = make_family(tmp_path, n_models=2)
    report = analyze(str(base_p), [str(p) for p in paths])
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    for key in ("base", "models", "findings", "model_summary", "cells", "pair_cells", "group_cells"):
        assert key in data
    assert data["models"] == [str(p) for p in paths]
    cell = next(c for c in data["cells"] if c["layer"] == 0 and c["group"] == "attn")
    assert set(cell) >= {"layer", "group", "model", "norm", "relative_norm", "topk_energy"}
    pc = data["pair_cells"][0]
    assert set(pc) >= {"layer", "group", "a", "b", "cosine", "sign_conflict", "magnitude_ratio"}
    gc = data["group_cells"][0]
    assert set(gc) >= {"layer", "group", "sign_conflict", "trimmed_sign_conflict", "magnitude_asymmetry"}
    assert any(c["layer"] is None for c in data["cells"])
    ms = data["model_summary"][0]
    assert set(ms) >= {"model", "relative_norm", "cosine_to_base"}
    from mergescope.stats.report import Report

    again = Report.from_json(data).to_json()
    for key in ("cells", "pair_cells", "group_cells", "model_summary"):
        assert again[key] == data[key]
    # second call comes from the cache, same numbers
    cached = analyze(str(base_p), [str(p) for p in paths])
    assert cached.structure["from_cache"] and cached.to_json()["cells"] == data["cells"]
    # touching a weight file invalidates it
    import os

    w = paths[0] / "model.safetensors"
    os.utime(w, ns=(w.stat().st_atime_ns, w.stat().st_mtime_ns + 10_000_000))
    assert not analyze(str(base_p), [str(p) for p in paths]).structure["from_cache"]


def test_progress_and_cancel(tmp_path):

    base_p, paths = make_family(tmp_path, n_models=2)
    base, models = open_models(base_p, paths)
    seen = []
    analyze_checkpoints(base, models, progress=lambda d, t, label: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] and all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))
    calls = iter(range(1000))
    with pytest.raises(Cancelled):
        analyze_checkpoints(base, models, should_stop=lambda: next(calls) >= 3)


def test_non_finite_values_are_counted_and_excluded(tmp_path):
    base_p, paths = make_family(tmp_path, n_models=2)
    from safetensors.torch import save_file

    from mergescope.io.checkpoint import open_checkpoint

    ck = open_checkpoint(paths[1])
    sd = {n: ck.get(n).clone() for n in ck.names()}
    sd["model.layers.1.mlp.up_proj.weight"][0, :3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    save_file(sd, str(paths[1] / "model.safetensors"))
    base, models = open_models(base_p, paths)
    report = analyze_checkpoints(base, models)
    assert report.structure["nonfinite"] == {str(paths[1]): 3}
    assert report.structure["nonfinite_where"][str(paths[1])] == "model.layers.1.mlp.up_proj.weight"
    assert all(math.isfinite(report.whole().norm(i)) for i in range(2))


def test_c_kernel_builds_and_is_used(tmp_path, monkeypatch):
    """Where a C compiler exists the fused kernel must build (CI has one); its results are checked
    against the reference in test_metrics_match_reference[c-...]."""
    import shutil

    from mergescope.stats import kernels
    from mergescope.stats.passes import CPasses as _CPasses

    if not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler: the torch path is used")
    assert kernels.lib() is not None, kernels.build_error
    t = torch.zeros(10, dtype=torch.bfloat16)
    assert _CPasses.usable(t, [t, t], torch.device("cpu"))
    assert not _CPasses.usable(t.half(), [t, t], torch.device("cpu"))


def _stats(base, taus, density, monkeypatch, c: bool):
    from mergescope.stats import tvstats
    from mergescope.stats.report import SiteStats

    if not c:
        monkeypatch.setenv("MERGESCOPE_NO_C_KERNELS", "1")
    else:
        monkeypatch.delenv("MERGESCOPE_NO_C_KERNELS", raising=False)
    st = SiteStats(None, "mlp", "up_proj", len(taus))
    tvstats.tensor_stats(base, taus, density, st)
    return st


def _route_counts(monkeypatch):
    """How the C route went: calls of the sign-code pass (bracket) and of pass 2, and how many
    coordinates were set aside (thresholds strictly inside a bucket)."""
    from mergescope.stats.passes import CPasses as _CPasses

    seen = {"bracket": 0, "pass2": 0, "set_aside": 0}
    orig_bracket, orig_pass2 = _CPasses.bracket, _CPasses.pass2

    def bracket(self, *a):
        seen["bracket"] += 1
        out = orig_bracket(self, *a)
        seen["set_aside"] += out[4].size
        return out

    def pass2(self, *a):
        seen["pass2"] += 1
        return orig_pass2(self, *a)

    monkeypatch.setattr(_CPasses, "bracket", bracket)
    monkeypatch.setattr(_CPasses, "pass2", pass2)
    return seen


@pytest.mark.parametrize("segment", [None, 70_001])
@pytest.mark.parametrize("case", ["bf16-ties", "fp32", "fp32-sparse", "frozen", "edge-of-ties"])
def test_two_pass_route_equals_three_pass_torch(monkeypatch, case, segment):
    """The C route (thresholds from the bucket's smallest-value count, or set-aside coordinates
    resolved after one pass) gives exactly the torch three-pass integers, on tensors large enough to
    have heavy ties (bf16) and open buckets (fp32); and it takes the route it is meant to."""
    from mergescope.stats import kernels

    if kernels.lib() is None:
        pytest.skip(f"no C kernels: {kernels.build_error}")
    g = torch.Generator().manual_seed(7)
    n = 300_000
    dtype = torch.bfloat16 if case == "bf16-ties" else torch.float32
    base = (torch.randn(n, generator=g) * 0.02).to(dtype)
    taus = []
    for k in range(3):
        d = torch.randn(n, generator=g) * 1e-3 * (k + 1)
        if case == "fp32-sparse":
            d = d * (torch.rand(n, generator=g) < 0.15)  # k-th largest is 0 for density 0.2
        if case == "frozen":
            d = d * 0
        if case == "edge-of-ties":  # the k-th largest is the one value just above a run of ties
            mag = torch.full((n,), 0.5)
            mag[: n // 5 - 1] = 1.0
            mag[n // 5 - 1] = 0.50001
            d = mag[torch.randperm(n, generator=g)] * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
            base = torch.zeros(n)
        taus.append((base.float() + d).to(dtype))
    seen = _route_counts(monkeypatch)
    if segment:
        from mergescope.stats import passes

        monkeypatch.setattr(passes, "SEGMENT", segment)
    c = _stats(base, taus, 0.2, monkeypatch, c=True)
    t = _stats(base, taus, 0.2, monkeypatch, c=False)
    for f in ("numel", "multi_nz", "multi_conflict", "trim_multi_nz", "trim_multi_conflict"):
        assert getattr(c, f) == getattr(t, f), f
    for f in ("nonzero", "pair_both", "pair_opp"):
        assert np.array_equal(getattr(c, f), getattr(t, f)), f
    for f in ("sq", "dot", "topk_energy"):
        assert np.allclose(getattr(c, f), getattr(t, f), rtol=1e-5, atol=1e-12), f
    assert seen["pass2"] == 0 and seen["bracket"] == (-(-n // segment) if segment else 1)
    if case in ("fp32", "edge-of-ties"):
        assert 0 < seen["set_aside"] < n // 20  # the threshold sits strictly inside a bucket: a few set aside
    else:
        assert seen["set_aside"] == 0  # ties / zero: known after pass 1


def test_large_tensors_are_released_segment_by_segment(monkeypatch):
    """Resident memory stays at a segment per input: every pass releases each segment after it."""
    from mergescope.stats import passes, tvstats
    from mergescope.stats.report import SiteStats

    monkeypatch.setattr(passes, "SEGMENT", 1000)
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4500, generator=g)
    taus = [base + torch.randn(4500, generator=g) * 0.01 for _ in range(2)]
    released = []
    tvstats.tensor_stats(
        base, taus, 0.2, SiteStats(None, "mlp", "up_proj", 2), release=lambda a, b: released.append((a, b))
    )
    segs = [(0, 1000), (1000, 2000), (2000, 3000), (3000, 4000), (4000, 4500)]
    assert released[:5] == segs and released[5:10] == segs  # pass 1, then pass 3 / the set-aside pass
