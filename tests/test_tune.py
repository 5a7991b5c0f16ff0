"""`mergescope tune`: the search space, trials written as the editor writes them, the best plan as YAML,
resuming a stopped study, one-line errors, and two workers sharing a PostgreSQL study.

Tiny byte-level models (tests/ckpt_utils.py) keep a trial near 0.1 s; the subprocess tests use the
demo family with short texts so that a trial takes long enough to be interrupted or shared."""

import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

optuna = pytest.importorskip("optuna", reason="the tune extra is not installed: pip install -e '.[tune]'")

from mergescope.demo import family_dir, heldout_dir  # noqa: E402
from mergescope.io.errors import InputError  # noqa: E402
from mergescope.io.extras import install_hint  # noqa: E402
from mergescope.merge.plan import Plan, group_ratios_of, plan_from_group_ratios  # noqa: E402
from mergescope.merge.plan.ratio_table import make_bands  # noqa: E402
from mergescope.score.candidate import Objective, Scorer  # noqa: E402
from mergescope.search.tune import best_yaml, tune  # noqa: E402
from mergescope.search.tune_space import build_space, parse_ranges, plan_layout  # noqa: E402
from mergescope.search.tune_study import open_storage, open_study, search_of, storage_url  # noqa: E402
from mergescope.tui.cli import main  # noqa: E402
from mergescope.tui.state.plan_state import PlanState  # noqa: E402
from tests.ckpt_utils import make_finetune, make_llama  # noqa: E402

TEXT = ("A tiny held-out text for the tiny models; " * 40).encode()


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    """A byte-level 2-layer base (vocab 256, no tokenizer files) and three fine-tunes."""
    root = tmp_path_factory.mktemp("tunefam")
    base = make_llama(root / "base", n_layers=2, hidden=16, vocab=256, seed=0)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (base / f).unlink(missing_ok=True)
    fts = [make_finetune(base, root / f"ft{i}", scale=0.02 * (i + 1), seed=i + 1) for i in range(3)]
    (root / "text.txt").write_bytes(TEXT)
    return root, base, fts


def _plan(base, fts, method="ties", **params) -> Plan:
    params = params or {"weight": 0.5, "density": 0.8}
    return Plan.from_dict(
        {
            "merge_method": method,
            "base_model": str(base),
            "models": [{"model": str(m), "parameters": dict(params)} for m in fts],
            "dtype": "float32",
        }
    )


def _write(tmp_path, plan: Plan, name="plan.yml"):
    path = tmp_path / name
    path.write_text(plan.to_yaml())
    return path


def _study(plan_path, space, scorer, objective=None, seed=0, **kw):
    objective = objective or Objective()
    search = search_of(space, objective, scorer)
    storage = open_storage(storage_url(None, plan_path))
    return open_study(storage, "s", search, seed=seed, **kw)


def test_space_names_bounds_and_count(fam):
    _, base, fts = fam
    plan = _plan(base, fts[:2])
    names, n_layers = plan_layout(plan)
    assert n_layers == 2
    space = build_space(plan, params=["weight", "density"], band_mode=2, names=names, num_layers=n_layers)
    bands = make_bands(2, 2)
    per_model = 1 + len(bands) * 3 + 2  # embed, (attn, mlp, norm) per band, final norm, head
    assert len(space.dims) == 2 * per_model * 2  # params x keys x models
    assert len({d.name for d in space.dims}) == len(space.dims)
    assert {d.name for d in space.dims} >= {
        "weight.embed.m0",
        "weight.attn.L0.m1",
        "density.norm.m0",
        "density.head.m1",
    }
    w = {(d.low, d.high) for d in space.dims if d.param == "weight"}
    dens = {(d.low, d.high) for d in space.dims if d.param == "density"}
    assert w == {(0.0, 1.5)} and dens == {(0.0, 1.0)}  # weight: the default range; density: its ParamSpec's
    narrow = build_space(
        plan, params=["weight"], groups=["attn", "mlp"], band_mode=1, ranges={"weight": (0.2, 1.0)}, names=names
    )
    assert len(narrow.dims) == 1 * 2 * 2 and {(d.low, d.high) for d in narrow.dims} == {(0.2, 1.0)}
    assert narrow.start_values() == {d.name: 0.5 for d in narrow.dims}  # the plan's own values
    assert parse_ranges(["weight=0:1.5", "density=0.1:0.9"]) == {"weight": (0.0, 1.5), "density": (0.1, 0.9)}


