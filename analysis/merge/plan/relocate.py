"""Plan files that travel: the model references a written plan holds resolve from the file's own folder.

A plan's references are read relative to the working directory, else to the plan file's folder
(refs.py). A plan written elsewhere (a best plan saved into another folder) would break with the
references as they were typed, so every writer of a plan file (`Plan.dump`, `Plan.to_yaml(at=…)`)
rewrites each reference that names files: relative to the new file's folder when it lies under it,
else absolute. Hub ids and references to nothing on disk stay as written.
"""

from __future__ import annotations

import os
from pathlib import Path

from mergescope.merge.plan import refs


def portable_dict(plan, target: str | os.PathLike) -> dict:
    """`plan.to_dict()` with its model references rewritten for a file written at `target`."""
    folder = Path(os.path.abspath(Path(target).expanduser())).parent
    memo: dict[str, str] = {}

    def move(ref):
        if not isinstance(ref, str) or ref in ("union", "base"):
            return ref
        if ref not in memo:
            memo[ref] = _relocated(plan, ref, folder)
        return memo[ref]

    d = plan.to_dict()
    _inputs(d, move)
    for m in (d.get("modules") or {}).values():
        _inputs(m, move)
    if "tokenizer_source" in d:
        d["tokenizer_source"] = move(d["tokenizer_source"])
    tok = d.get("tokenizer")
    if tok is not None:
        tok["source"] = move(tok.get("source"))
        for spec in (tok.get("tokens") or {}).values():
            src = spec.get("source")
            if isinstance(src, dict) and "model" in src:
                src["model"] = move(src["model"])
            elif src is not None:
                spec["source"] = move(src)
    return d


def _inputs(d: dict, move) -> None:
    if "base_model" in d:
        d["base_model"] = move(d["base_model"])
    for m in d.get("models") or []:
        m["model"] = move(m["model"])
    for s in d.get("slices") or []:
        if "base_model" in s:
            s["base_model"] = move(s["base_model"])
        for src in s["sources"]:
            src["model"] = move(src["model"])


def _relocated(plan, ref: str, folder: Path) -> str:
    path, adapter = refs.ref_paths(plan, ref)
    if adapter is not None:  # mergekit's BASE+ADAPTER
        return f"{_placed(path, folder)}+{_placed(adapter, folder)}"
    return _placed(path, folder) if path.exists() else ref


def _placed(path: Path, folder: Path) -> str:
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(folder).as_posix() or "."
    except ValueError:
        return str(absolute)
