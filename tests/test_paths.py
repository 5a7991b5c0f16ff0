"""Paths that travel: the analysis cache finds the same files however they are spelled, an extracted
adapter names a base that resolves from any folder, and a plan written into another folder (a best
plan, a soup's plan, an exported one) merges from there."""

import json
import os
from pathlib import Path

import pytest
import torch

from mergescope.io.checkpoint import open_checkpoint
from mergescope.lora.extract import base_reference, extract_lora
from mergescope.merge.plan import Plan
from mergescope.merge.run import merge_in_memory
from mergescope.stats.readiness import analysis_for_plan, analyze
from mergescope.tui.cli import main
from tests.ckpt_utils import load_state, make_finetune, make_llama

TEXT = ("A tiny held-out text for the tiny models; " * 30).encode()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """tmp/proj/ckpt/{base, ft1, ft2} (byte-level: vocab 256, no tokenizer files), the cwd tmp/proj."""
    proj = tmp_path / "proj"
    base = make_llama(proj / "ckpt" / "base", n_layers=2, hidden=16, vocab=256, seed=0)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (base / f).unlink(missing_ok=True)
    for i in (1, 2):
        make_finetune(base, proj / "ckpt" / f"ft{i}", scale=0.01 * i, seed=i)
    (proj / "text.txt").write_bytes(TEXT)
    monkeypatch.chdir(proj)
    return proj


def _elsewhere(tmp_path, monkeypatch) -> Path:
    other = tmp_path / "elsewhere" / "deeper"
    other.mkdir(parents=True)
    monkeypatch.chdir(other)
    return other


# ---- the analysis cache ------------------------------------------------------------------------
def test_the_cache_finds_the_same_files_under_another_spelling(project, tmp_path):
    first = analyze("ckpt/base", ["ckpt/ft1", "ckpt/ft2"])
    assert not first.structure["from_cache"]
    absolute = [str(project / "ckpt" / n) for n in ("base", "ft1", "ft2")]
    plan = Plan.from_dict(
        {"merge_method": "ties", "base_model": absolute[0], "models": [{"model": m} for m in absolute[1:]]}
    )
    hit = analysis_for_plan(plan)  # cache only: "no analysis on record" before
    assert hit is not None and hit.structure["from_cache"]
    assert [hit.base, *hit.models] == absolute
    assert set(hit.structure["meta"]) == set(hit.structure["dtypes"]) | {absolute[0]} == set(absolute)
    assert {f.model for f in hit.findings if f.model} <= set(absolute)
    assert hit.whole().norm(1) == first.whole().norm(1)
    os.symlink(project / "ckpt", tmp_path / "link")
    linked = analyze(str(tmp_path / "link" / "base"), [str(tmp_path / "link" / "ft1"), "ckpt/ft2"])
    assert linked.structure["from_cache"] and linked.models[0].endswith("link/ft1")


def test_a_changed_file_is_analysed_again(project):
    analyze("ckpt/base", ["ckpt/ft1"])
    sd = load_state("ckpt/ft1")
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
    from safetensors.torch import save_file

    save_file(sd, "ckpt/ft1/model.safetensors", metadata={"format": "pt"})
    assert not analyze(str(project / "ckpt/base"), [str(project / "ckpt/ft1")]).structure["from_cache"]


