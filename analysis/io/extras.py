"""The command that installs an optional extra, as it works for this installation.

PyPI's `mergescope` is another project, so installing an extra by the project's name would install
the wrong thing. Run from a clone (an editable install), the hint names the clone; installed otherwise, it lists
the extra's own requirements, which install the same packages from anywhere.
"""

from __future__ import annotations

import shlex
from importlib import metadata
from pathlib import Path

DIST = "mergescope"


def install_hint(extra: str) -> str:
    """`pip install -e '/path/to/clone[extra]'` when this code runs from a clone, else
    `pip install 'req>=x' ...` (the extra's requirements, from the installed metadata)."""
    clone = source_clone()
    if clone is not None:
        return f"pip install -e {shlex.quote(f'{clone}[{extra}]')}"
    try:
        requires = metadata.distribution(DIST).requires or []
    except metadata.PackageNotFoundError:
        requires = []
    reqs = [r.split(";", 1)[0].strip() for r in requires if _for_extra(r, extra)]
    if not reqs:
        return f"pip install -e '.[{extra}]' (in the mergescope clone)"
    return "pip install " + " ".join(shlex.quote(r.replace(" ", "")) for r in reqs)


def source_clone() -> Path | None:
    """The checkout this package runs from (an editable install or the source tree), if it does."""
    root = Path(__file__).resolve().parents[2]  # analysis/io/extras.py -> the checkout
    if (root / "pyproject.toml").is_file() and (root / "analysis").is_dir() and (root / "tui").is_dir():
        return root
    return None


def _for_extra(requirement: str, extra: str) -> bool:
    _, _, marker = requirement.partition(";")
    marker = marker.replace('"', "'").replace(" ", "")
    return f"extra=='{extra}'" in marker
