"""`mergescope compare`: where a merge lost against its parents, per text and per passage, in text,
JSON, Markdown and a self-contained HTML page."""

import json
import subprocess
import sys
from html.parser import HTMLParser

import pytest

from mergescope.demo import family_dir, heldout_dir
from mergescope.score.candidate import Scorer
from mergescope.score.compare import compare, passage_scores
from mergescope.score.texts import Text, passages

FAM = family_dir()


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "mergescope.tui.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """A task-arithmetic merge of code + prose written to disk (what a user compares)."""
    from mergescope import Plan, run_merge

    out = tmp_path_factory.mktemp("cmp")
    plan = Plan.from_dict(
        {
            "merge_method": "task_arithmetic",
            "base_model": str(FAM / "base"),
            "models": [{"model": str(FAM / m), "parameters": {"weight": 0.7}} for m in ("code", "prose")],
            "dtype": "float32",
        }
    )
    run_merge(plan, out / "ta", force=True)
    texts = {}
    for d in ("code", "prose"):
        p = out / f"{d}.txt"
        p.write_bytes((heldout_dir() / f"{d}.txt").read_bytes()[:6000])
        texts[d] = p
    return out, out / "ta", texts


def test_passage_losses_add_up_to_the_score():
    text = Text((heldout_dir() / "prose.txt").read_bytes()[:5000])
    s = Scorer({"t": text}).model(str(FAM / "prose"))["t"]
    per = passage_scores(text, s)
    assert len(per) == len(passages(text))
    assert sum(b for *_, b, _ in per) == pytest.approx(sum(s.unit_num))
    assert sum(n for *_, n in per) == pytest.approx(s.n_bytes)


def test_pairs_rank_the_passages_that_lost_most(merged):
    _, ta, paths = merged
    texts = {k: Text(p.read_bytes()) for k, p in paths.items()}
    rows = Scorer(texts).models([str(ta), str(FAM / "code"), str(FAM / "prose")])
    pairs = compare(texts, rows, [str(ta)], [str(FAM / "code"), str(FAM / "prose")])
    assert len(pairs) == 4
    vs_code = next(p for p in pairs if p.text == "code" and p.parent == str(FAM / "code"))
    # the merge is worse than the code specialist on code, and the interval says so
    assert vs_code.diff.value > 0 and vs_code.verdict in ("worse", "within noise")
    worst = vs_code.worst(3)
    assert worst and worst == sorted(worst, key=lambda q: -q.bits) and all(q.bits > 0 for q in worst)
    assert 0 <= vs_code.regressed_share <= 1 and vs_code.regressed == [q for q in vs_code.passages if q.delta > 0.1]
    vs_prose_on_code = next(p for p in pairs if p.text == "code" and p.parent == str(FAM / "prose"))
    assert vs_prose_on_code.diff.value < 0  # the merge is better than the prose model on code


def test_cli_text_json_markdown_and_html(merged):
    out, ta, paths = merged
    js, md, html = out / "c.json", out / "c.md", out / "c.html"
    args = ["compare", ta, "--against", FAM / "code", FAM / "prose", "--text", paths["code"], paths["prose"]]
    r = _cli(*args, "--json", js, "--top", "3")
    assert r.returncode == 0, r.stderr
    assert "paired 95 % interval" in r.stdout and "lost most" in r.stdout
    data = json.loads(js.read_text())
    assert len(data["pairs"]) == 4 and all(len(p["lost_most"]) <= 3 for p in data["pairs"])
    assert {"difference", "verdict", "regressed_share"} <= set(data["pairs"][0])
    assert _cli(*args, "--report", md).returncode == 0
    text = md.read_text()
    assert "# Where the merge lost" in text and "| text | model | parent |" in text and "Lost most" in text
    assert _cli(*args, "--report", html).returncode == 0
    page = html.read_text()
    parser = _Page()
    parser.feed(page)
    assert parser.tables >= 3 and parser.svgs >= 2 and not parser.remote, parser.remote
    assert "Where the merge lost" in page and "Lost most" in page


def test_cli_refuses_bad_report_names_and_commands(merged):
    out, ta, paths = merged
    r = _cli("compare", ta, "--against", FAM / "code", "--text", paths["code"], "--report", out / "r.pdf")
    assert r.returncode == 2 and "name a .html or a .md file" in r.stderr and "Traceback" not in r.stderr


class _Page(HTMLParser):
    """Counts what the page holds and anything it would fetch from elsewhere."""

    def __init__(self):
        super().__init__()
        self.tables = self.svgs = 0
        self.remote = []

    def handle_starttag(self, tag, attrs):
        self.tables += tag == "table"
        self.svgs += tag == "svg"
        for k, v in attrs:
            if k in ("src", "href") and v and ("://" in v or v.startswith("//")):
                self.remote.append(v)


def test_reports_never_replace_inputs_or_files_mergescope_did_not_write(merged):
    out, ta, paths = merged
    args = ["compare", ta, "--against", FAM / "code", "--text", paths["code"]]
    before = paths["code"].read_bytes()
    r = _cli(*args, "--report", paths["code"].with_suffix(".md"), "--json", paths["code"], "--force")
    assert r.returncode == 2 and "would overwrite" in r.stderr and paths["code"].read_bytes() == before
    notes = out / "notes.md"
    notes.write_text("my notes\n")
    r = _cli(*args, "--report", notes)
    assert r.returncode == 2 and "mergescope did not write it" in r.stderr and notes.read_text() == "my notes\n"
    mine = out / "mine.html"
    assert _cli(*args, "--report", mine).returncode == 0
    assert mine.read_text().startswith("<!DOCTYPE html>\n<!-- mergescope")
    assert _cli(*args, "--report", mine).returncode == 0  # its own report is replaced without --force
