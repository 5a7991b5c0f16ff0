"""The base findings on the trained demo family: a sibling base is caught (base-offset), true fine-tunes and
soup ingredients are not taken for one, one model and a zero task vector are reported for what they are."""

from __future__ import annotations

import json
import shutil

import pytest

from mergescope.demo import SIBLING_BASE, SIBLING_MODELS, SOUP_MODELS, family_dir
from mergescope.io.cache import cache_dir
from mergescope.stats.findings import findings_for
from mergescope.stats.findings_base import BASE_OFFSET_COSINE, BASE_OFFSET_PROFILE
from mergescope.stats.readiness import analyze
from mergescope.stats.report import Report
from mergescope.stats.shared import shared_part

FAM = family_dir()
TRUE_FINETUNES = ("code", "prose", "dialog")
BASE_CODES = ("base-offset", "shared-component", "one-model", "identical-to-base")


def run(base: str, models, **kw):
    return analyze(str(FAM / base), [str(FAM / m) for m in models], labels=[base, *models], **kw)


def codes(report) -> dict[str, list]:
    out: dict[str, list] = {}
    for f in report.findings:
        out.setdefault(f.code, []).append(f)
    return out


def without_cards(report):
    """A copy of the report as if no model card or config named a base: the verdict must come from the weights."""
    report = Report.from_json(report.to_json())
    for meta in report.structure["meta"].values():
        meta["declared_base"] = None
        meta["name_or_path"] = None
    report.findings = findings_for(report)
    return report


@pytest.fixture(scope="module")
def sibling_report():
    return run("base", SIBLING_MODELS)


def test_sibling_finetunes_against_the_wrong_base_are_flagged(sibling_report):
    found = codes(sibling_report)
    assert [f.severity for f in found["base-offset"]] == ["warning"]
    msg = found["base-offset"][0].message
    sp = shared_part(sibling_report, range(3))
    assert sp.mean_cosine >= BASE_OFFSET_COSINE and sp.profile_corr >= BASE_OFFSET_PROFILE
    # the numbers, both readings, what to do, the consequence per method, and the cards
    assert f"{min(sp.pair_cosine.values()):.2f}–{max(sp.pair_cosine.values()):.2f}" in msg
    assert f"{sp.common_ratio:.0%} of their mean norm" in msg
    assert "another checkpoint than this base" in msg and "runs of one recipe" in msg
    assert "find their real base" in msg and "against that mean" in msg
    assert "Σw − 1 extra times" in msg and "normalize: true" in msg
    assert "'mergescope-demo/sibling_base'" in msg and "not 'base'" in msg
    assert "shared-component" not in found


def test_the_weights_alone_flag_a_sibling_base(sibling_report):
    found = codes(without_cards(sibling_report))
    assert "base-offset" in found and "declared-base-differs" not in found
    assert "name no base" in found["base-offset"][0].message
    two = without_cards(run("base", SIBLING_MODELS[:2]))
    assert "base-offset" in codes(two)


def test_true_finetunes_are_not_flagged():
    for base, models in (("base", TRUE_FINETUNES), (SIBLING_BASE, SIBLING_MODELS), ("base", ("code", "prose"))):
        found = codes(run(base, models))
        assert not set(found) & set(BASE_CODES), (base, models, sorted(found))
        sp = shared_part(run(base, models), range(len(models)))
        assert sp.mean_cosine < BASE_OFFSET_COSINE


def test_soup_ingredients_are_never_refused_nor_taken_for_a_sibling():
    for models in (SOUP_MODELS, SOUP_MODELS[:2]):
        report = run("base", models)
        found = codes(report)
        assert "base-offset" not in found and not [f for f in report.findings if f.severity == "error"]
        (info,) = found["shared-component"]
        assert info.severity == "info" and "runs of one recipe" in info.message and "sibling" in info.message
        assert shared_part(report, range(len(models))).profile_corr < BASE_OFFSET_PROFILE


def test_cached_reports_are_judged_by_the_current_rules():
    run("base", SIBLING_MODELS[:2])
    (entry,) = cache_dir().glob("*.json")
    stale = json.loads(entry.read_text())
    stale["data"]["findings"] = []  # as judged by an older version's rules
    entry.write_text(json.dumps(stale))
    again = run("base", SIBLING_MODELS[:2])
    assert again.structure["from_cache"] and "base-offset" in codes(again)


def test_one_model_says_what_it_can_and_cannot_tell():
    report = run("base", ["sib_code"])
    (f,) = codes(report)["one-model"]
    assert f.severity == "info" and f.model == "sib_code"
    assert "cannot tell whether this base is its true base" in f.message and "not this base" in f.message
    assert "base-offset" not in codes(report)
    assert "this base" in codes(run("base", ["code"]))["one-model"][0].message


def test_identical_to_base_is_reported_not_merge_ready(tmp_path):
    copy = tmp_path / "base_copy"
    shutil.copytree(FAM / "base", copy)
    report = analyze(str(FAM / "base"), [str(copy), str(FAM / "code")], labels=["base", "copy", "code"])
    found = codes(report)
    (f,) = found["identical-to-base"]
    assert f.model == "copy" and f.severity == "warning" and "task vector 0" in f.message
    assert not {"magnitude-asymmetry", "high-sign-conflict", "base-offset"} & set(found)
    assert "one-model" in found  # code is the only model left to judge
    alone = analyze(str(FAM / "base"), [str(copy)], labels=["base", "copy"])
    assert [x.code for x in alone.findings] == ["identical-to-base"]
