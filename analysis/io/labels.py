"""Short, unique names for models given as paths or Hub ids, for tables and messages.

Models are named by the fewest trailing path components that tell them apart: `/x/family/code` is
`code`, unless another model also ends in `code`, then `family/code`. Shortening to a width keeps names
apart too: when cutting the end would make two names equal (`smollm2-360m-instruct-code` and `-math`),
the start is cut instead, then the middle; as a last resort names are numbered.
"""

from __future__ import annotations

from pathlib import PurePosixPath

ELLIPSIS = "…"


def unique_tails(refs: list[str]) -> list[str]:
    """Each reference's shortest trailing run of path components that no other reference shares."""
    parts = [PurePosixPath(r.rstrip("/")).parts or (r,) for r in refs]
    keep = [1] * len(refs)
    while True:
        names = [_tail(p, k) for p, k in zip(parts, keep)]
        counts = {n: names.count(n) for n in names}
        grow = [i for i, n in enumerate(names) if counts[n] > 1 and keep[i] < len(parts[i])]
        if not grow:
            return names
        for i in grow:
            keep[i] += 1


def _tail(parts: tuple[str, ...], k: int) -> str:
    tail = parts[-k:]
    return str(PurePosixPath(*tail)) if tail else ""


def short_labels(refs: list[str], width: int | None = None) -> list[str]:
    """`unique_tails`, each at most `width` characters (≥ 4), still unique where the references are."""
    names = unique_tails(refs)
    if len(set(names)) < len(names):  # the same reference twice: number them
        return _numbered(names, width)
    if width is None or all(len(n) <= width for n in names):
        return names
    width = max(width, 4)
    for cut in (_cut_end, _cut_start, _cut_middle):
        out = [n if len(n) <= width else cut(n, width) for n in names]
        if len(set(out)) == len(out):
            return out
    return _numbered(names, width)


def _cut_end(name: str, width: int) -> str:
    return name[: width - 1] + ELLIPSIS


def _cut_start(name: str, width: int) -> str:
    return ELLIPSIS + name[-(width - 1) :]


def _cut_middle(name: str, width: int) -> str:
    head = (width - 1) // 2
    return name[:head] + ELLIPSIS + name[-(width - 1 - head) :]


def _numbered(names: list[str], width: int | None) -> list[str]:
    out = []
    for i, n in enumerate(names):
        tag = f"#{i} "
        room = None if width is None else width - len(tag)
        if room is not None and len(n) > room:
            n = _cut_start(n, room) if room > 1 else ""
        out.append((tag + n).rstrip())
    return out
