"""Nothing lost: what a command reads and what it will write, checked together before any work.

`check_io(reads, writes, force)` is the one check every command makes before it reads a tensor
(README, Troubleshooting, "What mergescope never overwrites"). Paths are compared after following
symlinks, and files also by identity (st_dev, st_ino), so a second spelling or a hard link of an input
is still that input. Refused, always: writing `/`, the home folder, the current folder or a folder
above them; writing over an input, inside an input folder, or a folder that holds an input; two
outputs on one path. A folder output may be created, fill an empty folder, or (with `--force`) replace
a folder mergescope wrote (it holds MARKER); a file output may be created, or replace a file
mergescope wrote (it starts with a stamp), or any other file with `--force`, never an input.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mergescope._version import __version__
from mergescope.io.checkpoint.files import METADATA_FILES, TOKENIZER_FILES
from mergescope.io.errors import InputError

MARKER = ".mergescope-output"  # in every folder mergescope writes: `--force` may replace such a folder
JSON_STAMP = "mergescope"  # first key of every JSON file mergescope writes (the version that wrote it)
YAML_STAMP = "# mergescope"  # first line of every plan file the commands write
_STAMPED = re.compile(rb'\A(?:# mergescope|\{\s*"mergescope"\s*:|(?:<!DOCTYPE html>\s*)?<!-- mergescope)')


@dataclass(frozen=True)
class Read:
    """An input: a file or folder the command reads. `flag` names it in messages ('' for a positional);
    `plan`: the plan the command runs (a `Write(plan=True)` may replace it with `--force`)."""

    path: str | os.PathLike
    flag: str = ""
    plan: bool = False


@dataclass(frozen=True)
class Write:
    """An output. `folder`: replaced whole (a model or an adapter); else one file. `store`: a file the
    command adds to (a study database): an existing one is kept, never replaced. `plan`: with `--force`
    it may replace the plan the command reads, which is kept as PLAN.bak."""

    path: str | os.PathLike
    flag: str
    folder: bool = False
    store: bool = False
    plan: bool = False


def shown(path: str | os.PathLike) -> str:
    """A path as messages print it: bytes that are not UTF-8 as \\xNN escapes (printing never fails)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _named(flag: str, path) -> str:
    return f"{flag} {shown(path)}" if flag else shown(path)


