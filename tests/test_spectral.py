"""Spectral interference metrics (analysis/spectral.py) against float64 full-SVD references, known cases,
aggregation, and `analyze --spectral` end to end (CLI, JSON, cache)."""

import json
import math

import numpy as np
import pytest
import torch

from mergescope.io.progress import Cancelled
from mergescope.stats import spectral as sp
from mergescope.stats.readiness import analyze
from mergescope.stats.report import Report
from mergescope.tui.cli import main
from tests.ckpt_utils import load_state, make_finetune, make_llama, make_lora

RANDOMIZED = {"exact_max": 0}  # force the randomized SVD on small matrices


def reference(deltas, k, coeffs=None):
    """The definitions, in float64 numpy from full SVDs."""
    svd = [np.linalg.svd(d, full_matrices=False) for d in deltas]
    us = [u[:, :k] for u, _, _ in svd]
    ss = [s[:k] for _, s, _ in svd]
    vs = [vt[:k].T for _, _, vt in svd]
    n = len(deltas)
    energy = [float((s**2).sum() / (d**2).sum()) for s, d in zip(ss, deltas)]
    overlap = np.ones((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                overlap[i, j] = (((us[i].T @ us[j]) ** 2).sum() + ((vs[i].T @ vs[j]) ** 2).sum()) / (2 * k)
    uh, vh, sh = np.hstack(us), np.hstack(vs), np.concatenate(ss)
    eye = np.eye(len(sh))
    sti = float(np.abs((uh.T @ uh - eye) @ np.diag(sh) @ (vh.T @ vh - eye)).sum() / sh.sum())
    c = np.ones(n) if coeffs is None else np.asarray(coeffs, dtype=np.float64)
    merged = sum(ci * d for ci, d in zip(c, deltas))
    um, sm, _ = np.linalg.svd(merged, full_matrices=False)
    cum = np.cumsum(sm**2) / (merged**2).sum()
    r = min(int(np.searchsorted(cum, 0.95 - 1e-6)) + 1, k)
    p = um[:, :r]
    sar = [float(np.linalg.norm(p.T @ d) / np.linalg.norm(d)) for d in deltas]
    return {"energy": energy, "overlap": overlap, "sti": sti, "sar": sar, "rank": r}


def low_rank(rng, m, n, r, noise=1e-4, shared=None):
    """A rank-r matrix with decaying σ (+ noise); `shared`: (U, V) of directions it shares partly."""
    u = np.linalg.qr(rng.standard_normal((m, r)))[0]
    v = np.linalg.qr(rng.standard_normal((n, r)))[0]
    if shared is not None:
        u = np.linalg.qr(u + 0.8 * shared[0])[0]
        v = np.linalg.qr(v + 0.8 * shared[1])[0]
    s = 2.0 ** -np.arange(r) * (1 + rng.random())
    return (u * s) @ v.T + noise * rng.standard_normal((m, n)) / math.sqrt(m * n)


def ours(deltas, k, coeffs=None, **kw):
    site = sp.matrix_site([torch.from_numpy(d).float() for d in deltas], rank=k, coeffs=coeffs, name="w", **kw)
    return sp.SpectralAggregate([site], len(deltas)), site


@pytest.mark.parametrize("kw", [{}, RANDOMIZED], ids=["exact", "randomized"])
@pytest.mark.parametrize("coeffs", [None, [1.0, 0.5, -0.3]])
def test_metrics_match_float64_reference(kw, coeffs):
    rng = np.random.default_rng(0)
    m, n, k = 150, 110, 6
    common = (rng.standard_normal((m, k)), rng.standard_normal((n, k)))
    deltas = [low_rank(rng, m, n, k, shared=common) for _ in range(3)]
    ref = reference(deltas, k, coeffs)
    agg, site = ours(deltas, k, coeffs, **kw)
    for i in range(3):
        assert agg.spectral_energy(i) == pytest.approx(ref["energy"][i], abs=1e-3)
        assert agg.sar(i) == pytest.approx(ref["sar"][i], abs=1e-3)
        for j in range(3):
            assert agg.subspace_overlap(i, j) == pytest.approx(ref["overlap"][i, j], abs=1e-3)
    assert agg.sti == pytest.approx(ref["sti"], abs=1e-3)
    assert 0.05 < ref["sti"] and 0.1 < ref["overlap"][0, 1] < 0.99  # a case with interference to measure
    assert site.sar_rank == ref["rank"]


def test_top_svd_against_float64_on_a_decaying_spectrum():
    rng = np.random.default_rng(1)
    a = low_rank(rng, 300, 200, 40, noise=1e-3)
    u, s, v = sp.top_svd(torch.from_numpy(a).float(), 12, **RANDOMIZED)
    ue, se, vte = np.linalg.svd(a, full_matrices=False)
    assert np.allclose(s.numpy(), se[:12], rtol=1e-3)
    proj = u.double().numpy() @ u.double().numpy().T
    assert np.linalg.norm(proj - ue[:, :12] @ ue[:, :12].T) < 1e-3
    assert np.abs(v.double().numpy().T @ v.double().numpy() - np.eye(12)).max() < 1e-5


@pytest.mark.parametrize("kw", [{}, RANDOMIZED], ids=["exact", "randomized"])
def test_known_cases(kw):
    rng = np.random.default_rng(2)
    flat = rng.standard_normal((120, 100))  # full rank, flat spectrum: the hardest case for the sketch
    agg, _ = ours([flat, flat.copy()], 8, **kw)
    assert agg.subspace_overlap(0, 1) == pytest.approx(1.0, abs=1e-5)  # identical task vectors
    assert agg.sti == pytest.approx(1.0, abs=1e-4)  # each one's directions are all in the other's
    # orthogonal subspaces: Δ₁ lives in the first rows/columns, Δ₂ in the others
    a, b = np.zeros((120, 100)), np.zeros((120, 100))
    a[:60, :50] = low_rank(rng, 60, 50, 5)
    b[60:, 50:] = low_rank(rng, 60, 50, 5)
    agg, _ = ours([a, b], 5, **kw)
    assert agg.sti < 1e-5 and agg.subspace_overlap(0, 1) < 1e-5
    # rank ≤ K: all the energy, and only the real directions are kept
    r3 = low_rank(rng, 120, 100, 3, noise=0.0)
    agg, site = ours([r3, a], 8, **kw)
    assert agg.spectral_energy(0) == pytest.approx(1.0, abs=1e-6) and site.rank[0] == 3
    # one model: the merged task vector is its own, P holds ≥ 95 % of it
    agg, site = ours([r3], 8, **kw)
    assert math.sqrt(0.95) - 1e-6 <= agg.sar(0) <= 1.0 and site.sar_capped == 0 and agg.sti == 0.0


def test_unchanged_and_cancelling_matrices():
    rng = np.random.default_rng(3)
    d = low_rank(rng, 40, 30, 4)
    agg, site = ours([d, np.zeros_like(d)], 4)
    assert agg.spectral_energy(1) == 0.0 and agg.subspace_overlap(0, 1) == 0.0 and site.pair_w[0, 1] == 0
    agg, site = ours([d, -d], 4)  # the plain sum is 0: no merged subspace
    assert site.merged == 0 and agg.sar(0) == 0.0 and agg.subspace_overlap(0, 1) == pytest.approx(1.0, abs=1e-5)


def test_cells_aggregate_by_weights():
    rng = np.random.default_rng(4)
    m1 = [low_rank(rng, 50, 40, 5), low_rank(rng, 50, 40, 6)]
    m2 = [5 * low_rank(rng, 50, 40, 4), 5 * low_rank(rng, 50, 40, 8)]
    sites = [sp.matrix_site([torch.from_numpy(x).float() for x in ds], rank=4) for ds in (m1, m2)]
    agg = sp.SpectralAggregate(sites, 2)
    refs = [reference(ds, 4) for ds in (m1, m2)]
    sq = np.array([[(x**2).sum() for x in ds] for ds in (m1, m2)])  # [matrix, model]
    for i in range(2):
        want = sum(r["energy"][i] * sq[t, i] for t, r in enumerate(refs)) / sq[:, i].sum()
        assert agg.spectral_energy(i) == pytest.approx(want, abs=1e-4)
    w = np.sqrt(sq[:, 0] * sq[:, 1])
    want = sum(w[t] * refs[t]["overlap"][0, 1] for t in range(2)) / w.sum()
    assert agg.subspace_overlap(0, 1) == pytest.approx(want, abs=1e-4)


@pytest.fixture
def tiny(tmp_path):
    base = make_llama(tmp_path / "base", n_layers=2, hidden=16, vocab=32, dtype=torch.bfloat16, seed=0)
    fts = [make_finetune(base, tmp_path / f"ft{i}", scale=0.01, seed=i + 1) for i in range(2)]
    return base, fts


def test_end_to_end_matches_reference_and_caches(tiny):
    base, fts = tiny
    paths = [str(p) for p in fts]
    plain = analyze(str(base), paths)  # a non-spectral analysis, cached
    assert plain.spectral is None and not plain.structure["from_cache"]
    rep = analyze(str(base), paths, spectral=4)
    assert rep.structure["from_cache"] and rep.spectral is not None and not rep.spectral.from_cache
    b, f = load_state(base), [load_state(p) for p in fts]
    for name in ("model.layers.1.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"):
        deltas = [x[name].double().numpy() - b[name].double().numpy() for x in f]
        ref = reference(deltas, 4)
        agg = rep.spectral.cell(int(name.split(".")[2]), name.split(".")[3].replace("self_", ""))
        module = rep.spectral.module_cell(int(name.split(".")[2]), name.split(".")[-2])
        assert module.spectral_energy(1) == pytest.approx(ref["energy"][1], abs=1e-3)
        assert module.sar(0) == pytest.approx(ref["sar"][0], abs=1e-3)
        assert module.subspace_overlap(0, 1) == pytest.approx(ref["overlap"][0, 1], abs=1e-3)
        assert module.sti == pytest.approx(ref["sti"], abs=1e-3)
        assert agg.matrices == (4 if "attn" in name else 3)
    assert {g for _, g in rep.spectral.cell_keys()} == {"attn", "mlp"} and rep.spectral.whole().matrices == 14
    again = analyze(str(base), paths, spectral=4)
    assert again.spectral.from_cache and again.spectral.cells() == rep.spectral.cells()
    assert not analyze(str(base), paths, spectral=3).spectral.from_cache  # keyed by K
    assert analyze(str(base), paths, density=0.3, spectral=4).spectral.from_cache  # not by the density
    data = json.loads(json.dumps(rep.to_json(), allow_nan=False))
    assert Report.from_json(data).to_json()["spectral"] == data["spectral"]
    assert plain.to_json()["spectral"] is None
    with pytest.raises(Cancelled):  # the analysis is cached: only the spectral pass asks
        analyze(str(base), paths, spectral=5, should_stop=lambda: True)
    seen = []
    assert not analyze(str(base), paths, spectral=5, progress=lambda *a: seen.append(a)).spectral.from_cache
    assert seen[-1][0] == seen[-1][1] and seen[-1][2].startswith("spectral 14/14")


def test_weights_and_lora_rank(tmp_path):
    base = make_llama(tmp_path / "base", n_layers=1, hidden=16, vocab=32, seed=0)
    ft = make_finetune(base, tmp_path / "ft", scale=0.01, seed=1)
    lora = make_lora(base, tmp_path / "lora", rank=2, targets=("q_proj", "v_proj"))
    from mergescope.io.checkpoint import open_models
    from mergescope.stats.spectral import analyze_spectral

    b_ck, m_cks = open_models(str(base), [str(ft), str(lora)])
    spectral = analyze_spectral(b_ck, m_cks, rank=4, weights=lambda nm: [1.0, 0.0], weights_label="custom")
    q = spectral.module_cell(0, "q_proj")
    assert q.total.rank[1] == 2 and q.spectral_energy(1) == pytest.approx(1.0, abs=1e-5)  # rank ≤ K
    name = "model.layers.0.self_attn.q_proj.weight"
    b, f, adapted = load_state(base)[name].double(), load_state(ft)[name].double(), None
    from tests.ckpt_utils import lora_delta

    adapted = lora_delta(lora)[name].double()
    ref = reference([(f - b).numpy(), adapted.numpy()], 4, coeffs=[1.0, 0.0])
    assert q.sar(1) == pytest.approx(ref["sar"][1], abs=1e-3)
    assert spectral.weights == "custom" and spectral.module_cell(0, "k_proj").total.rank[1] == 0


def test_cli_spectral_table_json_and_rank_errors(tiny, tmp_path, capsys):
    base, fts = tiny
    out = tmp_path / "r.json"
    assert main(["analyze", str(base), *map(str, fts), "--spectral", "--rank", "4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "spectral" in text and "STI" in text and "L1" in text
    data = json.loads(out.read_text())["spectral"]
    assert data["rank"] == 4 and data["groups"] == ["attn", "mlp"]
    assert set(data["cells"][0]) >= {"layer", "group", "model", "spectral_energy", "sar"}
    assert set(data["pair_cells"][0]) >= {"layer", "group", "a", "b", "subspace_overlap"}
    assert set(data["group_cells"][0]) >= {"layer", "group", "sti", "merged_energy", "sar_rank", "sar_capped"}
    assert set(data["model_summary"][0]) >= {"model", "spectral_energy", "sar"} and data["summary"]["matrices"] == 14
    assert main(["analyze", str(base), *map(str, fts), "--rank", "4"]) == 2  # --rank without --spectral
    assert main(["analyze", str(base), *map(str, fts), "--spectral", "--rank", "0"]) == 2


def test_a_model_outside_the_merged_subspace_gets_a_finding(tmp_path):
    """SAR below SAR_NOTE: one small task vector orthogonal to a dominant one is left out of the sum's
    top subspace; the finding names it."""
    import torch

    from mergescope.stats.findings import SAR_NOTE
    from mergescope.stats.readiness import analyze
    from tests.ckpt_utils import load_state, make_llama, write_state

    base = make_llama(tmp_path / "base", n_layers=1, hidden=32, vocab=32, seed=0)
    sd = load_state(base)
    g = torch.Generator().manual_seed(1)
    cfg = __import__("json").loads((base / "config.json").read_text())

    def low_rank(v, scale, offset):  # rank 2 in directions no other model uses
        u = torch.zeros(v.shape[0], 2)
        w = torch.zeros(2, v.shape[1])
        u[offset, 0] = u[offset + 1, 1] = 1.0
        w[0, offset] = w[1, offset + 1] = 1.0
        return v + scale * (u @ w) * (1 + 0.1 * torch.randn(1, generator=g))

    big = {k: low_rank(v, 0.5, 0) if v.ndim == 2 else v for k, v in sd.items()}
    small = {k: low_rank(v, 0.01, 4) if v.ndim == 2 else v for k, v in sd.items()}
    a, b = write_state(tmp_path / "big", big, config=cfg), write_state(tmp_path / "small", small, config=cfg)
    rep = analyze(str(base), [str(a), str(b)], spectral=4, use_cache=False)
    sar = rep.spectral.whole()
    assert sar.sar(1) < SAR_NOTE <= sar.sar(0)
    (f,) = [f for f in rep.findings if f.code == "low-subspace-alignment"]
    assert f.model == rep.models[1] and "SAR" in f.message


def test_a_capped_sar_gives_no_alignment_verdict():
    """On the demo fine-tunes at K = 8, 95 % of the summed task vector needs more than 8 directions in every
    matrix: the SAR measures the cap, so no model is called misaligned; at K = 64 nothing is capped and the
    calibrated rule speaks."""
    from mergescope.demo import family_dir
    from mergescope.stats.readiness import analyze

    fam = family_dir()
    models = [str(fam / m) for m in ("code", "prose", "dialog")]
    capped = analyze(str(fam / "base"), models, spectral=8)
    assert capped.spectral.whole().sar_capped == 1.0
    found = {f.code: f for f in capped.findings}
    assert "low-subspace-alignment" not in found
    assert found["sar-capped"].severity == "info" and "K = 8" in found["sar-capped"].message
    full = analyze(str(fam / "base"), models, spectral=64)
    assert full.spectral.whole().sar_capped == 0.0
    codes = [f.code for f in full.findings]
    assert "sar-capped" not in codes and codes.count("low-subspace-alignment") == 3
