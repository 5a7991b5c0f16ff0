"""lm-evaluation-harness tasks as a way of scoring: a local YAML task over a .jsonl the test writes (no
network), scored through the harness's HFLM around the model transformers builds (a checkpoint, or a
merge held in memory), checked against the same log-likelihoods computed by the built-in forward."""

import json
import math

import numpy as np
import pytest
import torch

from mergescope.demo import family_dir
from mergescope.io.errors import InputError
from mergescope.score.candidate import Scorer

N_DOCS = 24


def _docs():
    """Multiple choice from the demo's held-out prose: 48 bytes of context, its next 12 bytes or 12 bytes
    from elsewhere (three distractors), answer placed by the index."""
    text = (family_dir().parent / "heldout" / "prose.txt").read_bytes().decode("utf-8", "ignore")
    text = " ".join(text.split())
    out = []
    for i in range(N_DOCS):
        at = 97 * i + 13
        ctx, right = text[at : at + 48], text[at + 48 : at + 60]
        wrong = [text[(at + 1000 * (k + 1)) % (len(text) - 12) :][:12] for k in range(3)]
        choices = wrong[: i % 4] + [right] + wrong[i % 4 :]
        out.append({"question": ctx, "choices": choices, "label": i % 4})
    return out


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("lm_eval.models.huggingface")
    d = tmp_path_factory.mktemp("task")
    (d / "toy.jsonl").write_text("\n".join(json.dumps(doc) for doc in _docs()) + "\n")
    (d / "toy.yaml").write_text(
        f"""task: toy
dataset_path: json
dataset_kwargs:
  data_files:
    test: {d / "toy.jsonl"}
  cache_dir: {d / "cache"}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_target: label
doc_to_choice: choices
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
    )
    return d / "toy.yaml"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _direct(model_dir):
    """Per document, whether the built-in forward gives the answer the highest log-likelihood."""
    from mergescope.score.llama import LlamaShape, forward
    from mergescope.score.model import open_model

    m = open_model(model_dir)
    shape = LlamaShape.from_config(m.config)
    right = []
    for doc in _docs():
        lls = []
        for choice in doc["choices"]:
            ctx, cont = list(doc["question"].encode()), list(choice.encode())
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(forward(m.tensors, shape, ids)[0], -1)
            lls.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
        right.append(float(int(np.argmax(lls)) == doc["label"]))
    m.close()
    return right


def test_task_scores_are_the_harness_accuracy_with_its_stderr(toy_task):
    from mergescope.score.tasks import load_tasks

    tasks = load_tasks([str(toy_task)])
    base = family_dir() / "prose"
    s = Scorer({}, tasks=tasks).model(str(base))["toy"]
    right = _direct(base)
    assert s.higher_is_better and s.unit_num == tuple(right) and s.unit_den == (1.0,) * N_DOCS
    assert s.value == pytest.approx(np.mean(right)) and 0.2 < s.value < 1  # better than chance (0.25)
    assert s.stderr == pytest.approx(np.std(right, ddof=1) / math.sqrt(N_DOCS))
    assert tasks.samples("toy") == N_DOCS and "toy (acc, 24 samples)" in tasks.summary()


def test_samples_split_into_selection_and_report(toy_task):
    from mergescope.score.tasks import load_tasks

    tasks = load_tasks([str(toy_task)])
    sel, rep = Scorer({}, tasks=tasks).split()
    a, b = set(sel.tasks.docs["toy"]), set(rep.tasks.docs["toy"])
    assert not a & b and a | b == set(range(N_DOCS)) and len(b) == N_DOCS // 4
    assert rep.tasks.docs == Scorer({}, tasks=load_tasks([str(toy_task)])).split()[1].tasks.docs  # fixed
    assert b != set(range(N_DOCS - len(b), N_DOCS))  # not the file's last quarter: a hashed order
    first = sel.first_slice(0.25, 0)
    assert first is None  # 18 samples: the first slice (at least 32) is all of them
    limited = load_tasks([str(toy_task)], limit=10)
    assert len(limited.docs["toy"]) == 10 and set(limited.docs["toy"]) < set(range(N_DOCS))
    with pytest.raises(InputError, match="--report-text"):
        Scorer({}, tasks=tasks).split({"r": b"text"})
    row = rep.model(str(family_dir() / "prose"))["toy"]
    assert len(row.unit_num) == len(b) and {u & 0xFFFFFFFF for u in row.unit_starts} == b


def test_a_merge_is_scored_in_memory_like_the_written_merge(toy_task, tmp_path):
    from mergescope.merge.plan import Plan
    from mergescope.merge.run import run_merge
    from mergescope.score.tasks import load_tasks

    fam = family_dir()
    plan = Plan.from_yaml(
        f"merge_method: linear\nmodels:\n  - model: {fam / 'prose'}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {fam / 'dialog'}\n    parameters: {{weight: 0.5}}\ndtype: float32\n"
    )
    scorer = Scorer({}, tasks=load_tasks([str(toy_task)]))
    in_memory = scorer.plan(plan)["toy"]
    run_merge(plan, tmp_path / "merged")
    written = scorer.model(str(tmp_path / "merged"))["toy"]
    assert in_memory.unit_num == written.unit_num and in_memory.value == written.value


def test_cli_eval_compare_and_sweep_score_tasks(toy_task, tmp_path, capsys):
    from mergescope.tui.cli import main

    fam = family_dir()
    out = tmp_path / "s.json"
    assert main(["eval", str(fam / "prose"), str(fam / "code"), "--task", str(toy_task), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "higher is better" in text and "toy (acc, 24 samples)" in text
    score = json.loads(out.read_text())["scores"][0]
    assert score["text"] == "toy" and score["stderr"] > 0 and len(score["interval95"]) == 2
    report = tmp_path / "r.md"
    args = ["compare", str(fam / "prose"), "--against", str(fam / "code"), "--task", str(toy_task)]
    assert main([*args, "--report", str(report)]) == 0
    assert "model − parent, score" in capsys.readouterr().out
    assert "on toy: score, higher is better" in report.read_text()
    plan = tmp_path / "p.yml"
    plan.write_text(
        f"merge_method: linear\nmodels:\n  - model: {fam / 'prose'}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {fam / 'dialog'}\n    parameters: {{weight: 0.5}}\ndtype: float32\n"
    )
    rc = main(
        ["sweep", str(plan), "--param", "weight", "--model", str(fam / "dialog"), "--values", "0,1"]
        + ["--task", str(toy_task), "--no-plot"]
    )
    assert rc == 0 and "25% of each task's samples" in capsys.readouterr().out


def test_task_errors_name_the_option(toy_task, tmp_path, capsys):
    from mergescope.score.tasks import load_tasks
    from mergescope.tui.cli import main

    (tmp_path / "t.txt").write_text("some text")
    base = str(family_dir() / "base")
    assert main(["eval", base, "--task", str(toy_task), "--text", str(tmp_path / "t.txt")]) == 2
    assert "give one way of scoring" in capsys.readouterr().err
    with pytest.raises(InputError, match="no such file"):
        load_tasks([str(tmp_path / "missing.yaml")])
    with pytest.raises(InputError, match="--task-metric f1: task toy reports acc"):
        load_tasks([str(toy_task)], metric="f1")


def test_without_the_harness_the_error_says_what_to_install(monkeypatch):
    import sys

    from mergescope.score.tasks import load_tasks

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(InputError, match=r"\[lm-eval\]"):
        load_tasks(["hellaswag"])