def _real(path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def file_key(path: str | os.PathLike):
    """What makes two paths one file: (st_dev, st_ino) when it exists, else the normalised absolute path."""
    p = os.path.expanduser(os.fspath(path))
    try:
        st = os.stat(p)
    except OSError:
        return os.path.normpath(os.path.abspath(p))
    return (st.st_dev, st.st_ino)


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and parent in child.parents


def written_by_mergescope(path: str | os.PathLike) -> bool:
    """True for a folder holding MARKER, or a file that starts with a mergescope stamp."""
    p = Path(path)
    if p.is_dir():
        return (p / MARKER).is_file()
    try:
        with open(p, "rb") as fh:
            return bool(_STAMPED.match(fh.read(64)))
    except OSError:
        return False


def _places() -> list[tuple[Path, str]]:
    """Folders no command writes: the root, the home folder, the current folder."""
    out = [(Path("/").resolve(), "the root folder")]
    try:
        out.append((_real(Path.home()), "your home folder"))
    except (KeyError, RuntimeError):
        pass
    out.append((_real(os.getcwd()), "the current folder"))
    return out


@dataclass
class _Input:
    read: Read
    real: Path
    keys: set  # identities of the input and, for a folder, of the files directly in it


def _inputs(reads: Iterable[Read]) -> list[_Input]:
    out = []
    for r in reads:
        p = Path(os.path.expanduser(os.fspath(r.path)))
        if not p.exists():
            raise InputError(f"{_named(r.flag, r.path)}: no such file or directory; check the path")
        keys = {file_key(p)}
        if p.is_dir():
            try:
                keys |= {file_key(e.path) for e in os.scandir(p)}
            except OSError:
                pass
        out.append(_Input(r, _real(p), keys))
    return out


def _entries(folder: Path, k: int = 4) -> str:
    names = sorted(os.listdir(folder))
    more = f", … ({len(names)} entries)" if len(names) > k else ""
    return ", ".join(shown(n) for n in names[:k]) + more


def check_io(reads: Iterable[Read], writes: Sequence[Write], *, force: bool = False) -> None:
    """InputError (the output, what is at stake, the fix) for the first write that could lose data, an
    input that does not exist, or an output whose folder does not exist. Reads no tensor."""
    inputs = _inputs(reads)
    places = _places()
    seen: list[tuple[Write, Path]] = []
    for w in writes:
        name = _named(w.flag, w.path)
        try:
            os.fsencode(w.path).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{name}: the name is not valid UTF-8; choose a UTF-8 name") from None
        real = _real(w.path)
        for place, what in places:
            if real == place:
                raise InputError(f"{name}: is {what}; write into a new folder instead")
            if _inside(place, real):
                raise InputError(f"{name}: holds {what}; write into a new folder instead")
        _check_inputs(w, name, real, inputs, force)
        for other, oreal in seen:
            oname = _named(other.flag, other.path)
            if real == oreal:
                raise InputError(f"{name}: the same path as {oname}; give them different paths")
            if other.folder and _inside(real, oreal) or w.folder and _inside(oreal, real):
                raise InputError(f"{name}: overlaps the output {oname}, a folder written whole; keep them apart")
        seen.append((w, real))
        _check_existing(w, name, real, force)
        parent = real.parent
        if not parent.is_dir():
            raise InputError(f"{name}: the folder {shown(parent)} does not exist; create it first")
        if not os.access(parent, os.W_OK):
            raise InputError(f"{name}: cannot write into {shown(parent)} (permission denied); choose another path")


def _check_inputs(w: Write, name: str, real: Path, inputs: list[_Input], force: bool) -> None:
    key = file_key(real)
    for i in inputs:
        src = _named(i.read.flag, i.read.path)
        if real == i.real or key in i.keys:
            if w.plan and i.read.plan and force:
                continue  # replaced at the end, the plan kept as PLAN.bak (write_file)
            whole = real == i.real or key == file_key(i.real)
            what = f"the input {src}" if whole else f"a file of the input {src}"
            fix = "; write it elsewhere"
            if w.plan and i.read.plan:
                fix = f"; choose another path, or pass --force to replace it (the plan is kept as {shown(w.path)}.bak)"
            raise InputError(f"{name}: would overwrite {what}{fix}")
        if _inside(real, i.real):
            raise InputError(f"{name}: lies inside the input folder {src}; write it outside the inputs")
        if _inside(i.real, real):
            raise InputError(f"{name}: holds the input {src}; choose a folder that holds no input")


def _check_existing(w: Write, name: str, real: Path, force: bool) -> None:
    if not real.exists():
        return
    if w.folder:
        replaceable_folder(real, force, name)
        return
    if real.is_dir():
        raise InputError(f"{name}: is a folder; give a file path")
    if w.store or force or written_by_mergescope(real):
        return
    raise InputError(
        f"{name}: exists and mergescope did not write it; choose another path, or pass --force to replace it"
    )


def replaceable_folder(out: Path, force: bool, name: str | None = None) -> None:
    """The folder rule: an existing output folder may be filled when empty, and replaced only with
    `force` and only when mergescope wrote it. Called again just before the replacing rename."""
    name = name or shown(out)
    if not out.is_dir():
        raise InputError(f"{name}: exists and is not a directory; choose another output path")
    if not any(out.iterdir()):
        return
    if (out / MARKER).is_file():
        if force:
            return
        raise InputError(
            f"{name}: output directory exists and is not empty; choose another path or pass --force to replace it"
        )
    raise InputError(
        f"{name}: output directory exists and is not empty, and mergescope did not write it (it holds "
        f"{_entries(out)}); choose another path — --force replaces only an empty folder or mergescope's own output"
    )


def model_reads(ref: str | os.PathLike, flag: str = "") -> list[Read]:
    """The reads of one model argument: the checkpoint (a folder, a file with the metadata files beside
    it), or both halves of `BASE+ADAPTER`."""
    p = Path(os.path.expanduser(os.fspath(ref)))
    if not p.exists():
        from mergescope.io import hub_ref

        if hub_ref.parse(ref) is not None:  # a repo id: its cached snapshot, once fetched, is what is read
            local = hub_ref.local_dir(ref)
            return [Read(local, flag)] if local is not None else []
    if not p.exists() and "+" in str(ref):
        a, b = str(ref).rsplit("+", 1)
        if Path(a).expanduser().exists() and Path(b).expanduser().exists():
            return [*model_reads(a, flag), *model_reads(b, flag)]
    reads = [Read(ref, flag)]
    if p.is_file():
        reads += [Read(p.parent / f, flag) for f in (*METADATA_FILES, *TOKENIZER_FILES) if (p.parent / f).is_file()]
    return reads


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return _real(a) == _real(b) or file_key(a) == file_key(b)


def distinct(paths: Sequence[str], flag: str = "MODEL") -> None:
    """InputError when two of `paths` are one file or folder under two spellings (or the same spelling)."""
    keys: dict = {}
    for p in paths:
        k = file_key(p)
        if k in keys:
            how = "listed twice" if keys[k] == p else f"the same as {shown(keys[k])} under another spelling"
            raise InputError(f"{flag} {shown(p)}: {how}; list each model once")
        keys[k] = p


# -- writing outputs ----------------------------------------------------------------------------------
def stamp_json(obj: dict, **dumps) -> str:
    """`obj` as JSON, `"mergescope": VERSION` first: the stamp that lets a rerun replace the file."""
    return json.dumps({JSON_STAMP: __version__, **obj}, **dumps)


def stamp_yaml(text: str, what: str) -> str:
    """A plan's YAML under a first comment line `# mergescope WHAT` (the stamp for plan files)."""
    return f"{YAML_STAMP} {what}\n{text}"


def stamp_markup(text: str) -> str:
    """An HTML or Markdown report under a first comment `<!-- mergescope VERSION -->` (after the doctype)."""
    mark = f"<!-- mergescope {__version__} -->\n"
    if text.startswith("<!DOCTYPE html>"):
        head, _, rest = text.partition("\n")
        return f"{head}\n{mark}{rest}"
    return mark + text


def write_file(path: str | os.PathLike, text: str, *, backup: bool = False) -> Path | None:
    """Write a file output atomically (a temporary sibling renamed over it). `backup`: an existing file is
    first kept as PATH.bak (PATH.1.bak, … when that exists too). Returns the backup's path or None."""
    target = _real(path)
    kept = None
    if backup and target.is_file():
        kept = target.with_name(target.name + ".bak")
        n = 0
        while kept.exists():
            n += 1
            kept = target.with_name(f"{target.name}.{n}.bak")
        shutil.copy2(target, kept)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return kept


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def mark_folder(folder: Path, what: str) -> None:
    """Write MARKER into a finished output folder (before it is renamed into place)."""
    (Path(folder) / MARKER).write_text(json.dumps({"written_by": f"mergescope {__version__}", "what": what}) + "\n")
