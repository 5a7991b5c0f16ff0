"""`mergescope demo --headless`: real merges of the trained family, scored on held-out text."""

import io

import pytest
from rich.console import Console

from mergescope.tui.commands.demo_headless import cross_domain_verdicts, run_headless


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One headless run (analysis, three merges, evaluation) shared by the tests below."""
    out = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MERGESCOPE_CACHE_DIR", str(out / "cache"))
        buf = io.StringIO()
        result = run_headless(str(out / "merges"), console=Console(file=buf, width=120))
    return result.table, buf.getvalue(), out / "merges", result


def test_fine_tunes_are_specialists(run):
    table = run[0]
    for d in ("code", "prose", "dialog"):
        assert table[d][d] < table["base"][d]


def test_merge_of_two_domains_beats_each_specialist_on_the_other_domain(run):
    table = run[0]
    ta = table["TA code+prose ×0.7"]
    assert ta["code"] < table["prose"]["code"] and ta["prose"] < table["code"]["prose"]
    # and stays close to the specialist on its own domain
    assert ta["code"] < table["code"]["code"] * 1.04 and ta["prose"] < table["prose"]["prose"] * 1.04
    ties = table["TIES code+prose d=0.5"]
    assert ties["code"] < table["prose"]["code"] and ties["prose"] < table["code"]["prose"]
    assert all("beats" in line and "loses" not in line for line in cross_domain_verdicts(table))


def test_output_shows_findings_table_and_keeps_merges(run):
    _, text, merges, _ = run
    assert "different-base" in text and "drifted" in text and "held-out bits per byte" in text
    assert "TA code+prose ×0.7: code" in text
    assert (merges / "TA_code_prose_0_7" / "model.safetensors").is_file()
    assert "merge_method: task_arithmetic" in (merges / "TA_code_prose_0_7" / "merge_plan.yml").read_text()


def test_sweep_shows_the_optimum_and_the_collapse_past_it(run):
    sweep = run[3].sweep
    means = [sum(s.value for s in row.values()) / len(row) for row in sweep.scores]
    best = sweep.best()
    assert 0 < best < len(means) - 1  # an interior optimum
    assert means[-1] > means[best] + 0.1 and means[0] > means[best]  # overshoot costs, no merge costs too
    assert "weight: bits per byte" in run[1]


def test_greedy_soup_is_at_least_as_good_as_its_best_ingredient(run):
    soup = run[3].soup
    if soup is None:
        pytest.skip("the family has no soup ingredients")
    best_single = min(s.own["code"].value for s in soup.steps)
    assert soup.score["code"].value <= best_single
    assert soup.steps[0].action == "start" and "greedy soup" in run[1]


def test_cli_flag_is_wired(monkeypatch, capsys):
    from mergescope.tui.cli import main

    seen = {}
    monkeypatch.setattr(
        "mergescope.tui.commands.demo_headless.run_headless",
        lambda output, use_cache=True: seen.update(output=output) or {},
    )
    assert main(["demo", "--headless", "--output", "x"]) == 0 and seen == {"output": "x"}