def test_a_trials_plan_is_what_the_editor_and_plan_from_group_ratios_write(fam):
    _, base, fts = fam
    plan = _plan(base, fts, method="task_arithmetic", weight=0.7)
    names, n = plan_layout(plan)
    space = build_space(plan, params=["weight"], band_mode=2, names=names, num_layers=n)
    values = {d.name: round(0.1 + 0.013 * k, 6) for k, d in enumerate(space.dims)}
    trial = space.plan_for(values)
    table = space.tables(values)["weight"]
    models = [str(m) for m in fts]
    direct = plan_from_group_ratios(
        "task_arithmetic",
        str(base),
        models,
        table,
        num_layers=n,
        names=names,
        dtype="float32",
        other=table[("other", None)],
    )
    assert trial.to_dict() == direct.to_dict()
    editor = PlanState(str(base), models, n, names=names, band_mode=2, dtype="float32")
    editor.tables = {"weight": table}
    assert editor.to_plan().to_dict() == trial.to_dict()  # the app's plan editor writes the same plan
    back = group_ratios_of(trial, num_layers=n, bands={g: make_bands(n, 2) for g in ("attn", "mlp", "norm")})
    for d in space.dims:
        assert back[d.key][d.model] == pytest.approx(values[d.name])


def test_best_plan_round_trips_as_yaml_and_resume_continues_the_study(fam, tmp_path):
    _, base, fts = fam
    plan_path = _write(tmp_path, _plan(base, fts[:2], method="task_arithmetic", weight=1.0))
    plan = Plan.load(plan_path)
    names, n = plan_layout(plan)
    space = build_space(plan, params=["weight"], band_mode=1, groups=["attn", "mlp"], names=names, num_layers=n)
    scorer = Scorer({"text": TEXT})
    seen = []
    res = tune(
        space, scorer, _study(plan_path, space, scorer), n_trials=6, should_stop=lambda: len(seen) >= 3, log=seen.append
    )
    assert res.stopped and len(res.done) == 3 and [t.number for t in res.trials] == [0, 1, 2]
    assert res.trials[0].params == space.start_values()  # the first trial is the plan as given
    first = {t.number: t.value for t in res.trials}
    res2 = tune(space, scorer, _study(plan_path, space, scorer), n_trials=6)  # a new process would do this
    assert not res2.stopped and res2.ran == 3 and len(res2.done) == 6
    assert [t.number for t in res2.trials] == list(range(6))
    assert all(res2.trials[k].value == v for k, v in first.items())
    text = best_yaml(res2, space)
    assert text.startswith("# mergescope tune: trial") and "bits per byte" in text.splitlines()[1]
    back = Plan.from_yaml(text)
    assert back.to_dict() == space.plan_for(res2.best.params).to_dict()
    back.validate(check_paths=True)
    best = min(t.value for t in res2.trials if t.state == "complete")
    assert res2.best.value == best and math.isfinite(best)
    assert tune(space, scorer, _study(plan_path, space, scorer), n_trials=6).ran == 0  # done: nothing more


def test_keyboard_interrupt_inside_a_trial_stops_cleanly_and_the_rerun_finishes(fam, tmp_path):
    _, base, fts = fam
    plan_path = _write(tmp_path, _plan(base, fts[:2], method="task_arithmetic", weight=1.0))
    plan = Plan.load(plan_path)
    names, n = plan_layout(plan)
    space = build_space(plan, params=["weight"], band_mode=1, groups=["mlp"], names=names, num_layers=n)
    scorer = Scorer({"text": TEXT})
    seen, polls = [], []

    def ctrl_c():  # polled after each trial, then inside the merge and the scoring: Ctrl-C during trial 2
        if len(seen) >= 2:
            polls.append(1)
            if len(polls) >= 3:
                raise KeyboardInterrupt
        return False

    res = tune(
        space,
        scorer,
        _study(plan_path, space, scorer, sampler="cmaes"),
        n_trials=4,
        should_stop=ctrl_c,
        log=seen.append,
    )
    assert res.stopped and len(res.done) == 2 and [t.state for t in res.trials][-1] == "fail"
    res2 = tune(space, scorer, _study(plan_path, space, scorer, sampler="cmaes"), n_trials=4)
    assert len(res2.done) == 4 and res2.ran == 2


