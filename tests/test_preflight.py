"""Nothing bad gets written: the readiness checks every merge runs, and the flags that override them."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergescope.demo import family_dir
from mergescope.io.errors import InputError
from mergescope.merge.plan import Plan
from mergescope.merge.preflight import MIN_MATRICES, run_checks
from mergescope.merge.run import merge_in_memory, run_merge
from mergescope.tui.cli import main

FAM = family_dir()


def _plan(tmp_path, method, models, base=None, params=None, name="p.yml"):
    d = {
        "merge_method": method,
        "models": [{"model": str(FAM / m), "parameters": {"weight": 1.0, **(params or {})}} for m in models],
    }
    if base:
        d["base_model"] = str(FAM / base)
    p = tmp_path / name
    p.write_text(Plan.from_dict(d).to_yaml())
    return p


def _cli(capsys, *args):
    rc = main(["merge", *map(str, args), "-q"])
    cap = capsys.readouterr()
    return rc, cap.err.strip().splitlines()


def test_models_of_different_bases_are_refused_without_writing(tmp_path, capsys):
    plan = _plan(tmp_path, "linear", ["code", "other_ft"])
    rc, err = _cli(capsys, plan, tmp_path / "out")
    assert rc == 2 and len(err) == 1
    assert "different-base" in err[0] and "other_ft" in err[0] and "--force-incompatible" in err[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    rc, _ = _cli(capsys, plan, tmp_path / "out", "--force-incompatible")
    assert rc == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Pre-merge checks" in card and "different-base" in card


def test_a_fine_tune_of_another_base_is_refused_against_the_base(tmp_path, capsys):
    plan = _plan(tmp_path, "task_arithmetic", ["code", "other_ft"], base="base")
    rc, err = _cli(capsys, plan, tmp_path / "out")
    assert rc == 2 and "other_ft" in err[0] and "different-base" in err[0]


def test_the_evidence_is_conclusive_after_a_few_matrices():
    plan = Plan.from_dict(
        {
            "merge_method": "task_arithmetic",
            "base_model": str(FAM / "base"),
            "models": [
                {"model": str(FAM / m), "parameters": {"weight": 1.0}} for m in ("code", "other_ft", "overtrained")
            ],
        }
    )
    cks = plan.open_checkpoints()
    checks = run_checks(plan, cks, list(plan.tensor_jobs(cks)))
    codes = {(f.model.rsplit("/", 1)[-1], f.code) for f in checks.findings}
    assert ("other_ft", "different-base") in codes and ("overtrained", "drifted") in codes
    assert not any(f.model.endswith("/code") for f in checks.findings)
    assert checks.matrices[str(FAM / "code")] == MIN_MATRICES  # clear after the minimum
    assert checks.matrices[str(FAM / "other_ft")] == MIN_MATRICES


def test_nan_weights_are_refused_naming_the_tensor(tmp_path, capsys):
    bad = tmp_path / "code_nan"
    shutil.copytree(FAM / "code", bad)
    sd = load_file(str(bad / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj.weight"
    sd[name][0, :3] = float("nan")
    save_file(sd, str(bad / "model.safetensors"))
    p = tmp_path / "p.yml"
    p.write_text(
        Plan.from_dict(
            {
                "merge_method": "task_arithmetic",
                "base_model": str(FAM / "base"),
                "models": [{"model": str(bad), "parameters": {"weight": 0.5}}],
            }
        ).to_yaml()
    )
    rc, err = _cli(capsys, p, tmp_path / "out")
    assert rc == 2 and len(err) == 1
    assert "non-finite" in err[0] and name in err[0] and "--allow-non-finite" in err[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    with pytest.raises(InputError, match="non-finite"):
        merge_in_memory(Plan.load(p))  # soups and sweeps score through this
    rc, _ = _cli(capsys, p, tmp_path / "out", "--allow-non-finite")
    assert rc == 0 and torch.isnan(load_file(str(tmp_path / "out" / "model.safetensors"))[name]).any()


def test_density_typo_is_refused_with_the_likely_value(tmp_path, capsys):
    plan = _plan(tmp_path, "ties", ["code", "prose"], base="base", params={"density": 1.7})
    rc, err = _cli(capsys, plan, tmp_path / "out")
    assert rc == 2 and len(err) == 1 and "did you mean 0.17?" in err[0] and "density" in err[0]
    della = _plan(tmp_path, "della", ["code"], base="base", params={"density": 0.5, "epsilon": 0.6}, name="d.yml")
    rc, err = _cli(capsys, della, tmp_path / "out")
    assert rc == 2 and "density - epsilon" in err[0]
    run_merge(
        _plan(tmp_path, "ties", ["code", "prose"], base="base", params={"density": 0.2}, name="ok.yml"), tmp_path / "ok"
    )


def test_warnings_are_printed_and_recorded_in_the_card(tmp_path, capsys):
    plan = _plan(tmp_path, "task_arithmetic", ["code", "overtrained"], base="base", params={"weight": 0.3})
    assert main(["merge", str(plan), str(tmp_path / "out"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning drifted" in err and "overtrained" in err
    assert "drifted" in (tmp_path / "out" / "README.md").read_text()


def test_an_analysis_of_more_models_judges_only_the_plans_inputs(tmp_path):
    """The app analyses the whole set and merges a few: a model the plan leaves out (other_ft, another
    base) must not refuse the merge, and pair findings are recomputed between the plan's models."""
    from mergescope.merge.preflight import analysis_of_inputs
    from mergescope.stats.readiness import analyze

    names = ["code", "prose", "overtrained", "other_ft"]
    report = analyze(str(FAM / "base"), [str(FAM / m) for m in names])
    assert {f.code for f in report.findings} >= {"different-base", "magnitude-asymmetry"}

    def checks(models):
        plan = Plan.load(_plan(tmp_path, "task_arithmetic", models, base="base", params={"weight": 0.5}))
        cks = plan.open_checkpoints()
        return run_checks(plan, cks, list(plan.tensor_jobs(cks)), report)

    pair = checks(["code", "prose"])
    assert pair.source == "analysis" and not pair.errors
    assert not any(f.code in ("different-base", "magnitude-asymmetry", "drifted") for f in pair.findings)
    assert pair.analysis.models == [str(FAM / "code"), str(FAM / "prose")]
    whole = report.whole()
    sub = pair.analysis.whole()
    assert sub.relative_norm(1) == pytest.approx(whole.relative_norm(1))
    assert sub.sign_conflict_pair(0, 1) == pytest.approx(whole.sign_conflict_pair(0, 1))
    # a model in the plan still speaks: overtrained drifted and dominates code
    drift = checks(["code", "overtrained"])
    assert {(f.model.rsplit("/", 1)[-1], f.code) for f in drift.warnings} == {
        ("overtrained", "drifted"),
        ("overtrained", "magnitude-asymmetry"),
    }
    assert [f.model.rsplit("/", 1)[-1] for f in checks(["prose", "other_ft"]).errors] == ["other_ft"]
    # an analysis against another base is not evidence for this plan: the checks sample instead
    other = Plan.load(_plan(tmp_path, "task_arithmetic", ["code", "prose"], base="overtrained", name="o.yml"))
    assert analysis_of_inputs(other, report) is None
    # merging with it writes only the plan's models into the card
    run_merge(
        _plan(tmp_path, "ties", ["code", "prose"], base="base", params={"density": 0.2}),
        tmp_path / "out",
        analysis=report,
    )
    card = (tmp_path / "out" / "README.md").read_text()
    assert "other_ft" not in card and "`" + str(FAM / "prose") + "`" in card
