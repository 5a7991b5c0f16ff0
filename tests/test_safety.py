"""Nothing runs that the user did not ask for, no bad file hangs or crashes the tool: shard paths stay in
the model folder, model cards and plans are read in bounded time, `--eval-cmd` never goes through a
shell and its timeout ends every process it started; clear one-line errors instead of tracebacks; tune
workers never repeat each other; a sweep over a parameter the method ignores is refused. The commands
run as real child processes (tests/test_guard.py's helpers)."""

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergescope.io.checkpoint.model import front_matter
from mergescope.io.errors import InputError
from mergescope.score.command import command_argv
from tests.ckpt_utils import make_llama, make_lora
from tests.cli_utils import byte_family, cli, refused, write_plan

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9)
)  # 9^10 values once expanded


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return byte_family(tmp_path_factory.mktemp("safetyfam"))


PASSWD_HEAD = (
    str(int.from_bytes(Path("/etc/passwd").read_bytes()[:8], "little", signed=True))
    if Path("/etc/passwd").is_file()
    else "-"
)


def copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


# -- shards stay inside the model folder ---------------------------------------------------------------
def test_index_shards_must_lie_inside_the_model_folder(fam, tmp_path):
    root, base, _ = fam
    model = make_llama(tmp_path / "sharded", n_layers=2, hidden=16, vocab=256, shards=2)
    assert cli("analyze", base, model, "-q")[0] == 0  # a sound index opens
    index = json.loads((model / "model.safetensors.index.json").read_text())
    first, shard = next(iter(index["weight_map"].items()))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / shard).write_bytes((model / shard).read_bytes())
    cases = {"etc": "../../../../../../etc/passwd", "up": f"../outside/{shard}", "link": shard}
    for name, target in cases.items():
        bad = copy_model(model, tmp_path / name)
        if name == "link":
            (bad / shard).unlink()
            (bad / shard).symlink_to(outside / shard)
        wm = {k: (target if v == shard else v) for k, v in index["weight_map"].items()}
        (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
        line = refused(cli("analyze", base, bad, "-q"), f"weight_map entry {first!r}", "outside the model folder")
        assert "declared length" not in line and PASSWD_HEAD not in line  # nothing of the file it names
        print(line)


# -- bounded reading -------------------------------------------------------------------------------------
def test_a_model_card_alias_bomb_is_ignored_quickly(fam, tmp_path):
    root, base, fts = fam
    model = copy_model(fts[0], tmp_path / "card")
    (model / "README.md").write_text(f"---\nbase_model: base\n{BOMB}---\n# card\n")
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "_name_or_path": {"not": ["a", "name"] * 5000}}))
    t0 = time.monotonic()
    rc, out, err = cli("analyze", base, model, "-q", "--no-cache", timeout=120)
    assert rc == 0 and time.monotonic() - t0 < 60, err
    assert front_matter(model / "README.md") == {}
    (model / "README.md").write_text("---\nbase_model: org/base\nlicense: mit\n---\n# card\n")
    assert front_matter(model / "README.md")["base_model"] == "org/base"
    (model / "README.md").write_text("---\nbase_model: x\n" + "tags: [a]\n" * 20000 + "---\n")  # past the bytes read
    assert front_matter(model / "README.md") == {}


