"""Nothing lost: io.guard's rules on their own, then every command as a real child process: outputs never
replace an input, a folder mergescope did not write or the user's home, every path is checked before the
first tensor is read, and the inputs are byte-identical afterwards."""

import os
from pathlib import Path

import pytest

from mergescope.io.errors import InputError
from mergescope.io.guard import MARKER, Read, Write, check_io, stamp_json, stamp_yaml, write_file, written_by_mergescope
from mergescope.merge.plan import Plan
from tests.ckpt_utils import make_finetune
from tests.cli_utils import byte_family, cli, refused, snapshot, write_plan


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return byte_family(tmp_path_factory.mktemp("guardfam"))


# -- the rules, in process ------------------------------------------------------------------------------
def test_outputs_never_overlap_inputs_however_spelled(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.safetensors").write_bytes(b"x")
    os.link(model / "w.safetensors", tmp_path / "hard.bin")
    (tmp_path / "link").symlink_to(model)
    reads = [Read(model, "MODEL")]
    cases = [
        (Write(model, "-o", folder=True), "would overwrite the input"),
        (Write(tmp_path / "link", "-o", folder=True), "would overwrite the input"),
        (Write(tmp_path / "m/../m/", "-o", folder=True), "would overwrite the input"),
        (Write(tmp_path / "hard.bin", "--json", folder=False), "would overwrite a file of the input"),
        (Write(model / "w.safetensors", "--json"), "would overwrite a file of the input"),
        (Write(tmp_path / "link" / "report.json", "--json"), "lies inside the input folder"),
        (Write(tmp_path, "-o", folder=True), "holds the input"),
    ]
    for w, needle in cases:
        for force in (False, True):
            with pytest.raises(InputError, match=needle):
                check_io(reads, [w], force=force)
    with pytest.raises(InputError, match="MODEL .*nope: no such file or directory"):
        check_io([Read(tmp_path / "nope", "MODEL")], [])


def test_places_folders_and_files_mergescope_did_not_write(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "work" / "run").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home / "work" / "run")
    for path, needle in ((home, "is your home folder"), (".", "is the current folder"), ("..", "holds the current")):
        with pytest.raises(InputError, match=needle):
            check_io([], [Write(path, "", folder=True)], force=True)
    with pytest.raises(InputError, match="is the root folder"):
        check_io([], [Write("/", "", folder=True)], force=True)
    user = tmp_path / "user"
    user.mkdir()
    for n in ("a.txt", "b.txt", "c.txt", "d.txt", "e.txt"):
        (user / n).write_text(n)
    with pytest.raises(InputError, match=r"did not write it \(it holds a.txt, b.txt, c.txt, d.txt, … \(5 entries\)\)"):
        check_io([], [Write(user, "", folder=True)], force=True)
    (user / MARKER).write_text("")
    with pytest.raises(InputError, match="not empty; choose another path or pass --force"):
        check_io([], [Write(user, "", folder=True)])
    check_io([], [Write(user, "", folder=True)], force=True)  # mergescope's own output: --force replaces it
    mine, theirs = tmp_path / "mine.json", tmp_path / "theirs.json"
    write_file(mine, stamp_json({"a": 1}, indent=1))
    theirs.write_text('{"a": 1}')
    assert written_by_mergescope(mine) and not written_by_mergescope(theirs)
    assert written_by_mergescope(user) and written_by_mergescope(write_file_and_return(tmp_path / "p.yml"))
    check_io([], [Write(mine, "--json")])
    with pytest.raises(InputError, match="--json .*theirs.json: exists and mergescope did not write it.*--force"):
        check_io([], [Write(theirs, "--json")])
    check_io([], [Write(theirs, "--json")], force=True)
    with pytest.raises(InputError, match="the same path as --json"):
        check_io([], [Write(mine, "--json"), Write(mine, "--plan-out")])
    with pytest.raises(InputError, match="overlaps the output -o"):
        check_io([], [Write(tmp_path / "o", "-o", folder=True), Write(tmp_path / "o" / "p.yml", "--plan-out")])
    with pytest.raises(InputError, match="the folder .*nodir does not exist; create it first"):
        check_io([], [Write(tmp_path / "nodir" / "x.yml", "--write-best")])
    with pytest.raises(InputError, match=r"o\\xff: the name is not valid UTF-8"):
        check_io([], [Write(os.fsdecode(bytes(tmp_path / "o") + b"\xff"), "", folder=True)])


