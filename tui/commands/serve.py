"""Serve the explorer to a web browser (textual-serve): each browser tab runs its own app.

    mergescope serve                       # the open dialog, on http://localhost:8000
    mergescope serve -- demo               # the demo
    mergescope serve --port 8080 -- ui BASE MODEL ...

Needs the `serve` extra (textual-serve): from the clone, pip install -e '.[serve]'.
"""

from __future__ import annotations

import shlex
import sys


def add_arguments(p) -> None:
    p.add_argument("--host", default="localhost", help="interface to listen on (default localhost)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--public-url", help="the URL browsers use, when behind a proxy")
    p.add_argument("args", nargs="*", metavar="-- COMMAND", help="what to serve (default: ui), e.g. -- demo")


def command_line(args: list[str]) -> str:
    """The shell command each browser session runs."""
    exe = shlex.quote(sys.executable)
    return " ".join([exe, "-m", "mergescope.tui.cli", *(shlex.quote(a) for a in (args or ["ui"]))])


def run(args) -> int:
    from mergescope.io.errors import InputError

    try:
        from textual_serve.server import Server
    except ImportError:
        from mergescope.io.extras import install_hint

        raise InputError(
            f"serving to a browser needs textual-serve, which is not installed: {install_hint('serve')}"
        ) from None
    import tempfile
    from pathlib import Path

    from mergescope.tui.serve_page import write_templates

    with tempfile.TemporaryDirectory(prefix="mergescope-serve-") as tmp:
        server = Server(
            command_line(args.args),
            host=args.host,
            port=args.port,
            title="mergescope",
            public_url=args.public_url,
            templates_path=write_templates(Path(tmp)),  # its page, focused on load: keys work without a click
        )
        server.serve()
    return 0
