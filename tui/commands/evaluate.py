"""Score models on held-out text: bits per byte (lower is better) with 95 % intervals, or a user
command's number.

Each MODEL is a checkpoint directory or file, a Hugging Face repo id[@revision], `BASE+ADAPTER`, or a
LoRA adapter whose base is local or in the Hugging Face cache.
Intervals come from a seeded bootstrap over the text's passages (blank-line paragraphs, or the lines
of a .jsonl file); `--json` writes them and, per passage, the bits and bytes they come from.
"""

from __future__ import annotations

from mergescope.tui.commands import outputs
from mergescope.tui.commands.models import fetch_models
from mergescope.tui.commands.scoring import (
    add_scoring_arguments,
    check_numbers,
    print_scores,
    print_windows,
    scorer_from_args,
    scores_json,
    write_json,
)


def add_arguments(p) -> None:
    p.add_argument("models", metavar="MODEL", nargs="+", help="checkpoints to score")
    add_scoring_arguments(p, required=False, tasks=True)
    p.add_argument("--json", metavar="FILE", help="write the scores, their intervals and per-passage numbers as JSON")
    outputs.add_force(p, "an existing --json FILE")


def run(args) -> int:
    from rich.console import Console

    from mergescope.io.guard import check_io
    from mergescope.tui.commands.progress_bar import cli_progress

    check_numbers(args)
    reads = [*outputs.models(args.models), *outputs.texts(args)]
    check_io(reads, outputs.file_out(args.json, "--json"), force=args.force)
    scorer = scorer_from_args(args)
    fetch_models(list(args.models))
    con = Console()
    unit = "runs" if args.eval_cmd else "samples" if scorer.tasks is not None else "tokens"
    with cli_progress("score", unit=unit) as progress:
        scorer.progress = progress
        table = scorer.models(list(args.models))
    print_scores(con, table)
    print_windows(con, table, bool(args.context))
    if scorer.tasks is not None:
        con.print(f"[dim]{scorer.tasks.summary()}[/dim]", highlight=False)
    if args.json:
        write_json(args.json, scores_json(table, scorer.text_paths, units=True))
    return 0
