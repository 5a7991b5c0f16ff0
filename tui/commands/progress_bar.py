"""The CLI's progress bar (rich, on stderr): one shape for every long command.

`with cli_progress("merge") as progress:` yields the `progress(done, total, label)` callback the core
takes, or None when stderr is not a terminal or the user asked for quiet (the core then skips it).
Byte counts show as sizes and rates; other units (tokens, candidates) as counts.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def cli_progress(what: str, unit: str = "bytes", quiet: bool = False, console=None):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    err = console or Console(stderr=True)
    if quiet or not err.is_terminal:
        yield None
        return
    sizes = [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn(), TextColumn(unit)]
    with Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        *sizes,
        TimeRemainingColumn(),
        TextColumn("{task.description}", style="dim"),
        console=err,
        transient=True,
    ) as prog:
        task = prog.add_task("", total=None)

        def progress(done: int, total: int, label: str) -> None:
            prog.update(task, completed=done, total=total, description=label[-60:])

        yield progress
