"""Merge-readiness verdicts on the trained demo family (real checkpoints, not random ones)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergescope.stats.findings import DIFFERENT_BASE_COSINE, DRIFT_COSINE, DRIFT_RELATIVE_NORM
from mergescope.stats.readiness import analyze

FAMILY = Path(__file__).resolve().parents[1] / "analysis" / "demo" / "family"


def codes(report, model):
    return {(f.severity, f.code) for f in report.findings if f.model == model}


@pytest.fixture(scope="module")
def family_report(tmp_path_factory):
    import os

    os.environ["MERGESCOPE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    models = ["code", "prose", "dialog", "overtrained", "other_ft"]
    return analyze(str(FAMILY / "base"), [str(FAMILY / m) for m in models], labels=["base", *models])


def test_true_finetunes_are_clean(family_report):
    for m in ("code", "prose", "dialog"):
        found = codes(family_report, m)
        assert not any(sev == "error" for sev, _ in found), found
        assert ("warning", "drifted") not in found


def test_overtrained_is_drifted_not_different_base(family_report):
    found = codes(family_report, "overtrained")
    assert ("warning", "drifted") in found
    assert ("error", "different-base") not in found


def test_other_base_is_an_error(family_report):
    assert ("error", "different-base") in codes(family_report, "other_ft")
    # its card names another base too
    assert ("warning", "declared-base-differs") in codes(family_report, "other_ft")


def test_thresholds_have_margins(family_report):
    """The verdicts are not on a knife edge: each group sits well clear of each threshold."""
    w = family_report.weights()
    idx = {m: i for i, m in enumerate(family_report.models)}
    for m in ("code", "prose", "dialog"):
        assert w.relative_norm(idx[m]) < DRIFT_RELATIVE_NORM / 2
        assert w.cosine_to_base(idx[m]) > DRIFT_COSINE + 0.05
    assert w.relative_norm(idx["overtrained"]) > DRIFT_RELATIVE_NORM * 2
    assert DIFFERENT_BASE_COSINE + 0.2 < w.cosine_to_base(idx["overtrained"]) < DRIFT_COSINE - 0.1
    assert w.cosine_to_base(idx["other_ft"]) < DIFFERENT_BASE_COSINE - 0.2


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_vocab_rows_changed(tmp_path):
    ft = _copy(FAMILY / "code", tmp_path / "bigvocab")
    sd = load_file(str(ft / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        sd[name] = torch.cat([sd[name], torch.zeros(8, sd[name].shape[1], dtype=sd[name].dtype)])
    save_file(sd, str(ft / "model.safetensors"))
    cfg = json.loads((ft / "config.json").read_text())
    cfg["vocab_size"] += 8
    (ft / "config.json").write_text(json.dumps(cfg))
    r = analyze(str(FAMILY / "base"), [str(ft)], labels=["base", "bigvocab"])
    # rows without tokens (the tokenizer still has 256): compared on the shared tokens, mergeable once aligned
    assert ("warning", "vocab-mismatch") in codes(r, "bigvocab")
    assert ("error", "shape-mismatch") not in codes(r, "bigvocab")
    msg = next(f.message for f in r.findings if f.code == "vocab-mismatch")
    assert "264 rows" in msg and "256" in msg and "tokenizer_source: union" in msg
    (ft / "tokenizer.json").unlink()  # nothing to align by: an error
    r = analyze(str(FAMILY / "base"), [str(ft)], labels=["base", "bigvocab"])
    assert ("error", "vocab-mismatch") in codes(r, "bigvocab")


def test_tokenizer_changed(tmp_path):
    ft = _copy(FAMILY / "prose", tmp_path / "newtok")
    tok = json.loads((ft / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[65], list(vocab)[66]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two ids swapped: same size, different meaning
    (ft / "tokenizer.json").write_text(json.dumps(tok))
    r = analyze(str(FAMILY / "base"), [str(ft)], labels=["base", "newtok"])
    assert ("warning", "vocab-mismatch") in codes(r, "newtok")


def test_nan_is_non_finite(tmp_path):
    ft = _copy(FAMILY / "dialog", tmp_path / "nan")
    sd = load_file(str(ft / "model.safetensors"))
    sd["model.layers.2.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(sd, str(ft / "model.safetensors"))
    r = analyze(str(FAMILY / "base"), [str(ft)], labels=["base", "nan"])
    assert ("error", "non-finite") in codes(r, "nan")
    msg = next(f.message for f in r.findings if f.code == "non-finite")
    assert "1 NaN/Inf" in msg and "model.layers.2.mlp.up_proj.weight" in msg


def test_missing_tensor_and_dtype(tmp_path):
    ft = _copy(FAMILY / "code", tmp_path / "partial")
    sd = load_file(str(ft / "model.safetensors"))
    del sd["model.layers.3.self_attn.k_proj.weight"]
    sd["model.norm.weight"] = sd["model.norm.weight"].float()
    save_file(sd, str(ft / "model.safetensors"))
    r = analyze(str(FAMILY / "base"), [str(ft)], labels=["base", "partial"])
    found = codes(r, "partial")
    assert ("error", "missing-tensors") in found and ("warning", "dtype-mixed") in found


def test_magnitude_asymmetry(family_report):
    f = [f for f in family_report.findings if f.code == "magnitude-asymmetry"]
    assert f and f[0].model == "overtrained"
