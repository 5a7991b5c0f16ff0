"""File-system completion for path inputs (→ or End accepts the suggestion)."""

from __future__ import annotations

import os

from textual.suggester import Suggester


class PathSuggester(Suggester):
    """Suggests the first directory entry that extends what was typed; directories get a '/'."""

    def __init__(self, dirs_only: bool = False) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.dirs_only = dirs_only

    async def get_suggestion(self, value: str) -> str | None:
        return complete_path(value, self.dirs_only)


def complete_path(value: str, dirs_only: bool = False) -> str | None:
    if not value:
        return None
    expanded = os.path.expanduser(value)
    head, tail = os.path.split(expanded)
    if not tail:  # "dir/": the directory itself is usually the answer (a model directory)
        return None
    try:
        entries = sorted(os.listdir(head or "."))
    except OSError:
        return None
    for name in entries:
        if name.startswith(tail) and (tail or not name.startswith(".")):
            full = os.path.join(head, name)
            is_dir = os.path.isdir(full)
            if dirs_only and not is_dir:
                continue
            if name == tail and not is_dir:
                continue
            completed = value[: len(value) - len(tail)] + name + ("/" if is_dir else "")
            if completed != value:
                return completed
    return None
