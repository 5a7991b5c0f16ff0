"""The README's Python API example runs as written (on the bundled demo family)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs(tmp_path, monkeypatch, capsys):
    section = README.read_text().split("### Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "tensors written" in out
    assert (tmp_path / "code-prose-ties" / "model.safetensors").is_file()
    assert (tmp_path / "code-prose-ties" / "merge_plan.yml").read_text().startswith("merge_method: ties")


def _walkthrough() -> str:
    return README.read_text().split("## Your own models", 1)[1].split("\n## ", 1)[0]


def test_the_walkthroughs_commands_parse_and_its_plan_validates_on_the_demo_family():
    """Every command of "Your own models" is accepted by the CLI's parser, and its plan is valid with the
    demo family in place of the repo ids (the README says they run there)."""
    import shlex

    from mergescope.demo import family_dir
    from mergescope.merge.plan import Plan
    from mergescope.tui.cli import attach_negative_values, build_parser, value_options

    section = _walkthrough()
    fam = family_dir()
    swap = {
        "meta-llama/Meta-Llama-3-8B-Instruct": str(fam / "prose"),
        "meta-llama/Meta-Llama-3-8B": str(fam / "base"),
        "your-org/llama-3-8b-code": str(fam / "code"),
    }
    parser = build_parser()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("mergescope "):
                commands.append(shlex.split(line)[1:])
    assert [c[0] for c in commands] == ["analyze", "merge", "compare", "sweep"]
    for argv in commands:
        argv = [swap.get(a, a) for a in argv]
        args = parser.parse_args(attach_negative_values(argv, value_options(parser)))
        assert args._module is not None
    text = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    for ref, path in swap.items():
        text = text.replace(ref, path)
    import yaml

    plan = Plan.from_dict(yaml.safe_load(text))
    plan.validate(check_paths=True)


def test_the_walkthrough_lists_what_to_do_for_every_finding():
    section = _walkthrough()
    findings = README.read_text().split("### Findings", 1)[1].split("\n### ", 1)[0]
    codes = set(re.findall(r"^\| `([a-z-]+)` \|", findings, re.M))
    assert len(codes) >= 10
    missing = [c for c in codes if f"`{c}`" not in section.split("**What to do for each finding.**")[1]]
    assert not missing
