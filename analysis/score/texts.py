"""Held-out texts: reading them, their passages, and the selection / report split searches use.

A `Text` is the UTF-8 bytes that get scored plus where its passages lie. Passages are what a report of
where a merge lost talks about, and the units every interval resamples: blank-line paragraphs of a text
file, or the `text` field of each line of a `.jsonl` file (joined by blank lines to be scored as one
text). A passage longer than `PIECE_MAX` bytes is cut at line ends into pieces of about `PIECE` bytes,
so one long paragraph does not weigh as one unit.

Splits: searches choose on the selection part of each text and report on the rest (by default its last
quarter, cut at a passage boundary), so the numbers they report were not used to choose.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from mergescope.io.errors import InputError

PIECE_MAX = 2048
PIECE = 1024
REPORT_FRACTION = 0.25
_BLANK = re.compile(rb"\n(?:[ \t\r]*\n)+")


class Text(bytes):
    """The bytes of a text, with its passages as byte ranges [start, end) (None: blank-line paragraphs)."""

    passages: tuple[tuple[int, int], ...] | None
    path: Path | None

    def __new__(cls, data: bytes, passages=None, path: Path | None = None):
        self = super().__new__(cls, data)
        self.passages = tuple(passages) if passages is not None else None
        self.path = path
        return self

    def __reduce__(self):
        return (Text, (bytes(self), self.passages, self.path))


def passages(text: bytes) -> list[tuple[int, int]]:
    """[start, end) byte ranges of the passages of `text` (blank lines between them excluded)."""
    given = getattr(text, "passages", None)
    if given is not None:
        return list(given)
    out, pos = [], 0
    for m in _BLANK.finditer(text):
        if text[pos : m.start()].strip():
            out.append((pos, m.start()))
        pos = m.end()
    if text[pos:].strip():
        out.append((pos, len(text)))
    return out or [(0, len(text))]


def units(text: bytes) -> list[tuple[int, int]]:
    """The resampling units: passages, long ones cut at line ends into ~PIECE-byte pieces. They tile the
    text: each unit runs to the next one's start (so every byte, blank lines included, has one unit)."""
    starts = []
    for a, b in passages(text):
        starts.append(a)
        if b - a > PIECE_MAX:
            pos = a
            while b - pos > PIECE_MAX:
                cut = text.find(b"\n", pos + PIECE, b)
                if cut < 0 or b - cut < PIECE // 2:
                    break
                starts.append(cut + 1)
                pos = cut + 1
    starts[0] = 0
    return [(s, e) for s, e in zip(starts, [*starts[1:], len(text)])]


def unit_index(text: bytes) -> tuple[list[int], list[tuple[int, int]]]:
    """(start byte of each unit, the units): what a score needs to attribute token losses."""
    us = units(text)
    return [a for a, _ in us], us


# ---------------------------------------------------------------------------------------------- reading
def utf8_cut(data: bytes, n: int) -> int:
    n = max(0, min(int(n), len(data)))
    while 0 < n < len(data) and (data[n] & 0xC0) == 0x80:  # not inside a UTF-8 character
        n -= 1
    return n


def read_text(path: str | os.PathLike, max_bytes: int | None = None, what: str = "--text") -> Text:
    """A held-out text file as UTF-8 bytes (cut at a character boundary to `max_bytes`); `.jsonl` files
    give one passage per line's `text` field."""
    p = Path(path).expanduser()
    if max_bytes is not None and max_bytes < 1:
        raise InputError(f"--max-bytes {max_bytes}: must be a positive number of bytes")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file; give a text file of held-out text") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path}: is a directory; give the text files in it") from None
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot read ({exc.strerror}); check the permissions") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path}: not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
    spans = _jsonl(data, path, what) if p.suffix == ".jsonl" else None
    if spans is not None:
        data, spans = spans
    if not data.strip():
        raise InputError(f"{what} {path}: is empty; give a file with held-out text")
    if max_bytes is not None and len(data) > max_bytes:
        cut = utf8_cut(data, max_bytes)
        data = data[:cut]
        if spans is not None:
            spans = [(a, min(b, cut)) for a, b in spans if a < cut]
    return Text(data, spans, p)


def _jsonl(data: bytes, path, what: str) -> tuple[bytes, list[tuple[int, int]]]:
    """The `text` fields of a .jsonl file joined by blank lines, and where each one lies."""
    parts, spans, pos = [], [], 0
    for i, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            body = rec["text"]
            if not isinstance(body, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise InputError(
                f"{what} {path}: line {i} is not a JSON object with a string `text` field; one record per line"
            ) from None
        if not body.strip():
            continue
        b = body.encode("utf-8")
        if parts:
            pos += 2
        parts.append(b)
        spans.append((pos, pos + len(b)))
        pos += len(b)
    return b"\n\n".join(parts), spans


def read_texts(paths: Sequence[str | os.PathLike], max_bytes: int | None = None, what: str = "--text") -> dict:
    """{name: Text} for the files (names are the file stems, made unique)."""
    out: dict[str, Text] = {}
    for p in paths:
        name = Path(p).stem or str(p)
        k, i = name, 2
        while k in out:
            k, i = f"{name}-{i}", i + 1
        out[k] = read_text(p, max_bytes, what)
    if not out:
        raise InputError(f"{what}: give at least one text file")
    return out


def load_texts(directory: str | os.PathLike) -> dict[str, Text]:
    """`{domain: Text}` from the `*.txt` files of a directory (e.g. the demo's held-out texts)."""
    return {p.stem: Text(p.read_bytes(), None, p) for p in sorted(Path(directory).glob("*.txt"))}


# ---------------------------------------------------------------------------------------------- splits
def part(text: bytes, start: int, end: int) -> Text:
    """Bytes [start, end) of a text, keeping the passages that lie in it (re-based)."""
    given = getattr(text, "passages", None)
    spans = None
    if given is not None:
        spans = [(max(a, start) - start, min(b, end) - start) for a, b in given if a < end and b > start]
    return Text(bytes(text[start:end]), spans, getattr(text, "path", None))


def split_point(text: bytes, report_fraction: float = REPORT_FRACTION) -> int:
    """Where the report part of a text starts: the passage start nearest to (1 - fraction) of its bytes,
    else the nearest line start, else a character boundary."""
    target = int(len(text) * (1 - report_fraction))
    starts = [a for a, _ in passages(text)][1:]
    if not starts:
        nl = text.rfind(b"\n", 0, target)
        starts = [nl + 1] if nl > 0 else []
    if starts:
        best = min(starts, key=lambda s: abs(s - target))
        if 0.5 * target <= best <= len(text) - 0.5 * (len(text) - target):
            return best
    return utf8_cut(text, target)


def split_texts(
    texts: Mapping[str, bytes], report: Mapping[str, bytes] | None = None, fraction: float = REPORT_FRACTION
) -> tuple[dict[str, Text], dict[str, Text]]:
    """(selection, report): every text cut at `split_point`, or, when `report` texts are given, the texts
    whole for selection and those for reporting."""
    if report:
        return dict(texts), dict(report)
    sel, rep = {}, {}
    for name, t in texts.items():
        cut = split_point(t, fraction)
        if cut <= 0 or cut >= len(t):
            raise InputError(f"text {name}: too short to split into a selection and a report part; give more text")
        sel[name], rep[name] = part(t, 0, cut), part(t, cut, len(t))
    return sel, rep
