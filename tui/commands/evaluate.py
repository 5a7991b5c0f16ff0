"""Score models on held-out text: bits per byte (lower is better) with 95 % intervals, or a user
command's number.

Each MODEL is a checkpoint directory or file, `BASE+ADAPTER`, or a LoRA adapter with a local base.
Intervals come from a seeded bootstrap over the text's passages (blank-line paragraphs, or the lines
of a .jsonl file); `--json` writes them and, per passage, the bits and bytes they come from.
"""

from __future__ import annotations

from mergescope.tui.commands.scoring import (
    add_scoring_arguments,
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


def run(args) -> int:
    from rich.console import Console

    from mergescope.tui.commands.progress_bar import cli_progress

    scorer = scorer_from_args(args)
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
