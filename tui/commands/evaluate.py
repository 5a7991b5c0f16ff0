"""Score models on held-out text: bits per byte (lower is better), or a user command's number.

Each MODEL is a checkpoint directory or file, `BASE+ADAPTER`, or a LoRA adapter with a local base.
"""

from __future__ import annotations

from pathlib import Path

from mergescope.tui.commands import outputs
from mergescope.tui.format import short_names


def add_scoring_arguments(p, text_flag: str = "--text", required: bool = True, device: bool = True) -> None:
    """The scoring options shared by eval, soup and sweep (and merge --eval-text, which has --device)."""
    p.add_argument(text_flag, nargs="+", metavar="FILE", required=required, help="held-out text files (UTF-8)")
    p.add_argument("--max-bytes", type=int, metavar="N", help="score only the first N bytes of each text")
    if device:
        p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "builtin", "transformers"),
        help="auto: the built-in Llama forward where it applies, else transformers (the eval extra)",
    )
    p.add_argument("--context", type=int, metavar="N", help="window length in tokens (default: the model's context)")
    p.add_argument("--stride", type=int, metavar="N", help="tokens between window starts (default: the context)")
    p.add_argument(
        "--eval-cmd",
        metavar="'CMD {model}'",
        help="score with a command instead: {model} is the model directory, {text} a text file; the last "
        "line it prints is the score. Run without a shell: the command is split into words as a shell would "
        "(quotes group), then {model}/{text} are put into the words as they are, so no name is ever run as "
        "code; for pipes or redirections call sh -c 'CMD \"$1\"' _ {model}",
    )
    p.add_argument("--higher-is-better", action="store_true", help="with --eval-cmd: the score is an accuracy")
    p.add_argument(
        "--eval-timeout",
        type=float,
        metavar="S",
        help="with --eval-cmd: seconds per run; then the command and every process it started are killed",
    )


def add_arguments(p) -> None:
    p.add_argument("models", metavar="MODEL", nargs="+", help="checkpoints to score")
    add_scoring_arguments(p, required=False)
    p.add_argument("--json", metavar="FILE", help="write the scores as JSON")
    outputs.add_force(p, "an existing --json FILE")


def scorer_from_args(args, text_attr: str = "text", progress=None):
    """The Scorer the options describe (texts read and checked now, before any model is opened)."""
    from mergescope.io.errors import InputError
    from mergescope.score.backends import Scorer
    from mergescope.score.evaluate import read_texts

    flag = f"--{text_attr.replace('_', '-')}"
    check_numbers(args)
    paths = getattr(args, text_attr) or []
    texts = read_texts(paths, args.max_bytes, what=flag) if paths else {}
    if not texts and not args.eval_cmd:
        raise InputError(f"{flag}: give at least one held-out text file (or --eval-cmd)")
    if args.eval_cmd:
        from mergescope.score.command import check_command

        check_command(args.eval_cmd, bool(texts))
    return Scorer(
        texts,
        dict(zip(texts, [Path(p) for p in paths])),
        backend=args.backend,
        device=args.device,
        context=args.context,
        stride=args.stride,
        command=args.eval_cmd,
        higher_is_better=args.higher_is_better,
        timeout=args.eval_timeout,
        seed=getattr(args, "seed", None),
        progress=progress,
    )


def check_numbers(args) -> None:
    """The scoring options' numbers, before any file is read (a window needs a token to predict)."""
    from mergescope.io.errors import InputError

    for flag, attr, low in (("--max-bytes", "max_bytes", 1), ("--context", "context", 2), ("--stride", "stride", 1)):
        v = getattr(args, attr, None)
        if v is not None and v < low:
            what = {"max_bytes": "bytes of each text", "context": "tokens per window", "stride": "tokens"}[attr]
            raise InputError(f"{flag} {v}: must be at least {low} ({what}); give a larger number or leave it out")
    t = getattr(args, "eval_timeout", None)
    if t is not None and not t > 0:
        raise InputError(f"--eval-timeout {t:g}: must be a positive number of seconds")


def run(args) -> int:
    from rich.console import Console

    from mergescope.io.guard import check_io
    from mergescope.tui.commands.progress_bar import cli_progress

    check_numbers(args)
    reads = [*outputs.models(args.models), *outputs.texts(args)]
    check_io(reads, outputs.file_out(args.json, "--json"), force=args.force)
    scorer = scorer_from_args(args)
    con = Console()
    with cli_progress("score", unit="tokens" if not args.eval_cmd else "runs") as progress:
        scorer.progress = progress
        table = scorer.models(list(args.models))
    print_scores(con, table)
    if args.json:
        write_json(args.json, table, scorer.text_paths)
    return 0


def print_scores(con, table: dict, title: str | None = None, mark: dict | None = None) -> None:
    """Models × texts, best per text in bold, the mean last; `mark` adds a note per model row."""
    from rich.table import Table

    from mergescope.score.backends import mean

    first = next(iter(table.values()))
    some = next(iter(first.values()))
    tok = any(s.token_perplexity is not None for row in table.values() for s in row.values())
    what = "bits per byte" if some.nll_nats is not None else "score"
    how = "higher is better" if some.higher_is_better else "lower is better"
    con.print(title or f"[bold]{what}[/bold] ({how}{'; token perplexity in brackets' if tok else ''}); best in bold")
    t = Table(header_style="bold")
    short = short_names(list(table), 40)
    t.add_column("model")
    cols = list(first)
    for c in cols:
        t.add_column(c, justify="right")
    if len(cols) > 1:
        t.add_column("mean", justify="right")
    best = {}
    for c in cols:
        best[c] = (
            max(row[c].value for row in table.values())
            if some.higher_is_better
            else min(row[c].value for row in table.values())
        )
    for (label, row), name in zip(table.items(), short):
        cells = []
        for c in cols:
            s = row[c]
            txt = f"{s.value:.4f}" + (f" ({s.token_perplexity:.2f})" if s.token_perplexity is not None else "")
            cells.append(f"[bold]{txt}[/bold]" if s.value == best[c] else txt)
        if len(cols) > 1:
            cells.append(f"{mean(row):.4f}")
        t.add_row(name + (f" [dim]{mark[label]}[/dim]" if mark and label in mark else ""), *cells)
    con.print(t)


def scores_json(table: dict, names: dict | None = None) -> dict:
    from mergescope.score.backends import mean

    some = next(iter(next(iter(table.values())).values()))
    return {
        "metric": "bits_per_byte" if some.nll_nats is not None else "score",
        "higher_is_better": some.higher_is_better,
        "texts": {k: str(v) for k, v in (names or {}).items()},
        "scores": [{"model": m, "text": t, **s.to_dict()} for m, row in table.items() for t, s in row.items()],
        "mean": {m: mean(row) for m, row in table.items()},
    }


def write_json(path: str, table: dict, names: dict | None = None) -> None:
    outputs.write_json(path, "--json", scores_json(table, names), indent=1)
