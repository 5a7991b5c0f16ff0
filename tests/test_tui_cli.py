"""The interactive commands' command lines (ui, demo, serve)."""


def test_serve_command_line():
    from mergescope.tui.commands.serve import command_line

    assert command_line([]).endswith("-m mergescope.tui.cli ui")
    assert command_line(["demo"]).endswith("-m mergescope.tui.cli demo")
    assert "'a b'" in command_line(["ui", "a b", "c"])


def test_cli_registers_the_interactive_commands():
    from mergescope.tui.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["ui", "base", "ft0", "--plan", "p.yaml"])
    assert args.base == "base" and args.models == ["ft0"] and args.plan == "p.yaml"
    assert parser.parse_args(["demo"]).command == "demo"
    assert parser.parse_args(["serve", "--port", "9000", "demo"]).args == ["demo"]


def test_ui_refuses_a_base_without_models(capsys):
    from mergescope.tui.cli import main

    assert main(["ui", "only-a-base"]) == 2
    assert "at least one fine-tuned MODEL" in capsys.readouterr().err


def test_demo_paths_come_from_the_bundled_family(monkeypatch, tmp_path):
    import mergescope.demo as family
    import mergescope.tui.commands.demo as demo
    from mergescope.io.errors import InputError

    monkeypatch.setattr(family, "family_dir", lambda: tmp_path)
    try:
        demo.demo_paths()
    except InputError as exc:
        assert "demo family is missing" in str(exc)
    else:
        raise AssertionError("expected an InputError")
    for name in ("base", "code", "prose"):
        (tmp_path / name).mkdir()
    base, models = demo.demo_paths()
    assert base.endswith("base") and [m.rsplit("/", 1)[-1] for m in models] == ["code", "prose"]