def test_oversize_and_exploding_plans_are_refused_fast(fam, tmp_path):
    root, base, fts = fam
    big = tmp_path / "big.yml"
    with open(big, "w") as fh:  # a 13 M-value gradient, ~52 MB
        fh.write(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n- model: {fts[0]}\n")
        fh.write("  parameters:\n    weight: [" + "0.5, " * 13_000_000 + "0.5]\n")
    t0 = time.monotonic()
    line = refused(cli("merge", big, tmp_path / "o", "-q", timeout=60), "big.yml", "more than the 1 MB a plan may have")
    assert time.monotonic() - t0 < 30
    print(line)
    bomb = tmp_path / "bomb.yml"
    bomb.write_text(
        f"merge_method: linear\nmodels:\n- model: {fts[0]}\nx:\n" + "".join(f"  {ln}\n" for ln in BOMB.splitlines())
    )
    print(refused(cli("merge", bomb, tmp_path / "o", "-q", timeout=60), "bomb.yml: refused: it expands to more than"))
    assert not (tmp_path / "o").exists()


# -- --eval-cmd: no shell, and the timeout ends every process ------------------------------------------
def test_eval_cmd_builds_the_argument_vector_itself(fam, tmp_path):
    root, base, _ = fam
    assert command_argv("score '{model}' --t={text} \"a b\"", "x y;$(z)", "t{model}") == [
        "score",
        "x y;$(z)",
        "--t=t{model}",
        "a b",
    ]
    with pytest.raises(InputError, match="cannot split it into words"):
        command_argv("score '{model}", "m")
    assert "without a shell" in " ".join(cli("eval", "--help")[1].split())  # the rule is in --help
    evil = copy_model(base, tmp_path / "m;touch PWNED1;$(touch PWNED2)`touch PWNED3`\"'")
    script = tmp_path / "score.py"  # 1 when it was given the model folder itself, as one argument
    script.write_text("import os, sys; print(int(len(sys.argv) == 2 and os.path.isfile(sys.argv[1] + '/config.json')))")
    for template in (f"{sys.executable} {script} '{{model}}'", f'{sys.executable} {script} "{{model}}"'):
        rc, out, err = cli("eval", evil, "--eval-cmd", template, "--json", tmp_path / "s.json", "--force", cwd=tmp_path)
        assert rc == 0, err
        assert json.loads((tmp_path / "s.json").read_text())["scores"][0]["score"] == 1.0
    assert not list(tmp_path.glob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_eval_timeout_kills_the_command_and_its_children(fam, tmp_path):
    root, base, _ = fam
    script = tmp_path / "slow.py"
    script.write_text(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "open(sys.argv[2], 'w').write(str(child.pid))\n"
        "time.sleep(300)\n"
    )
    pidfile = tmp_path / "grandchild.pid"
    template = f"{sys.executable} {script} {{model}} {pidfile}"
    t0 = time.monotonic()
    line = refused(cli("eval", base, "--eval-cmd", template, "--eval-timeout", "3"), "no answer within 3 s")
    print(line)
    assert time.monotonic() - t0 < 60
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the command's child outlived the timeout"


# -- clear one-line errors ---------------------------------------------------------------------------------
def test_bad_inputs_are_one_line_errors(fam, tmp_path):
    root, base, fts = fam
    text = root / "text.txt"
    lines = [
        refused(cli("eval", base, "--text", text, "--context", "1"), "--context 1: must be at least 2"),
        refused(cli("eval", base, "--text", text, "--max-bytes", "-5"), "--max-bytes -5: must be at least 1"),
    ]
    lora = make_lora(base, tmp_path / "r0", rank=2)
    cfg = json.loads((lora / "adapter_config.json").read_text())
    (lora / "adapter_config.json").write_text(json.dumps({**cfg, "r": 0}))
    lines.append(refused(cli("analyze", base, lora, "-q"), "adapter_config.json: `r` is 0"))
    lora = make_lora(base, tmp_path / "ab", rank=2)
    sd = load_file(str(lora / "adapter_model.safetensors"))
    a = next(k for k in sd if "lora_A" in k)
    sd[a] = torch.zeros(3, sd[a].shape[1])
    save_file(sd, str(lora / "adapter_model.safetensors"))
    lines.append(refused(cli("analyze", base, lora, "-q"), a, "one rank"))
    model = copy_model(fts[0], tmp_path / "listcfg")
    (model / "config.json").write_text("[1, 2]")
    lines.append(refused(cli("analyze", base, model, "-q"), "config.json: holds a JSON array, not an object"))
    plan = write_plan(tmp_path / "p.yml", base, fts[:2])
    out = os.fsencode(tmp_path / "out") + b"\xff"
    rc, stdout, err = cli("merge", plan, os.fsdecode(out), "-q")
    lines.append(refused((rc, stdout, err), "out\\xff: the name is not valid UTF-8"))
    line = refused(cli("merge", "p.yml", ".", "--force", "-q", cwd=tmp_path), ".: is the current folder")
    assert "busy" not in line and "free space" not in line
    lines.append(line)
    print("\n".join(lines))


# -- quieter traps ------------------------------------------------------------------------------------------
def test_tune_workers_with_different_seeds_never_repeat_a_trial(fam, tmp_path):
    optuna = pytest.importorskip("optuna", reason="the tune extra is not installed")
    root, base, fts = fam
    plan = write_plan(tmp_path / "p.yml", base, fts[:2])
    db = tmp_path / "study.db"
    args = ["tune", plan, "--eval-text", root / "text.txt", "--groups", "mlp", "--bands", "1", "--no-prune"]
    args += ["--storage", db, "--study", "shared", "--no-plot"]
    # worker A (seed 3) starts on an empty study; worker B (seed 1) joins once it holds 2 trials: with the
    # old sampler seed `seed + trials in the study` both drew from seed 3, and B repeated A's trial 1
    for seed, trials in (("3", "2"), ("1", "4")):
        rc, out, err = cli(*args, "--seed", seed, "--trials", trials, "-o", tmp_path / f"best{seed}.yml")
        assert rc == 0, err
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{db}")
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    assert len(done) == 4
    params = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(params)) == len(params), params


def test_sweep_refuses_a_parameter_the_method_ignores(fam, tmp_path):
    root, base, fts = fam
    plan = write_plan(tmp_path / "p.yml", base, fts[:2])
    args = ["sweep", plan, "--param", "density", "--values", "0.2,0.5", "--eval-text", root / "text.txt"]
    line = refused(cli(*args), "--param density: task_arithmetic accepts `density` but ignores it", "ties")
    print(line)
    assert cli(*args[:2], "--param", "weight", *args[4:], "--no-plot")[0] == 0