def test_objectives():
    from mergescope.score.result import Score

    row = {"a": Score(1.0), "b": Score(3.0)}
    assert Objective.parse("mean")(row) == 2.0 and Objective.parse("max")(row) == 3.0
    assert Objective.parse("weights:a=3,b=1")(row) == pytest.approx(1.5)
    assert Objective.parse("max")({"a": Score(0.2, True), "b": Score(0.6, True)}) == 0.2  # the worst accuracy
    with pytest.raises(InputError, match="not one of the texts"):
        Objective.parse("weights:c=1").check(["a", "b"])


def test_command_shows_table_plot_writes_best_and_reruns_to_nothing(fam, tmp_path, capsys):
    root, base, fts = fam
    plan_path = _write(tmp_path, _plan(base, fts[:2]))
    args = ["tune", str(plan_path), "--eval-text", str(root / "text.txt"), "--trials", "4", "--bands", "1"]
    args += ["--space", "weight,density", "--groups", "attn,mlp", "--seed", "3", "--sampler", "tpe"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4/4 trials" in out and "objective" in out and "┤" in out and "written to" in out
    # the final numbers come from the report split, and a trial within noise of the plan is no improvement
    assert "report (last 25% of each text" in out
    assert "best plan (trial" in out or "no improvement" in out or "no trial beat the plan" in out
    best = tmp_path / "plan.best.yml"
    assert best.read_text().startswith("# mergescope tune:") and Plan.load(best).merge_method == "ties"
    assert (tmp_path / "plan.tune.db").is_file()
    assert main(args) == 0  # the same command again: the study is complete, nothing more runs
    assert "4/4 trials done" in capsys.readouterr().out


def test_eval_cmd_scores_with_its_direction_into_a_storage_path(fam, tmp_path, capsys):
    _, base, fts = fam
    plan_path = _write(tmp_path, _plan(base, fts[:2], method="task_arithmetic", weight=1.0))
    script = tmp_path / "acc.py"  # an "accuracy": the size of the first weight file, higher is better
    script.write_text("import os, sys; print(os.path.getsize(sys.argv[1] + '/model.safetensors') % 97 / 97)")
    db = tmp_path / "runs" / "acc.db"
    db.parent.mkdir()
    cmd = f"{sys.executable} {script} {{model}}"
    args = ["tune", str(plan_path), "--eval-cmd", cmd, "--higher-is-better", "--trials", "2", "--storage", str(db)]
    assert main([*args, "--groups", "mlp", "--bands", "1", "-o", str(tmp_path / "b.yml")]) == 0
    out = capsys.readouterr().out
    assert "score, higher is better" in out and db.is_file()
    assert "higher is better" in (tmp_path / "b.yml").read_text().splitlines()[1]
    (study,) = optuna.get_all_study_summaries(storage=storage_url(str(db), plan_path))
    assert study.direction.name == "MAXIMIZE" and study.n_trials == 2


BAD = [
    (["--space", ""], "--space: empty"),
    (["--space", "densty"], "--space densty: ties has no parameter 'densty'; did you mean `density`?"),
    (["--space", "normalize"], "--space normalize"),
    (["--range", "weight=1:0"], "--range weight=1:0"),
    (["--range", "weight=a:b"], "--range weight=a:b"),
    (["--range", "density=0:1"], "--range density"),  # not in --space
    (["--range", "weight=-1:1", "--space", "density,weight"], None),  # fine: weight is unbounded
    (["--groups", "vision"], "--groups vision"),
    (["--bands", "5"], "--bands 5"),
    (["--trials", "0"], "--trials 0"),
    (["--sampler", "grid"], "--sampler grid"),
    (["--objective", "median"], "--objective median"),
    (["--objective", "weights:prose=1"], "--objective"),
    (["--storage", "postgresql://nobody@127.0.0.1:9/none"], "--storage postgresql://nobody@127.0.0.1:9/none"),
    (["--storage", "sqlite:////nonexistent/dir/x.db"], "/nonexistent/dir does not exist"),
]


@pytest.mark.parametrize("extra,needle", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_is_one_line_and_exit_2(fam, tmp_path, capsys, extra, needle):
    root, base, fts = fam
    plan_path = _write(tmp_path, _plan(base, fts[:2]))
    args = ["tune", str(plan_path), "--eval-text", str(root / "text.txt"), "--trials", "1", *extra]
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    if needle is None:
        assert rc == 0
        return
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert "Traceback" not in err[0]


def test_missing_optuna_says_how_to_install(fam, tmp_path, capsys, monkeypatch):
    root, base, fts = fam
    plan_path = _write(tmp_path, _plan(base, fts[:2]))
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    assert main(["tune", str(plan_path), "--eval-text", str(root / "text.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and install_hint("tune") in err[0] and "'mergescope[tune]'" not in err[0]


def test_a_study_holding_another_search_is_refused(fam, tmp_path, capsys):
    root, base, fts = fam
    plan_path = _write(tmp_path, _plan(base, fts[:2]))
    args = ["tune", str(plan_path), "--eval-text", str(root / "text.txt"), "--trials", "1", "--study", "mine"]
    assert main([*args, "--bands", "1", "--groups", "mlp"]) == 0
    assert main([*args, "--bands", "2", "--groups", "mlp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--study mine: holds another search" in err[0] and "bands" in err[0]


# ---------------------------------------------------------------------------------------------- processes
def _demo_plan(tmp_path, n_bytes: int = 1500):
    fam, held = family_dir(), heldout_dir()
    plan = Plan.from_dict(
        {
            "merge_method": "task_arithmetic",
            "base_model": str(fam / "base"),
            "models": [{"model": str(fam / m), "parameters": {"weight": 0.5}} for m in ("code", "prose")],
            "dtype": "float32",
        }
    )
    path = _write(tmp_path, plan, "demo.yml")
    texts = []
    for d in ("code", "prose"):
        (tmp_path / f"{d}.txt").write_bytes((held / f"{d}.txt").read_bytes()[:n_bytes])
        texts.append(str(tmp_path / f"{d}.txt"))
    return path, texts


def _cli(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mergescope.tui.cli", "tune", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finished(url: str, name: str) -> list:
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    return [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]


def test_ctrl_c_stops_the_command_and_the_same_command_continues(tmp_path):
    plan_path, texts = _demo_plan(tmp_path)
    args = [str(plan_path), "--eval-text", *texts, "--trials", "40", "--study", "s", "--groups", "attn,mlp"]
    proc = _cli(*args)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and sum("  trial " in ln for ln in lines) < 2:
        time.sleep(0.1)  # the command prints a line per finished trial: Ctrl-C once two are in
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    proc.wait(timeout=30)
    reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "rerun the same command to continue" in out
    url = storage_url(None, plan_path)
    done = len(_finished(url, "s"))
    assert 2 <= done < 40
    proc = _cli(*[a if a != "40" else str(done + 2) for a in args])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"{done}/{done + 2} trials done" in out and len(_finished(url, "s")) == done + 2


@pytest.mark.skipif(
    not os.environ.get("MERGESCOPE_TEST_POSTGRES"),
    reason="MERGESCOPE_TEST_POSTGRES (a postgresql:// URL of a scratch database) is unset; .ci/run starts one",
)
def test_two_workers_share_one_study_on_postgresql(tmp_path):
    url = os.environ["MERGESCOPE_TEST_POSTGRES"]
    plan_path, texts = _demo_plan(tmp_path, n_bytes=2000)
    name = f"two-workers-{uuid.uuid4().hex[:8]}"
    args = [str(plan_path), "--eval-text", *texts, "--trials", "10", "--storage", url, "--study", name, "--no-prune"]
    workers = [_cli(*args, "--seed", str(s), "-o", str(tmp_path / f"best{s}.yml")) for s in (1, 2)]
    results = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [r[1] for r in results]
    trials = _finished(url, name)
    assert 10 <= len(trials) <= 11  # a worker stops once the study holds 10; one more may be in flight
    by = {}
    for t in trials:
        by[t.user_attrs["worker"]] = by.get(t.user_attrs["worker"], 0) + 1
    print("trials per worker:", by)
    assert len(by) == 2  # trials from both processes
    assert (tmp_path / "best1.yml").is_file() and (tmp_path / "best2.yml").is_file()
