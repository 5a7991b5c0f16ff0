"""Byte sizes as users write them (5GB, 500MB, 2GiB) and as the tool prints them."""

from __future__ import annotations

import re

from mergescope.io.errors import InputError

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}


def parse_size(value: str | int, what: str = "--shard-size") -> int:
    """'5GB' / '500MB' / '2GiB' / '1000000' -> bytes (decimal units like transformers; KiB/MiB/GiB binary)."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
        unit = m.group(2).upper() if m else None
        if not m or unit not in _UNITS:
            raise InputError(f"{what} {value!r}: not a size; write e.g. 5GB, 500MB or 2GiB")
        n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise InputError(f"{what} {value!r}: must be positive; write e.g. 5GB")
    return n


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