def write_file_and_return(path: Path) -> Path:
    write_file(path, stamp_yaml("merge_method: linear\n", "sweep"))
    return path


def test_the_plan_may_be_replaced_only_with_force_and_is_kept(tmp_path):
    plan = tmp_path / "p.yml"
    plan.write_text("merge_method: linear\n")
    with pytest.raises(InputError, match=r"would overwrite the input .*p.yml; .*--force .*p.yml.bak"):
        check_io([Read(plan, plan=True)], [Write(plan, "--write-best", plan=True)])
    check_io([Read(plan, plan=True)], [Write(plan, "--write-best", plan=True)], force=True)
    with pytest.raises(InputError, match="would overwrite"):  # --force never replaces another input
        check_io([Read(plan)], [Write(plan, "--write-best", plan=True)], force=True)
    kept = write_file(plan, "new\n", backup=True)
    assert kept.name == "p.yml.bak" and kept.read_text() == "merge_method: linear\n" and plan.read_text() == "new\n"
    assert write_file(plan, "newer\n", backup=True).name == "p.yml.1.bak"


# -- the commands, in child processes ------------------------------------------------------------------
def test_a_greedy_soup_never_writes_over_an_ingredient(fam, tmp_path):
    root, base, fts = fam
    before = snapshot(root)
    args = ["soup", *fts, "--greedy", "--eval-text", root / "text.txt", "-o", fts[1], "--force"]
    line = refused(cli(*args), f"-o {fts[1]}: would overwrite the input {fts[1]}")
    print(line)
    refused(cli("soup", fts[0], fts[1], "--eval-text", root / "text.txt", "--plan-out", tmp_path / "no" / "p.yml"))
    assert snapshot(root) == before


def test_analyze_json_never_replaces_an_input_and_asks_before_other_files(fam, tmp_path):
    root, base, fts = fam
    before = snapshot(root)
    target = fts[0] / "model.safetensors"
    for extra in ([], ["--force"]):
        line = refused(cli("analyze", base, fts[0], "--json", target, "-q", *extra), "would overwrite")
    print(line)
    assert snapshot(root) == before
    user = tmp_path / "notes.json"
    user.write_text('{"mine": true}')
    refused(cli("analyze", base, fts[0], "--json", user, "-q"), "mergescope did not write it", "--force")
    assert user.read_text() == '{"mine": true}'
    assert cli("analyze", base, fts[0], "--json", user, "-q", "--force")[0] == 0
    assert cli("analyze", base, fts[0], "--json", user, "-q")[0] == 0  # its own output: replaced on a rerun
    assert user.read_text().startswith('{\n "mergescope":') and snapshot(root) == before


def test_merge_force_replaces_only_mergescope_folders(fam, tmp_path):
    root, base, fts = fam
    before = snapshot(root)
    work = tmp_path / "work"
    work.mkdir()
    plan = write_plan(work / "p.yml", base, fts[:2])
    (work / "notes.txt").write_text("weeks of notes")
    kept = snapshot(work)
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    print(refused(cli("merge", plan, work, "--force", "-q", cwd=tmp_path), f"{work}: holds the input {plan}"))
    print(refused(cli("merge", "p.yml", ".", "--force", "-q", cwd=work), ".: is the current folder"))
    print(refused(cli("merge", plan, "~", "--force", "-q", env=env), "is your home folder"))
    refused(cli("merge", plan, "/", "--force", "-q"), "is the root folder")
    refused(cli("merge", plan, fts[0], "--force", "-q"), "would overwrite the input")
    refused(cli("merge", plan, root, "--force", "-q"), "holds the input")
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    print(refused(cli("merge", plan, other, "--force", "-q"), "did not write it (it holds thesis.tex)"))
    assert (other / "thesis.tex").read_text() == "x" and snapshot(work) == kept
    out = tmp_path / "out"
    assert cli("merge", plan, out, "-q")[0] == 0 and (out / MARKER).is_file()
    refused(cli("merge", plan, out, "-q"), "not empty", "--force")
    assert cli("merge", plan, out, "--force", "-q")[0] == 0  # a mergescope output: --force replaces it
    assert snapshot(root) == before and snapshot(work) == kept
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folder left behind


