"""Analysis results cached on disk, keyed by file identity, so re-opening unchanged models is instant.

The key covers every weight and metadata file's resolved path, inode, size and mtime (nanoseconds), the
options that change the numbers, and the tool version; any change re-runs the analysis. It does not
cover how the models were named: the same files typed as a relative path, an absolute one or through a
symlink share one entry, and the caller shows a hit under the labels it has now.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from mergescope._version import __version__
from mergescope.io.checkpoint.files import METADATA_FILES

CACHE_FORMAT = 5  # entries are {key, format, data}; 5: experts are modules of their own, the router a group


def user_cache_root() -> Path:
    """$XDG_CACHE_HOME/mergescope (~/.cache/mergescope)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "mergescope"


def cache_dir() -> Path:
    env = os.environ.get("MERGESCOPE_CACHE_DIR")
    return Path(env) if env else user_cache_root() / "analysis"


def _file_ids(ck) -> list:
    files = list(ck.weight_files)
    root = getattr(ck, "root", None)
    if root is not None:
        for extra in METADATA_FILES:
            if (Path(root) / extra).is_file():
                files.append(Path(root) / extra)
    ids = []
    for f in files:
        st = Path(f).stat()
        ids.append([str(Path(f).resolve()), st.st_ino, st.st_size, st.st_mtime_ns])
    return ids


def cache_key(base, models, **options) -> str:
    ident = {
        "format": CACHE_FORMAT,
        "version": __version__,
        "files": [_file_ids(base)] + [_file_ids(m) for m in models],
        "options": options,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def load(key: str) -> dict | None:
    """The entry stored under `key`, or None when there is none or it is not one we wrote for this key
    (truncated, corrupt, another format): the caller then recomputes and overwrites it."""
    path = cache_dir() / f"{key}.json"
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != key or entry.get("format") != CACHE_FORMAT:
        return None
    data = entry.get("data")
    return data if isinstance(data, dict) else None


def store(key: str, data: dict) -> None:
    """Atomic write; a cache that cannot be written is silently skipped (it is only a cache)."""
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump({"key": key, "format": CACHE_FORMAT, "data": data}, fh)
        os.replace(tmp, d / f"{key}.json")
    except OSError:
        pass
