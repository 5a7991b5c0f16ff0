"""`mergescope` console script: argparse front door; each subcommand lives in its own `cmd_*` module.

Exit codes (README, Usage): 0 success, 1 `--fail-on` threshold met, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import importlib
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
        prog="mergescope", description="Merge-readiness analysis and merging of fine-tuned models."
    )
    from mergescope._version import __version__

    parser.add_argument("--version", action="version", version=f"mergescope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        mod = importlib.import_module(modname)
        p = sub.add_parser(
            name, help=mod.__doc__.strip().splitlines()[0] if mod.__doc__ else None, description=mod.__doc__
        )
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