def test_every_path_is_checked_before_the_first_tensor(fam, tmp_path):
    root, base, fts = fam
    plan = write_plan(tmp_path / "p.yml", base, fts[:2])
    out = tmp_path / "merged"
    line = refused(cli("merge", plan, out, "-q", "--eval-text", tmp_path / "missing.txt"))
    assert "--eval-text" in line and "missing.txt: no such file or directory" in line and not out.exists()
    print(line)
    args = ["sweep", plan, "--param", "weight", "--values", "0.2,0.5", "--eval-text", root / "text.txt"]
    rc, stdout, err = res = cli(*args, "--write-best", tmp_path / "nodir" / "best.yml")
    print(refused(res, "--write-best", "nodir does not exist; create it first"))
    assert "weight = 0.2" not in stdout  # refused before the first point was scored
    print(refused(cli(*args, "--write-best", plan), f"--write-best {plan}: would overwrite the input", ".bak"))
    original = plan.read_bytes()
    rc, stdout, err = cli(*args, "--write-best", plan, "--force", "--no-plot")
    assert rc == 0, err
    assert Path(f"{plan}.bak").read_bytes() == original and plan.read_text().startswith("# mergescope sweep")
    assert Plan.load(plan).models[0].parameters["weight"] in (0.2, 0.5)


def test_tune_never_writes_the_plan_it_reads(fam, tmp_path):
    pytest.importorskip("optuna", reason="the tune extra is not installed")
    root, base, fts = fam
    plan = write_plan(tmp_path / "p.yml", base, fts[:2])
    original = plan.read_bytes()
    args = ["tune", plan, "--eval-text", root / "text.txt", "--trials", "1", "--groups", "mlp", "--bands", "1"]
    print(refused(cli(*args, "-o", plan), f"-o {plan}: would overwrite the input", "--force"))
    refused(cli(*args, "--storage", fts[0] / "model.safetensors"), "--storage", "would overwrite")
    assert plan.read_bytes() == original and not (tmp_path / "p.tune.db").exists()
    rc, out, err = cli(*args, "-o", plan, "--force", "--no-plot")
    assert rc == 0, err
    assert Path(f"{plan}.bak").read_bytes() == original and plan.read_text().startswith("# mergescope tune")


def test_two_spellings_of_one_model_are_one_model(fam, tmp_path):
    root, base, fts = fam
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    code = make_finetune(base, ckpt / "code", scale=0.002, seed=9)
    (ckpt / "link").symlink_to(code)
    for second in (f"{code}/../code/", ckpt / "link"):
        plan = write_plan(tmp_path / "dup.yml", base, [code, second])
        print(refused(cli("merge", plan, tmp_path / "o", "-q"), "the same model as", "under another spelling"))
        refused(cli("soup", code, second, "--eval-text", root / "text.txt"), "under another spelling")
    plan = write_plan(tmp_path / "b.yml", base, [f"{base}/../base", fts[0]])
    refused(cli("merge", plan, tmp_path / "o", "-q"), "is base_model", "under another spelling")
    assert not (tmp_path / "o").exists()
    with pytest.raises(InputError, match="is listed twice"):
        Plan.from_yaml(f"merge_method: linear\nmodels:\n- model: {code}\n- model: {code}\n").validate()


def test_demo_headless_output_replaces_only_earlier_demo_merges(tmp_path):
    from mergescope.tui.commands.demo_headless import merge_folders

    mine = tmp_path / merge_folders()[0]
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    print(refused(cli("demo", "--headless", "--output", tmp_path), "did not write it (it holds notes.txt)"))
    assert (mine / "notes.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1


def test_the_apps_export_never_writes_into_a_model_and_may_resave_its_own_plan(tmp_path):
    from mergescope.demo import family_dir
    from mergescope.merge.plan import Plan
    from mergescope.tui.state.session import Session

    fam = family_dir()
    path = tmp_path / "plan.yml"
    plan = Plan.from_dict(
        {
            "merge_method": "task_arithmetic",
            "base_model": str(fam / "base"),
            "models": [{"model": str(fam / "code"), "parameters": {"weight": 0.5}}],
        }
    )
    path.write_text(plan.to_yaml(at=path))
    session = Session.__new__(Session)
    session.last_export, session.plan_state = None, None
    assert session.export(Plan.load(path), str(path)) == path  # saving the plan it opened
    before = sorted(p.name for p in (fam / "code").iterdir())
    with pytest.raises(InputError, match="inside the input folder"):
        session.export(Plan.load(path), str(fam / "code" / "plan.yml"))
    assert sorted(p.name for p in (fam / "code").iterdir()) == before
