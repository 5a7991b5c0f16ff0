"""`mergescope extract-lora`: B·A reproduces low-rank task vectors exactly, the rank rule matches numpy's
SVD energies, mergescope and PEFT read the adapter back, and bad input is one line with exit 2."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mergescope.io.checkpoint import AdaptedCheckpoint, LoraCheckpoint, open_checkpoint, open_models
from mergescope.io.errors import InputError
from mergescope.io.guard import MARKER
from mergescope.lora.extract import choose_rank, extract_lora, truncated_svd
from mergescope.tui.cli import main
from tests.ckpt_utils import load_state, lora_delta, make_finetune, make_llama, make_lora, write_state

ATTN = [f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "qkvo"]


def _materialise(base: Path, adapter: Path, out: Path) -> Path:
    """A full checkpoint equal to base + the adapter's delta (float32)."""
    sd = load_state(base)
    for name, d in lora_delta(adapter).items():
        sd[name] = sd[name].float() + d
    return write_state(out, sd, config=json.loads((base / "config.json").read_text()))


def _adapter(out: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((out / "adapter_config.json").read_text()), load_file(str(out / "adapter_model.safetensors"))


def _ba(sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    module = name.removesuffix(".weight")
    return sd[f"base_model.model.{module}.lora_B.weight"] @ sd[f"base_model.model.{module}.lora_A.weight"]


@pytest.fixture
def lowrank_ft(tmp_path):
    """A float32 Llama and a fine-tune that IS base + a rank-2 LoRA on q_proj and v_proj."""
    base = make_llama(tmp_path / "base", n_layers=2, hidden=16, vocab=32)
    lora = make_lora(base, tmp_path / "lora", rank=2, targets=("q_proj", "v_proj"))
    return base, _materialise(base, lora, tmp_path / "ft"), lora


def _spectral_ft(tmp_path) -> tuple[Path, Path]:
    """A fine-tune whose task vectors have chosen ranks: q_proj 1, v_proj 3, the MLP full rank; norms change."""
    base = make_llama(tmp_path / "base", n_layers=2, hidden=16, vocab=32)
    g = torch.Generator().manual_seed(7)
    sd = load_state(base)
    for name, t in sd.items():
        k = {"q_proj": 1, "v_proj": 3}.get(name.split(".")[-2])
        if t.ndim == 2 and k:
            d = torch.randn(t.shape[0], k, generator=g) @ torch.randn(k, t.shape[1], generator=g)
        else:
            d = torch.randn(t.shape, generator=g)
        sd[name] = t + 0.01 * d
    return base, write_state(tmp_path / "ft", sd, config=json.loads((base / "config.json").read_text()))


def test_a_rank2_finetune_is_reproduced_at_rank_2(lowrank_ft, tmp_path):
    base, ft, _ = lowrank_ft
    res = extract_lora(base, ft, tmp_path / "out", rank=2)
    cfg, sd = _adapter(tmp_path / "out")
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["r"] == cfg["lora_alpha"] == 2
    assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"] and not cfg["modules_to_save"]
    assert cfg["base_model_name_or_path"] == str(base) and cfg["rank_pattern"] == {}
    b, m = load_state(base), load_state(ft)
    names = [n for n in ATTN if ".q_proj" in n or ".v_proj" in n]
    assert sorted(x.name for x in res.matrices) == sorted(names)
    for name in names:
        delta = m[name] - b[name]
        module = name.removesuffix(".weight")
        assert sd[f"base_model.model.{module}.lora_A.weight"].shape == (2, 16)
        assert sd[f"base_model.model.{module}.lora_B.weight"].shape == (16, 2)
        torch.testing.assert_close(_ba(sd, name), delta, rtol=0, atol=1e-6 * float(delta.abs().max()))
    assert all(x.kept_share > 1 - 1e-6 for x in res.matrices)
    groups = res.groups()
    assert set(groups) == {"attn", "all"} and groups["attn"].kept_share_lora > 1 - 1e-6
    assert not res.lost and not res.full and res.unchanged == len(m) - len(names)
    assert "| attn | 4 | 4 | 2 | 100.00 % |" in (tmp_path / "out" / "README.md").read_text()


def test_mergescope_reads_the_adapter_back(lowrank_ft, tmp_path):
    base, ft, lora = lowrank_ft
    extract_lora(base, ft, tmp_path / "out", rank=4)
    ck = open_checkpoint(tmp_path / "out")
    assert isinstance(ck, LoraCheckpoint) and ck.scale == 1.0 and ck.declared_base == str(base)
    _, sd = _adapter(tmp_path / "out")
    for name, d in lora_delta(tmp_path / "out").items():
        torch.testing.assert_close(ck.get(name), _ba(sd, name))  # B·A·scale, scale 1
        ref = lora_delta(lora)[name]
        torch.testing.assert_close(d, ref, rtol=0, atol=1e-6 * float(ref.abs().max()))
    _, (adapted,) = open_models(base, [tmp_path / "out"])
    assert isinstance(adapted, AdaptedCheckpoint)
    m = load_state(ft)
    for name in adapted.names():
        torch.testing.assert_close(adapted.get(name).float(), m[name], rtol=0, atol=1e-7)


def test_sv_threshold_chooses_ranks_like_numpy_and_writes_rank_pattern(tmp_path):
    base, ft = _spectral_ft(tmp_path)
    res = extract_lora(base, ft, tmp_path / "out", rank=8, sv_threshold=0.9)
    cfg, sd = _adapter(tmp_path / "out")
    b, m = load_state(base), load_state(ft)
    ranks = {}
    for x in res.matrices:
        s = np.linalg.svd((m[x.name] - b[x.name]).double().numpy(), compute_uv=False)
        cum = np.cumsum(s**2) / np.sum(s**2)
        want = min(8, int(np.searchsorted(cum, 0.9 - 1e-6)) + 1)
        assert x.rank == want, x.name
        assert abs(x.kept_share - cum[want - 1]) < 1e-5
        assert choose_rank(list(s**2), float(np.sum(s**2)), 8, 0.9) == want
        ranks[x.name.removesuffix(".weight")] = want
    assert {ranks[f"model.layers.{i}.self_attn.{p}_proj"] for i in range(2) for p in "qv"} <= {1, 3}
    assert cfg["r"] == max(ranks.values()) == 8
    assert cfg["rank_pattern"] == {k: v for k, v in ranks.items() if v != 8} == cfg["alpha_pattern"]
    assert "model.layers.0.self_attn.q_proj" in cfg["rank_pattern"]
    assert sd["base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"].shape == (3, 16)
    # the norms changed: saved whole (modules_to_save), exact in mergescope's view
    assert "model.norm" in cfg["modules_to_save"] and "model.layers.0.input_layernorm" in cfg["modules_to_save"]
    _, (adapted,) = open_models(base, [tmp_path / "out"])
    assert torch.equal(adapted.get("model.norm.weight"), m["model.norm.weight"])
    assert {t.name for t in res.lost} == {"model.embed_tokens.weight", "lm_head.weight"}


def test_embeddings_are_saved_whole_and_lora_only_drops_norms(tmp_path):
    base, ft = _spectral_ft(tmp_path)
    res = extract_lora(base, ft, tmp_path / "emb", rank=4, embeddings=True)
    cfg, sd = _adapter(tmp_path / "emb")
    assert {"model.embed_tokens", "lm_head"} <= set(cfg["modules_to_save"]) and not res.lost
    assert torch.equal(sd["base_model.model.lm_head.weight"], load_state(ft)["lm_head.weight"])
    assert res.groups()["embed"].kept_share_all == 1.0
    res = extract_lora(base, ft, tmp_path / "pure", rank=4, lora_only=True)
    cfg, sd = _adapter(tmp_path / "pure")
    assert not cfg["modules_to_save"] and all(".lora_" in k for k in sd)
    assert {t.group for t in res.lost} == {"embed", "head", "norm"}
    assert res.groups()["norm"].kept_share_all == 0.0


def test_include_and_exclude_select_tensors(tmp_path):
    base, ft = _spectral_ft(tmp_path)
    res = extract_lora(base, ft, tmp_path / "out", rank=2, include=["self_attn"], exclude=[r"k_proj", r"layers\.1\."])
    cfg, _ = _adapter(tmp_path / "out")
    assert sorted(x.name for x in res.matrices) == [n for n in sorted(ATTN) if "layers.0" in n and "k_proj" not in n]
    assert sorted(cfg["target_modules"]) == sorted(n.removesuffix(".weight") for n in ATTN[:4] if "k_proj" not in n)
    assert not cfg["modules_to_save"]
    why = {t.name: t.why for t in res.lost}
    assert "left out" in why["model.layers.0.mlp.up_proj.weight"] and "left out" in why["model.norm.weight"]


@pytest.mark.parametrize("solver", ["eigh", "svd", "lowrank"])
def test_the_solvers_agree_with_numpy(solver):
    g = torch.Generator().manual_seed(3)
    for shape in ((40, 24), (24, 40)):
        d = torch.randn(shape, generator=g) * torch.logspace(0, -3, shape[1])[None, :]
        u, s, vh = truncated_svd(d, 6, solver)
        ref = np.linalg.svd(d.double().numpy(), compute_uv=False)[:6]
        assert u.shape == (shape[0], 6) and vh.shape == (6, shape[1])
        tol = 1e-5 if solver != "lowrank" else 1e-2
        np.testing.assert_allclose(s.double().numpy(), ref, rtol=tol)
        captured = float(((u.T @ d) ** 2).sum())
        assert captured == pytest.approx(float((ref**2).sum()), rel=tol)


def test_cli_prints_the_table_and_writes_json(lowrank_ft, tmp_path, capsys):
    base, ft, _ = lowrank_ft
    out, js = tmp_path / "out", tmp_path / "r.json"
    assert main(["extract-lora", str(base), str(ft), "-o", str(out), "--rank", "2", "--json", str(js), "-q"]) == 0
    text = capsys.readouterr().out
    assert "extracted" in text and "attn" in text and "100.00 %" in text
    data = json.loads(js.read_text())
    assert data["rank"] == 2 and len(data["matrices"]) == 4
    assert all(x["rank"] == 2 and x["kept_share"] > 1 - 1e-6 for x in data["matrices"])
    assert data["groups"]["attn"]["kept_share_lora"] > 1 - 1e-6


def _one_line_error(capsys, argv, *needles):
    assert main(["extract-lora", *argv, "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mergescope extract-lora: error:"), err
    for n in needles:
        assert n in err[0], err[0]


def test_bad_input_is_one_line_and_exit_2(lowrank_ft, tmp_path, capsys):
    base, ft, _ = lowrank_ft
    out = str(tmp_path / "out")
    _one_line_error(capsys, [str(base), str(ft), "-o", out, "--rank", "0"], "--rank 0")
    _one_line_error(capsys, [str(base), str(ft), "-o", out, "-r", "2", "--sv-threshold", "1.5"], "(0, 1]")
    _one_line_error(capsys, [str(base), str(tmp_path / "nope"), "-o", out, "-r", "2"], "nope", "no such file")
    _one_line_error(capsys, [str(base), str(ft), "-o", out, "-r", "2", "--include", "("], "--include", "regular")
    other = make_llama(tmp_path / "other", n_layers=2, hidden=16, vocab=40)
    _one_line_error(capsys, [str(base), str(other), "-o", out, "-r", "2"], "lm_head.weight", "[40, 16]", "[32, 16]")
    _one_line_error(capsys, [str(base), str(base), "-o", out, "-r", "2"], "nothing to extract")
    _one_line_error(capsys, [str(base), str(ft), "-o", str(ft / "lora"), "-r", "2"], "inside the input folder")
    _one_line_error(capsys, [str(base), str(ft), "-o", out, "-r", "2", "--include", "nomatch"], "no matrix selected")
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    _one_line_error(capsys, [str(base), str(ft), "-o", out, "-r", "2"], "not empty", "--force")
    _one_line_error(capsys, [str(base), str(ft), "-o", out, "-r", "2", "--force"], "did not write it", "keep.txt")
    (tmp_path / "out" / MARKER).write_text("")  # an earlier output: --force may replace it
    assert main(["extract-lora", str(base), str(ft), "-o", out, "-r", "2", "--force", "-q"]) == 0
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "adapter_config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_a_failure_midway_leaves_nothing(lowrank_ft, tmp_path, monkeypatch):
    import mergescope.lora.extract as le

    base, ft, _ = lowrank_ft
    calls = []

    def boom(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    real = le._lora_pair
    monkeypatch.setattr(le, "_lora_pair", boom)
    with pytest.raises(KeyboardInterrupt):
        extract_lora(base, ft, tmp_path / "out", rank=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ft", "lora"]
    with pytest.raises(InputError, match="NaN"):
        sd = load_state(ft)
        sd["model.layers.0.self_attn.q_proj.weight"][0, 0] = float("nan")
        monkeypatch.setattr(le, "_lora_pair", real)
        extract_lora(base, write_state(tmp_path / "nan", sd), tmp_path / "out", rank=2)
    assert not (tmp_path / "out").exists()


# -- optional: PEFT loads the adapter (peft + transformers live in the mergekit virtualenv) ----------------
_PEFT_DRIVER = r"""
import json, sys, torch
from safetensors.torch import save_file
from transformers import LlamaForCausalLM
from peft import PeftModel
for base, adapter, out in json.loads(sys.argv[1]):
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    save_file({k: v.detach().contiguous() for k, v in merged.state_dict().items()}, out)
"""


def _peft_python():
    from tests.mergekit_utils import mergekit_python

    py = mergekit_python()
    if py is None:
        return None
    r = subprocess.run([str(py), "-c", "import peft, transformers"], capture_output=True, timeout=300)
    return py if r.returncode == 0 else None


@pytest.mark.mergekit
def test_peft_loads_and_merges_the_adapter_like_mergescope(tmp_path):
    py = _peft_python()
    if py is None:
        pytest.skip("no virtualenv with peft + transformers (run scripts/setup_mergekit_venv.sh)")
    base, ft = _spectral_ft(tmp_path)
    jobs = []
    for name, kw in {"plain": {}, "pattern": {"sv_threshold": 0.9}, "emb": {"embeddings": True}}.items():
        extract_lora(base, ft, tmp_path / name, rank=4, **kw)
        jobs.append((str(base), str(tmp_path / name), str(tmp_path / f"{name}.merged.safetensors")))
    assert _adapter(tmp_path / "pattern")[0]["rank_pattern"]
    r = subprocess.run([str(py), "-c", _PEFT_DRIVER, json.dumps(jobs)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for _, adapter, merged in jobs:
        peft_sd = load_file(merged)
        _, (ours,) = open_models(base, [adapter])
        assert set(ours.names()) <= set(peft_sd)
        for name in ours.names():
            torch.testing.assert_close(peft_sd[name], ours.get(name).float(), rtol=1e-5, atol=1e-6, msg=name)
    full = load_file(str(tmp_path / "emb.merged.safetensors"))
    m = load_state(ft)
    assert torch.equal(full["model.embed_tokens.weight"], m["model.embed_tokens.weight"])
    assert torch.equal(
        full["model.layers.1.post_attention_layernorm.weight"], m["model.layers.1.post_attention_layernorm.weight"]
    )


def test_make_finetune_extraction_smoke(tmp_path):
    """A full-rank fine-tune in bf16 (the common case) extracts; kept shares are in (0, 1]."""
    base = make_llama(tmp_path / "base", dtype=torch.bfloat16)
    ft = make_finetune(base, tmp_path / "ft", scale=0.01)
    res = extract_lora(base, ft, tmp_path / "out", rank=3, solver="svd")
    assert all(0 < x.kept_share <= 1 and x.rank == 3 for x in res.matrices)
    assert open_checkpoint(tmp_path / "out").info(ATTN[0]).shape == (16, 16)
