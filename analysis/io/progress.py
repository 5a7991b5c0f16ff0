"""One progress callback and one cancellation for every long operation: the analysis pass, the
spectral pass, merges, scoring and the searches. The CLI plugs a progress bar into `Progress`, the app a
progress message; `should_stop()` is polled between units of work and `Cancelled` unwinds, leaving
nothing half-written."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int, str], None]  # (done, total, what is being done)
ShouldStop = Callable[[], bool]


class Cancelled(Exception):
    """`should_stop()` turned true; the operation stopped and kept nothing half-done."""


def check(should_stop: ShouldStop | None, message: str = "") -> None:
    """Raise Cancelled when the caller asked to stop."""
    if should_stop is not None and should_stop():
        raise Cancelled(message) if message else Cancelled()
