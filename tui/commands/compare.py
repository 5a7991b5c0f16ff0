"""Where a merge lost: each MODEL against each PARENT on every text, with paired 95 % intervals, and the
passages (blank-line paragraphs, or .jsonl records) where it lost and gained most.

A merge can score well on the whole text and fail on one kind of passage: the report lists those
passages with a snippet and their loss in bits per byte, and the share of passages that got worse by
more than --threshold. --report writes it as one self-contained HTML page (.html) or Markdown (.md).
"""

from __future__ import annotations

from mergescope.tui.commands import outputs
from mergescope.tui.commands.scoring import add_scoring_arguments, print_scores, scorer_from_args, write_json


def add_arguments(p) -> None:
    p.add_argument("models", metavar="MODEL", nargs="+", help="the merged models (or any models) to examine")
    p.add_argument("--against", nargs="+", required=True, metavar="PARENT", help="what to compare them with")
    add_scoring_arguments(p, required=False, tasks=True)
    p.add_argument(
        "--threshold",
        type=float,
        default=0.1,
        metavar="B",
        help="a passage worse by more than B bits per byte counts as regressed (default 0.1)",
    )
    p.add_argument("--top", type=int, default=5, metavar="N", help="passages listed per pair, each way (default 5)")
    p.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    p.add_argument("--report", metavar="FILE", help="write the report: FILE.html (self-contained) or FILE.md")
    outputs.add_force(p, "an existing --json or --report file")


def run(args) -> int:
    from pathlib import Path

    from rich.console import Console

    from mergescope.io.errors import InputError
    from mergescope.score.compare import compare
    from mergescope.tui.commands.progress_bar import cli_progress
    from mergescope.tui.format import short_names

    if args.eval_cmd:
        raise InputError("--eval-cmd: compare needs per-passage losses, which only the built-in scoring has")
    if args.top < 1:
        raise InputError(f"--top {args.top}: must be at least 1")
    if args.threshold < 0:
        raise InputError(f"--threshold {args.threshold:g}: must be 0 or more bits per byte")
    kind = None
    if args.report:
        kind = {".html": "html", ".htm": "html", ".md": "md"}.get(Path(args.report).suffix.lower())
        if kind is None:
            raise InputError(f"--report {args.report}: name a .html or a .md file")
    from mergescope.io.guard import check_io

    refs = list(dict.fromkeys([*args.models, *args.against]))
    writes = outputs.file_out(args.json, "--json") + outputs.file_out(args.report, "--report")
    check_io([*outputs.models(refs), *outputs.texts(args)], writes, force=args.force)
    scorer = scorer_from_args(args)
    con = Console()
    with cli_progress("score", unit="samples" if scorer.tasks is not None else "tokens") as progress:
        scorer.progress = progress
        table = scorer.models(refs)
    names = dict(zip(refs, short_names(refs, 30)))
    table = {names[k]: v for k, v in table.items()}
    models = [names[m] for m in dict.fromkeys(args.models)]
    parents = [names[p] for p in dict.fromkeys(args.against)]
    pairs = compare(scorer.texts or dict.fromkeys(scorer.text_names), table, models, parents, args.threshold)
    print_scores(con, table)
    print_pairs(con, pairs, args.top)
    if args.json:
        write_json(args.json, {"threshold_bpb": args.threshold, "pairs": [p.to_dict(args.top) for p in pairs]})
    if kind:
        from mergescope.tui.compare_report import render

        outputs.write_markup(args.report, "--report", render(kind, table, pairs, models, parents, args.top))
        con.print(f"report written to {args.report}", highlight=False)
    return 0


def print_pairs(con, pairs, top: int) -> None:
    from rich.table import Table

    what = "bits per byte" if pairs and pairs[0].model_score.is_bits else "score"
    t = Table(header_style="bold", title=f"model − parent, {what} (paired 95 % interval)")
    for c in ("text", "model", "parent", "difference", "verdict", "regressed passages"):
        t.add_column(c, justify="right" if c in ("difference", "regressed passages") else "left")
    style = {"better": "green", "worse": "red"}
    for p in pairs:
        d = p.diff
        diff = f"{d.value:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]" if d else "n/a"
        v = f"[{style.get(p.verdict, 'yellow')}]{p.verdict}[/]"
        t.add_row(p.text, p.model, p.parent, diff, v, f"{len(p.regressed)}/{len(p.passages)} ({p.regressed_share:.0%})")
    con.print(t)
    for p in pairs:
        worst = p.worst(top)
        if not worst:
            continue
        con.print(f"[bold]{p.model}[/bold] vs {p.parent} on [bold]{p.text}[/bold]: lost most", highlight=False)
        for q in worst:
            con.print(
                f"  #{q.index:<4} {q.model_bpb:.3f} vs {q.parent_bpb:.3f} ({q.delta:+.3f}, {q.bytes} bytes)  {q.snippet[:90]}",
                highlight=False,
                markup=False,
            )
