"""What the commands declare to io.guard (their reads and writes) and how they write their file outputs:
stamped (a rerun may replace them), atomically, an error naming the option when the disk refuses."""

from __future__ import annotations

import os

from mergescope.io.errors import InputError
from mergescope.io.guard import Read, Write, model_reads, shown, stamp_json, stamp_markup, stamp_yaml, write_file


def add_force(p, what: str) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help=f"replace {what} even when mergescope did not write it (never an input)",
    )


def models(refs, flag: str = "") -> list[Read]:
    return [r for ref in refs for r in model_reads(ref, flag)]


def texts(args, attr: str = "text") -> list[Read]:
    """The held-out text files of the scoring options."""
    flag = f"--{attr.replace('_', '-')}"
    return [Read(p, flag) for p in getattr(args, attr, None) or []]


def file_out(path, flag: str, plan: bool = False) -> list[Write]:
    return [Write(path, flag, plan=plan)] if path else []


def write_json(path: str | os.PathLike, flag: str, obj: dict, **dumps) -> None:
    _write(path, flag, stamp_json(obj, **dumps) + "\n")


def write_markup(path: str | os.PathLike, flag: str, text: str) -> None:
    """An HTML or Markdown report, stamped."""
    _write(path, flag, stamp_markup(text))


def write_plan(path: str | os.PathLike, flag: str, yaml_text: str, what: str, backup: bool = False):
    """A plan file under the `# mergescope WHAT` stamp; `backup`: the file it replaces is kept as .bak.
    Returns the backup's path, or None."""
    text = yaml_text if yaml_text.startswith("# mergescope") else stamp_yaml(yaml_text, what)
    return _write(path, flag, text, backup)


def _write(path, flag: str, text: str, backup: bool = False):
    try:
        return write_file(path, text, backup=backup)
    except OSError as exc:
        raise InputError(f"{flag} {shown(path)}: cannot write ({exc.strerror}); pick a writable path") from None
