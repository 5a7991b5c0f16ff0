"""fit and sensitivity: the differentiable merge and loss equal the real ones, gradients agree with finite
differences of real scores, fitted plans round-trip through YAML, and the CLI runs as a user would."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

from mergescope.demo import family_dir, heldout_dir
from mergescope.io.errors import InputError
from mergescope.merge.linear_form import LinearForm
from mergescope.merge.plan import Plan
from mergescope.merge.run import merge_in_memory
from mergescope.score.candidate import Scorer
from mergescope.score.texts import Text
from mergescope.search.fit import Problem, prepare
from mergescope.search.sensitivity import sensitivity

FAM = family_dir()
TEXTS = {d: Text((heldout_dir() / f"{d}.txt").read_bytes()[:3000]) for d in ("code", "prose")}


def _plan(method="task_arithmetic", weight=0.5, **extra):
    models = [{"model": str(FAM / m), "parameters": {"weight": weight, **extra}} for m in ("code", "prose")]
    return Plan.from_dict(
        {
            "merge_method": method,
            "base_model": str(FAM / "base"),
            "models": models,
            "dtype": "float32",
            "out_dtype": "float32",
        }
    )


def _problem(plan, granularity="band", texts=TEXTS):
    space, form = prepare(plan, granularity=granularity, seed=7)
    return Problem(plan, space, form, texts, granularity=granularity)


@pytest.mark.parametrize(
    "method, extra", [("task_arithmetic", {}), ("ties", {"density": 0.5}), ("dare_ties", {"density": 0.6})]
)
def test_parts_at_the_plans_weights_are_the_merge(method, extra):
    plan = _plan(method, 0.7, **extra)
    form = LinearForm.from_plan(plan, seed=7)
    merged = merge_in_memory(plan, seed=7).tensors
    w = torch.tensor([0.7, 0.7])
    tensors = form.tensors(lambda piece: w)
    for name in list(merged)[:12]:
        assert torch.allclose(tensors[name].float(), merged[name].float(), atol=1e-6), name


def test_the_loss_is_the_scorers_bits_per_byte():
    plan = _plan()
    problem = _problem(plan)
    start = torch.tensor(problem.start)
    losses = problem.losses(start)
    scored = Scorer(TEXTS).plan(problem.plan_for(start))
    for t in TEXTS:
        assert losses[t] == pytest.approx(scored[t].value, abs=2e-6)


def test_sensitivity_agrees_with_finite_differences_of_real_scores():
    plan = _plan()
    problem = _problem(plan, "band")
    sens = sensitivity(problem)
    scorer = Scorer({"code": TEXTS["code"]})
    grads = sens.grad["code"]
    top = sorted(range(len(grads)), key=lambda k: -abs(grads[k]))[:3]
    h = 0.05
    for k in top:
        vals = []
        for sign in (1, -1):
            v = torch.tensor(problem.start)
            v[k] += sign * h
            vals.append(scorer.plan(problem.plan_for(v))["code"].value)
        fd = (vals[0] - vals[1]) / (2 * h)
        assert fd * grads[k] > 0, (problem.names[k], fd, grads[k])
        assert abs(fd - grads[k]) < 0.15 * abs(grads[k]) + 1e-3, (problem.names[k], fd, grads[k])
    helps, hurts = sens.ranked("code", 3)
    assert all(g < 0 for _, g in helps) and all(g > 0 for _, g in hurts)
    predicted = sens.predicted({problem.names[top[0]]: problem.start[top[0]] + h})
    assert predicted["code"] == pytest.approx(grads[top[0]] * h)


def test_fitted_plan_round_trips_and_merges_to_what_was_scored(tmp_path):
    plan = _plan()
    problem = _problem(plan, "layer")
    v = torch.tensor(problem.start)
    v[::3] += 0.137  # some cells moved, as a fit moves them
    fitted = problem.plan_for(v)
    path = tmp_path / "fitted.yml"
    path.write_text(fitted.to_yaml(at=path))
    again = Plan.load(path)
    a, b = merge_in_memory(fitted).tensors, merge_in_memory(again).tensors
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    tensors = problem.form.tensors(problem.weights_of(v))
    for n in a:
        assert torch.allclose(tensors[n].float(), a[n].float(), atol=1e-6), n


def test_unsupported_methods_and_layouts_are_refused():
    slerp = Plan.from_dict(
        {
            "merge_method": "slerp",
            "base_model": str(FAM / "base"),
            "models": [{"model": str(FAM / "code")}],
            "parameters": {"t": 0.5},
        }
    )
    with pytest.raises(InputError, match="fit and sensitivity differentiate"):
        prepare(slerp, granularity="layer")
    with pytest.raises(InputError, match="--granularity"):
        prepare(_plan(), granularity="neuron")


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "mergescope.tui.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def test_fit_and_sensitivity_from_the_command_line(tmp_path):
    plan_path = tmp_path / "ta.yml"
    plan_path.write_text(_plan().to_yaml(at=plan_path))
    texts = []
    for d, data in TEXTS.items():
        (tmp_path / f"{d}.txt").write_bytes(bytes(data))
        texts.append(tmp_path / f"{d}.txt")
    r = _cli(
        "fit",
        plan_path,
        "--eval-text",
        *texts,
        "--granularity",
        "group",
        "--steps",
        "3",
        "--json",
        "fit.json",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "holds" in r.stdout and "report (last 25% of each text, not used to fit)" in r.stdout
    assert "the plan as given" in r.stdout and "best global weight" in r.stdout
    out = tmp_path / "ta.fit.yml"
    text = out.read_text()
    assert text.startswith("# mergescope fit:") and "report (last 25%" in text
    fitted = Plan.load(out)
    fitted.validate(check_paths=True)
    data = json.loads((tmp_path / "fit.json").read_text())
    assert data["granularity"] == "group" and len(data["report"]) == 2 and data["report"][0]["verdict"]
    from mergescope.merge.plan import RatioTable

    table = RatioTable.from_plan(fitted, ["weight"], n_layers=4)
    assert set(table.values["weight"]) >= {("attn", (0, 4)), ("mlp", (0, 4)), ("embed", None)}
    r = _cli("sensitivity", plan_path, "--eval-text", *texts, "--json", "s.json", "--top", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "helps" in r.stdout and "hurts" in r.stdout
    s = json.loads((tmp_path / "s.json").read_text())
    assert set(s["texts"]) == {"code", "prose"} and len(s["texts"]["code"]["gradient"]) == len(s["cells"])
    r = _cli("fit", plan_path, "--eval-text", *texts, "--range", "density=0:1", cwd=tmp_path)
    assert r.returncode == 2 and "fit learns weights" in r.stderr
    assert yaml.safe_load(plan_path.read_text())["merge_method"] == "task_arithmetic"  # the input is untouched
