"""Recently opened model sets, remembered in the user's config directory.

`MERGESCOPE_CONFIG_DIR` overrides the location (tests point it at a temporary directory); otherwise
`$XDG_CONFIG_HOME/mergescope` or `~/.config/mergescope`. A file that cannot be read or written is
ignored: remembering is a convenience, never an error.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

MAX_RECENT = 12


def config_dir() -> Path:
    env = os.environ.get("MERGESCOPE_CONFIG_DIR")
    if env:
        return Path(env)
    root = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(root) / "mergescope"


@dataclass
class ModelSet:
    base: str
    models: list[str]
    plan: str | None = None
    extra: dict = field(default_factory=dict)

    def describe(self) -> str:
        from mergescope.io.labels import short_labels

        base, *models = short_labels([self.base, *self.models])
        return f"{base} + {', '.join(models)}"

    def where(self) -> str:
        """The base's directory, to tell apart sets with the same names."""
        return str(Path(self.base.rstrip("/")).parent)

    def absolute(self) -> ModelSet:
        def ab(p: str | None) -> str | None:
            return os.path.abspath(os.path.expanduser(p)) if p else p

        return ModelSet(ab(self.base), [ab(m) for m in self.models], ab(self.plan))


def load_recent() -> list[ModelSet]:
    try:
        data = json.loads((config_dir() / "recent.json").read_text())
        return [ModelSet(d["base"], list(d["models"]), d.get("plan")) for d in data.get("recent", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def remember(entry: ModelSet) -> None:
    """Put `entry` (made absolute: it is reopened from anywhere) first; drop older copies of it."""
    entry = entry.absolute()
    items = [e for e in load_recent() if (e.base, e.models) != (entry.base, entry.models)]
    items.insert(0, entry)
    d = config_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".recent-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump({"recent": [asdict(e) for e in items[:MAX_RECENT]]}, fh, indent=1)
        os.replace(tmp, d / "recent.json")
    except OSError:
        pass
