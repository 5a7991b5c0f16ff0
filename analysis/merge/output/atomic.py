"""Outputs appear whole or not at all: written into a sibling staging folder, then moved into place in
one rename (the old output, when `--force` replaces one, is moved aside first and restored on failure)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from mergescope.io.errors import InputError
from mergescope.io.guard import mark_folder, replaceable_folder


def staging_dir(out: Path) -> Path:
    """A fresh sibling directory of OUT to write into before `commit_dir` (same file system: a rename)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.absolute().parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it 0700; the output should look like any directory
    return tmp


def commit_dir(tmp: Path, out: Path, force: bool, what: str = "merge") -> None:
    """Mark the finished `tmp` as mergescope's (io.guard.MARKER) and move it into place as OUT: an
    existing OUT is replaced only with `force`, only when mergescope wrote it, and only now; a failure
    puts it back, so OUT is always the old or the new output, never a mix."""
    old = None
    mark_folder(tmp, what)
    if out.exists():
        replaceable_folder(out, force)  # again: it may have changed while we were writing
        old = out.parent / f".{out.name}.old-{os.getpid()}-{int(time.time())}"
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError as exc:
        if old is not None:
            old.rename(out)
        if out.exists():  # another run finished into the same directory first
            raise InputError(
                f"{out}: another {what} wrote this output while this one ran; it was kept and this {what}'s "
                f"output dropped — {what} into another directory"
            ) from None
        raise exc
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
