"""What a newcomer meets on the command line: model names that tell models apart, one number per metric
wherever it appears, the next command to run, whole sentences in --help, negative sweep values, and
install hints that work from a clone. The CLI runs as a subprocess, as a user runs it."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mergescope.demo import family_dir, heldout_dir
from mergescope.io.labels import short_labels, unique_tails

ROOT = Path(__file__).resolve().parents[1]
FAMILY = family_dir()


def cli(*args, cwd=None, columns=100, timeout=600):
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mergescope.tui.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------------------------------------- names
def test_names_are_the_shortest_trailing_components_that_differ():
    assert unique_tails(["/x/family/base", "/x/family/code", "/y/other/code"]) == ["base", "family/code", "other/code"]
    assert unique_tails(["meta-llama/Meta-Llama-3-8B", "org/ft@v2"]) == ["Meta-Llama-3-8B", "ft@v2"]
    assert short_labels(["a/m", "b/m", "a/m"]) == ["#0 a/m", "#1 b/m", "#2 a/m"]


@pytest.mark.parametrize("width", [4, 6, 10, 12, 14, 20, 40])
def test_shortened_names_never_collide(width):
    sets = [
        ["/m/smollm2-360m-instruct-code", "/m/smollm2-360m-instruct-math", "/m/smollm2-360m"],
        ["/m/code-v1-final", "/m/math-v1-final"],
        ["/m/aaaaaaaaaaaaaaaaaaaa-x-bbbbbbbbbbbbbbbbbbbb", "/m/aaaaaaaaaaaaaaaaaaaa-y-bbbbbbbbbbbbbbbbbbbb"],
        [f"/runs/llama-3-8b-sft-checkpoint-{i:05d}" for i in range(12)],
    ]
    for refs in sets:
        names = short_labels(refs, width)
        assert len(set(names)) == len(names), (width, names)
        assert all(len(n) <= width for n in names), (width, names)


def test_app_and_cli_name_helpers_keep_prefix_sharing_models_apart():
    from mergescope.tui.format import display_names, short_names

    refs = ["/m/smollm2-360m-instruct-code", "/m/smollm2-360m-instruct-math"]
    for width in (10, 11, 14, 16, 20, 40):
        assert len(set(short_names(refs, width))) == 2
    assert set(display_names(["/m/base", *refs]).values()) == {"base", *(Path(r).name for r in refs)}
    from mergescope.tui.state.recent import ModelSet

    assert ModelSet("/a/x/base", ["/a/x/code", "/b/y/code"]).describe() == "base + x/code, y/code"


@pytest.fixture(scope="module")
def analyze_out(tmp_path_factory):
    """`mergescope analyze` of the demo base and five models, at 80 columns."""
    os.environ.setdefault("MERGESCOPE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    models = ["code", "prose", "dialog", "other_ft", "overtrained"]
    res = cli("analyze", FAMILY / "base", *(FAMILY / m for m in models), columns=80)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_analyze_rows_name_each_model_by_its_short_name(analyze_out):
    rows = {}
    for line in analyze_out.splitlines():
        m = re.match(r"\s*(code|prose|dialog|other_ft|overtrained)\s+([\d.]+)\s+([\d.]+)", line)
        if m:
            rows.setdefault(m.group(1), (m.group(2), m.group(3)))
    assert set(rows) == {"code", "prose", "dialog", "other_ft", "overtrained"}
    assert str(FAMILY) not in analyze_out.split("\nmodels")[1].split("next:")[0]  # tables: names, not paths


def test_the_drifted_verdict_and_the_summary_row_show_the_same_numbers(analyze_out):
    flat = " ".join(analyze_out.split())
    finding = re.search(
        r"drifted overtrained: moved far from the base: relative norm ([\d.]+), cosine to base ([\d.]+)", flat
    )
    assert finding, flat[:2000]
    row = re.search(r"\n\s*overtrained\s+([\d.]+)\s+([\d.]+)", analyze_out)
    assert (row.group(1), row.group(2)) == finding.groups() == ("1.346", "0.7234")
    assert "over the attention + MLP matrices, as the verdicts judge" in flat


def test_the_magnitude_asymmetry_finding_names_the_model(analyze_out):
    flat = " ".join(analyze_out.split())
    assert re.search(r"magnitude-asymmetry overtrained: its task vector is [\d.]+x the norm of code's", flat), flat
    assert "1 cell keeps > 50%" in flat


def test_analyze_ends_with_the_explorer_on_the_mergeable_models(analyze_out):
    last = " ".join(analyze_out.strip().splitlines()[-1:])
    assert last.startswith("next: mergescope ui ")
    cmd = last.split("   (")[0].split()[3:]
    assert cmd == [str(FAMILY / m) for m in ("base", "code", "prose", "dialog", "overtrained")]
    assert "left out: other_ft (different-base)" in last


def test_prefix_sharing_models_get_distinct_columns(tmp_path):
    for name in ("smollm2-360m-instruct-code", "smollm2-360m-instruct-prose"):
        shutil.copytree(FAMILY / name.rsplit("-", 1)[1], tmp_path / name)
    res = cli(
        "analyze", FAMILY / "base", tmp_path / "smollm2-360m-instruct-code", tmp_path / "smollm2-360m-instruct-prose"
    )
    assert res.returncode == 0, res.stderr
    header = next(line for line in res.stdout.splitlines() if line.strip().startswith("layer"))
    cols = re.findall(r"rel (\S+)", header)
    assert len(cols) == 2 and cols[0] != cols[1], header


# ---------------------------------------------------------------------------------------------- merge
def test_merge_ends_with_the_next_command_and_its_card_shows_the_verdicts_numbers(tmp_path):
    plan = tmp_path / "plan.yml"
    plan.write_text(
        f"merge_method: task_arithmetic\nbase_model: {FAMILY / 'base'}\nmodels:\n"
        f"  - model: {FAMILY / 'code'}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {FAMILY / 'overtrained'}\n    parameters: {{weight: 0.5}}\n"
    )
    res = cli("merge", plan, tmp_path / "out", "--analyze", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith(
        f"next: mergescope eval {tmp_path / 'out'} {FAMILY / 'code'} {FAMILY / 'overtrained'} --text"
    )
    card = (tmp_path / "out" / "README.md").read_text()
    assert re.search(r"overtrained` \| 1\.346 \| 0\.7234 \|", card), card
    assert "relative norm 1.346, cosine to base 0.7234" in card


# ---------------------------------------------------------------------------------------------- help
def test_help_lists_every_command_with_whole_sentences():
    res = cli("--help", columns=100)
    assert res.returncode == 0, res.stderr
    listing = res.stdout.split("positional arguments:")[1].split("options:")[0]
    entries = re.split(r"\n    (?=\S)", listing)[1:]
    assert len(entries) >= 10
    for entry in entries:
        text = " ".join(entry.split())
        assert text.endswith("."), text
    assert "95 % intervals" in " ".join(res.stdout.split())


def test_demo_help_promises_what_the_headless_demo_prints():
    res = cli("demo", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert "perplexity" not in text and "bits per byte" in text


def test_descriptions_keep_their_paragraphs():
    res = cli("serve", "--help", columns=80)
    assert "\n    mergescope serve -- demo               # the demo\n" in res.stdout  # the example, as written
    assert "Needs the `serve` extra" in res.stdout.split("# the demo")[1].split("positional")[0]


# ---------------------------------------------------------------------------------------------- sweep
def test_sweep_takes_values_that_start_with_a_minus(tmp_path):
    plan = tmp_path / "plan.yml"
    plan.write_text(
        f"merge_method: task_arithmetic\nbase_model: {FAMILY / 'base'}\nmodels:\n"
        f"  - model: {FAMILY / 'code'}\n    parameters: {{weight: 1.0}}\n"
    )
    text = heldout_dir() / "code.txt"
    res = cli(
        "sweep",
        plan,
        "--param",
        "weight",
        "--values",
        "-1:0:0.5",
        "--eval-text",
        text,
        "--max-bytes",
        "1500",
        "--no-plot",
    )
    assert res.returncode == 0, res.stderr
    for v in ("-1", "-0.5", "0"):
        assert re.search(rf"weight = {re.escape(v)}:", res.stdout), res.stdout


def test_negative_values_attach_only_to_options_that_take_one():
    from mergescope.tui.cli import attach_negative_values, build_parser, value_options

    opts = value_options(build_parser())
    assert "--values" in opts and "--greedy" not in opts
    argv = ["sweep", "p.yml", "--values", "-1,0,1", "--param", "weight"]
    assert attach_negative_values(argv, opts) == ["sweep", "p.yml", "--values=-1,0,1", "--param", "weight"]
    assert attach_negative_values(["serve", "--", "x", "--port", "-1"], opts) == ["serve", "--", "x", "--port", "-1"]


# ---------------------------------------------------------------------------------------------- install hints
def test_install_hints_name_the_clone_or_the_extras_requirements(monkeypatch):
    from mergescope.io import extras

    assert extras.install_hint("tune") == f"pip install -e '{ROOT}[tune]'"
    monkeypatch.setattr(extras, "source_clone", lambda: None)  # as from a wheel
    hint = extras.install_hint("tune")
    assert hint.startswith("pip install ") and "optuna" in hint and "cmaes" in hint and "mergescope" not in hint


def test_no_message_suggests_installing_pypis_mergescope():
    offenders = []
    for folder in ("analysis", "tui", "scripts"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".sh", ".j2", ".tcss") and "mergescope[" in path.read_text(errors="replace"):
                offenders.append(str(path.relative_to(ROOT)))
    if "pip install 'mergescope[" in (ROOT / "README.md").read_text():
        offenders.append("README.md")
    assert not offenders
