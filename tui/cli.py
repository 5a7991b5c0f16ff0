"""`mergescope` console script: argparse front door; each subcommand lives in its own `cmd_*` module.

Exit codes (README, Usage): 0 success, 1 `--fail-on` threshold met, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import importlib
import re
import signal
import sys

from mergescope.io.errors import InputError

# subcommand -> module defining `add_arguments(parser)` and `run(args) -> int`
COMMANDS = {
    "ui": "mergescope.tui.commands.ui",
    "demo": "mergescope.tui.commands.demo",
    "serve": "mergescope.tui.commands.serve",
    "analyze": "mergescope.tui.commands.analyze",
    "merge": "mergescope.tui.commands.merge",
    "eval": "mergescope.tui.commands.evaluate",
    "compare": "mergescope.tui.commands.compare",
    "soup": "mergescope.tui.commands.soup",
    "sweep": "mergescope.tui.commands.sweep",
    "tune": "mergescope.tui.commands.tune",
    "fit": "mergescope.tui.commands.fit",
    "sensitivity": "mergescope.tui.commands.sensitivity",
    "extract-lora": "mergescope.tui.commands.extract_lora",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mergescope",
        description="Merge-readiness analysis and merging of fine-tuned models.",
        formatter_class=ParagraphFormatter,
    )
    from mergescope._version import __version__

    parser.add_argument("--version", action="version", version=f"mergescope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        mod = importlib.import_module(modname)
        p = sub.add_parser(name, help=summary(mod.__doc__), description=mod.__doc__, formatter_class=ParagraphFormatter)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def summary(doc: str | None) -> str | None:
    """A command's line in `mergescope --help`: the first paragraph of its docstring, whole sentences."""
    if not doc:
        return None
    first = doc.strip().split("\n\n", 1)[0]
    return _escape(" ".join(first.split()))


def _escape(text: str | None) -> str | None:
    """argparse expands %-formats in help texts: a literal % ("95 % intervals") must be doubled."""
    return text.replace("%", "%%") if text else text


class ParagraphFormatter(argparse.HelpFormatter):
    """Descriptions keep their paragraphs (each refilled to the terminal) and indented example lines;
    lines break between words, never inside a hyphenated one."""

    def _split_lines(self, text, width):
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text, width, indent):
        import textwrap

        out = []
        for para in textwrap.dedent(text).strip().split("\n\n"):
            lines = para.splitlines()
            if all(line.startswith(" ") for line in lines):  # an example block: as written
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(
                    textwrap.fill(
                        " ".join(para.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                        break_on_hyphens=False,
                    )
                )
        return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(attach_negative_values(argv, value_options(parser)))
    if getattr(args, "_module", None) is None:
        return main(["ui"])
    previous = _on_sigterm()
    try:
        return int(args._module.run(args) or 0)
    except (InputError, FileNotFoundError) as exc:
        msg = str(exc).strip().splitlines() or [exc.__class__.__name__]
        print(f"mergescope {args.command}: error: {msg[0]}", file=sys.stderr)
        for line in msg[1:]:
            print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mergescope {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Terminated:
        print(f"mergescope {args.command}: terminated; nothing was written", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def value_options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string, of the parser and its subcommands, that takes a value."""
    out: set[str] = set()
    for action in parser._actions:
        if action.option_strings and action.nargs != 0:
            out.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= value_options(sub)
    return out


def attach_negative_values(argv: list[str], options: set[str]) -> list[str]:
    """`--values -1:0:0.5` -> `--values=-1:0:0.5`: argparse takes a value that starts with '-' (other than
    a plain negative number) for an option; written after an option that takes a value, it is that
    value. Nothing after `--` is touched."""
    out: list[str] = []
    for i, tok in enumerate(argv):
        if tok == "--":
            return out + argv[i:]
        if out and out[-1] in options and re.match(r"-\.?\d", tok):
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every `with`/`finally` cleans up (partial outputs
    are removed) before the process exits with 143."""


def _on_sigterm():
    """Turn SIGTERM into `Terminated` (main thread only); returns the previous handler."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
