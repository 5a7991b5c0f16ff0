"""`mergescope demo --headless`: real merges of the trained family, scored on held-out text."""
import pytest

from tui.demo_headless import cross_domain_verdicts, merge_and_score


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return merge_and_score(tmp_path_factory.mktemp("demo"))


def test_fine_tunes_are_specialists(table):
    for d in ("code", "prose", "dialog"):
        assert table[d][d] < table["base"][d]


def test_merge_of_two_domains_beats_each_specialist_on_the_other_domain(table):
    ta = table["TA code+prose ×0.7"]
    assert ta["code"] < table["prose"]["code"] and ta["prose"] < table["code"]["prose"]
    # and stays close to the specialist on its own domain
    assert ta["code"] < table["code"]["code"] * 1.08 and ta["prose"] < table["prose"]["prose"] * 1.08
    ties = table["TIES code+prose d=0.5"]
    assert ties["code"] < table["prose"]["code"] and ties["prose"] < table["code"]["prose"]
    assert all("beats" in line and "loses" not in line for line in cross_domain_verdicts(table))


def test_cli_headless_prints_the_table(capsys, tmp_path, monkeypatch):
    from tui.cli import main

    monkeypatch.setenv("MERGESCOPE_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["demo", "--headless", "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "different-base" in out and "drifted" in out and "held-out perplexity" in out
    assert (tmp_path / "out" / "TA_code_prose_0_7" / "model.safetensors").is_file()