# ---- extract-lora: the adapter's base ------------------------------------------------------------
def test_the_adapter_base_resolves_from_another_folder(project, tmp_path, monkeypatch, capsys):
    (project / "adapters").mkdir()
    assert main(["extract-lora", "ckpt/base", "ckpt/ft1", "-o", "adapters/a", "--rank", "2", "-q"]) == 0
    out = capsys.readouterr().out
    cfg = json.loads((project / "adapters/a/adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(project / "ckpt" / "base")
    assert "absolute path" in out and str(project / "ckpt" / "base") in out
    _elsewhere(tmp_path, monkeypatch)
    adapter = open_checkpoint(project / "adapters" / "a")
    base = open_checkpoint(adapter.declared_base)  # what PEFT reads, from another working directory
    adapted = adapter.with_base(base)
    name = "model.layers.1.self_attn.q_proj.weight"
    assert adapted.get(name).shape == base.get(name).shape


def test_the_adapter_base_is_a_hub_id_when_given_or_cached(project, tmp_path):
    res = extract_lora("ckpt/base", "ckpt/ft1", tmp_path / "a", rank=2, base_id="org/tiny-base")
    assert json.loads((tmp_path / "a/adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny-base"
    assert res.base == "org/tiny-base"
    snap = tmp_path / "hub" / "models--org--tiny-base" / "snapshots" / "0123abc"
    assert base_reference(snap) == "org/tiny-base"
    assert base_reference(snap / "sub") == str(snap / "sub")  # a subfolder: no hub id names it


# ---- plans written into other folders ----------------------------------------------------------
def _ta_plan(project: Path) -> Path:
    """A task-arithmetic plan in proj/plans/ naming the models relative to the cwd (proj/)."""
    (project / "plans").mkdir(exist_ok=True)
    plan = project / "plans" / "ta.yml"
    plan.write_text(
        "merge_method: task_arithmetic\nbase_model: ckpt/base\ndtype: float32\n"
        "models:\n- model: ckpt/ft1\n  parameters: {weight: 1.0}\n- model: ckpt/ft2\n  parameters: {weight: 0.5}\n"
    )
    return plan


def test_a_best_plan_written_into_another_folder_merges_from_there(project, tmp_path, monkeypatch):
    plan = _ta_plan(project)
    best = tmp_path / "results" / "best.yml"
    best.parent.mkdir()
    args = ["sweep", str(plan), "--param", "weight", "--values", "0,1", "--eval-text", "text.txt", "--no-plot"]
    assert main([*args, "--write-best", str(best)]) == 0
    written = Plan.load(best)
    assert written.base_model == str(project / "ckpt" / "base")  # outside results/: absolute
    assert [m.model for m in written.models] == [str(project / "ckpt" / n) for n in ("ft1", "ft2")]
    _elsewhere(tmp_path, monkeypatch)
    assert main(["merge", str(best), "merged", "-q"]) == 0
    assert set(load_state("merged")) == set(load_state(project / "ckpt" / "base"))


def test_a_tuned_plan_written_into_another_folder_merges_from_there(project, tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    plan = _ta_plan(project)
    best = tmp_path / "results" / "best.yml"
    best.parent.mkdir()
    args = ["tune", str(plan), "--eval-text", "text.txt", "--trials", "1", "--bands", "1", "--no-plot", "-o", str(best)]
    assert main(args) == 0
    assert best.read_text().startswith("# mergescope tune:")
    assert Plan.load(best).base_model == str(project / "ckpt" / "base")
    _elsewhere(tmp_path, monkeypatch)
    assert main(["merge", str(best), "merged", "-q"]) == 0


def test_a_plan_written_beside_its_models_names_them_relative_to_itself(project, tmp_path, monkeypatch):
    plan = Plan.load(_ta_plan(project))
    plan.dump(project / "kept.yml")  # proj/ holds ckpt/: relative to the plan file
    text = (project / "kept.yml").read_text()
    assert "base_model: ckpt/base" in text and str(project) not in text
    moved = tmp_path / "moved"
    project.rename(moved)  # the folder travels with its plan
    _elsewhere(tmp_path, monkeypatch)
    merged = merge_in_memory(moved / "kept.yml").tensors
    absolute = (project.parent / "abs.yml").write_text(text.replace("ckpt/", f"{moved}/ckpt/"))
    expect = merge_in_memory(project.parent / "abs.yml").tensors
    assert absolute and merged.keys() == expect.keys() and all(torch.equal(merged[k], expect[k]) for k in merged)


def test_the_soup_plan_written_elsewhere_names_its_models_absolutely(project, tmp_path):
    out = tmp_path / "soups" / "soup.yml"
    out.parent.mkdir()
    args = ["soup", "ckpt/ft1", "ckpt/ft2", "--eval-text", "text.txt", "--plan-out", str(out)]
    assert main(args) == 0
    refs = [m.model for m in Plan.load(out).models]
    assert refs and all(Path(r).is_absolute() and Path(r).exists() for r in refs)


def test_every_reference_is_rewritten_and_hub_ids_are_kept(project, tmp_path):
    from tests.ckpt_utils import make_lora

    make_lora(project / "ckpt" / "base", project / "ckpt" / "lora")
    plan = Plan.from_dict(
        {
            "merge_method": "ties",
            "slices": [
                {
                    "sources": [
                        {"model": "ckpt/ft1", "layer_range": [0, 2]},
                        {"model": "ckpt/base+ckpt/lora", "layer_range": [0, 2]},
                        {"model": "org/not-here", "layer_range": [0, 2]},
                    ],
                    "base_model": "ckpt/base",
                }
            ],
            "tokenizer": {
                "source": "ckpt/ft2",
                "tokens": {"w1": {"source": {"kind": "model_token", "model": "ckpt/ft1", "token": "w2"}}},
            },
        }
    )
    d = json.dumps(Plan.from_yaml(plan.to_yaml(at=project / "sub" / "p.yml")).to_dict())
    root = str(project / "ckpt")
    for ref in ("ft1", "ft2", "base"):
        assert f'"{root}/{ref}"' in d
    assert f'"{root}/base+{root}/lora"' in d and '"org/not-here"' in d and '"ckpt/' not in d
