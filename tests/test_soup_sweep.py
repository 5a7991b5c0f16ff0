"""Soups, sweeps and `merge --eval-text`: the algorithms with controlled scores, then the commands on
tiny byte-level models."""

import json
import math

import pytest

from mergescope.io.errors import InputError
from mergescope.merge.plan import Plan
from mergescope.score.result import Score
from mergescope.search.soup import greedy_soup, soup_plan, uniform_soup
from mergescope.search.sweep import parse_values, sweep, with_value
from mergescope.tui.cli import main
from tests.ckpt_utils import make_finetune, make_llama

TEXT = ("A tiny held-out text for the tiny models; " * 30).encode()


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    """A byte-level base (vocab 256, no tokenizer files), three fine-tunes and a model of another base."""
    root = tmp_path_factory.mktemp("fam")
    base = make_llama(root / "base", n_layers=2, hidden=16, vocab=256, seed=0)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (base / f).unlink(missing_ok=True)
    fts = [make_finetune(base, root / f"ft{i}", scale=0.01 * (i + 1), seed=i + 1) for i in range(3)]
    other = make_llama(root / "other", n_layers=2, hidden=16, vocab=256, seed=9)
    (root / "text.txt").write_bytes(TEXT)
    return root, base, fts, other


def _score(v: float) -> dict:
    return {"t": Score(v)}


def test_parse_values():
    assert parse_values("0.2:1.0:0.2") == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert parse_values("1, 0.5 0.25") == [1.0, 0.5, 0.25]
    for bad, needle in [("1:0:0.5", "never reaches"), ("a,b", "start:stop:step"), ("0:1e6:1e-3", "at most 1000")]:
        with pytest.raises(InputError, match=needle):
            parse_values(bad)


def test_greedy_soup_keeps_an_ingredient_only_when_the_score_does_not_get_worse():
    own = {"a": 4.0, "b": 1.0, "c": 1.5, "d": 3.0}

    # the soup's score: the mean of its members' own scores, except that "d" spoils any soup
    def score_plan(plan):
        kept = [m.model for m in plan.models]
        return _score(9.0 if "d" in kept else sum(own[m] for m in kept) / len(kept) - 0.3 * len(kept))

    steps = []
    res = greedy_soup(list(own), score_plan, lambda m: _score(own[m]), log=steps.append)
    assert [s.model for s in res.steps] == ["b", "c", "d", "a"]  # best first
    assert [s.action for s in res.steps] == ["start", "added", "rejected", "rejected"]
    assert res.kept == ["b", "c"] and res.score["t"].value == pytest.approx(0.65) and steps == res.steps
    assert res.plan.merge_method == "linear" and all(m.parameters == {"weight": 1.0} for m in res.plan.models)
    u = uniform_soup(list(own), score_plan)
    assert u.kept == list(own) and u.score["t"].value == 9.0
    with pytest.raises(InputError, match="at least two"):
        greedy_soup(["a"], score_plan, lambda m: _score(1.0))


def test_sweep_sets_one_parameter_and_checks_every_value_first(fam):
    root, base, fts, _ = fam
    plan = Plan.from_dict(
        {
            "merge_method": "ties",
            "base_model": str(base),
            "models": [{"model": str(m), "parameters": {"weight": 1.0}} for m in fts[:2]],
        }
    )
    seen = []

    def score_plan(p):
        seen.append(p)
        d = [m.parameters.get("density") for m in p.models]
        return _score(abs((d[0] or 1) - 0.3))

    res = sweep(plan, "density", [0.1, 0.3, 0.9], score_plan, model=str(fts[0]))
    assert [p.models[0].parameters["density"] for p in seen] == [0.1, 0.3, 0.9]
    assert all("density" not in (p.models[1].parameters or {}) for p in seen)
    assert res.values[res.best()] == 0.3 and res.to_dict()["best"]["mean"] == 0.3
    seen.clear()
    with pytest.raises(InputError, match="density"):
        sweep(plan, "density", [0.5, 1.7], score_plan)  # 1.7 is refused before anything is scored
    assert seen == []
    with pytest.raises(InputError, match="has no parameter 'densty'"):
        with_value(plan, "densty", 0.5)
    with pytest.raises(InputError, match="not one of the plan's models"):
        with_value(plan, "weight", 0.5, model="nope")
    with pytest.raises(InputError, match="global parameter"):
        with_value(plan, "lambda", 0.5, model=str(fts[0]))


def test_soup_command_writes_model_plan_and_card(fam, tmp_path, capsys):
    root, base, fts, _ = fam
    out, plan_out, js = tmp_path / "soup", tmp_path / "soup.yml", tmp_path / "soup.json"
    args = ["soup", *map(str, fts), "--eval-text", str(root / "text.txt"), "-o", str(out), "--plan-out", str(plan_out)]
    assert main([*args, "--json", str(js)]) == 0
    text = capsys.readouterr().out
    assert "start with" in text and "greedy soup of" in text
    data = json.loads(js.read_text())
    assert data["kind"] == "greedy" and data["steps"][0]["action"] == "start"
    assert len(data["steps"]) == 3 and set(data["kept"]) <= {str(m) for m in fts}
    assert Plan.load(plan_out).merge_method == "linear"
    card = (out / "README.md").read_text()
    assert "## Soup (greedy)" in card and (out / "model.safetensors").is_file()
    assert main(["soup", *map(str, fts), "--uniform", "--eval-text", str(root / "text.txt")]) == 0
    assert "uniform soup of 3" in capsys.readouterr().out


def test_soup_refuses_an_ingredient_of_another_base_before_scoring(fam, capsys):
    root, base, fts, other = fam
    assert main(["soup", str(fts[0]), str(other), "--eval-text", str(root / "text.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different-base" in err[0] and str(other) in err[0]


def test_sweep_command_table_plot_json_and_best_plan(fam, tmp_path, capsys):
    root, base, fts, _ = fam
    plan = tmp_path / "ta.yml"
    plan.write_text(
        Plan.from_dict(
            {
                "merge_method": "task_arithmetic",
                "base_model": str(base),
                "models": [{"model": str(fts[2]), "parameters": {"weight": 1.0}}],
            }
        ).to_yaml()
    )
    js, best = tmp_path / "sw.json", tmp_path / "best.yml"
    args = ["sweep", str(plan), "--param", "weight", "--values", "0,1,2", "--eval-text", str(root / "text.txt")]
    assert main([*args, "--json", str(js), "--write-best", str(best)]) == 0
    out = capsys.readouterr().out
    assert "weight: bits per byte" in out and "✱" in out and "┤" in out  # table with the best marked, plot axis
    pts = json.loads(js.read_text())["points"]
    assert [p["value"] for p in pts] == [0.0, 1.0, 2.0] and all(math.isfinite(p["text"]) for p in pts)
    assert Plan.load(best).models[0].parameters["weight"] == json.loads(js.read_text())["best"]["mean"]
    assert main([*args[:-2], "--eval-text", str(root / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_merge_eval_text_scores_output_and_inputs_into_the_card(fam, tmp_path, capsys):
    root, base, fts, _ = fam
    plan = tmp_path / "p.yml"
    plan.write_text(soup_plan([str(m) for m in fts[:2]]).to_yaml())
    out = tmp_path / "merged"
    assert main(["merge", str(plan), str(out), "--eval-text", str(root / "text.txt"), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "merged (this merge)" in printed and "ft0" in printed
    card = (out / "README.md").read_text()
    assert (
        "## Held-out scores" in card
        and f"`{fts[0]}`" in card
        and card.rstrip().endswith(f"mergescope {__import__('mergescope').__version__}")
    )
