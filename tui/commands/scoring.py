"""The CLI's scoring options and tables, shared by eval, soup, sweep, tune and merge --eval-text: the
options that make a Scorer, the selection / report split of the searches, and how scores, intervals and
a search's outcome are printed and written as JSON."""

from __future__ import annotations

from pathlib import Path

from mergescope.tui.format import short_names


def add_scoring_arguments(
    p, text_flag: str = "--text", required: bool = True, device: bool = True, tasks: bool = False
) -> None:
    """The scoring options shared by eval, soup, sweep and tune (and merge --eval-text, which has --device);
    `tasks` adds --task and its options (lm-evaluation-harness)."""
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
    if tasks:
        p.add_argument(
            "--task",
            nargs="+",
            metavar="NAME|TASK.yaml",
            help="score with lm-evaluation-harness tasks instead of text (the lm-eval extra), e.g. hellaswag",
        )
        p.add_argument("--task-metric", metavar="NAME", help="with --task: the metric (default: each task's first)")
        p.add_argument("--num-fewshot", type=int, metavar="N", help="with --task: examples in the prompt")
        p.add_argument("--task-limit", type=int, metavar="N", help="with --task: at most N samples per task")


def add_split_arguments(p) -> None:
    """Searches choose on one part of the texts and report on another."""
    p.add_argument(
        "--report-text",
        nargs="+",
        metavar="FILE",
        help="report the final numbers on these texts (default: the last quarter of each --eval-text, which "
        "the search then does not use to choose)",
    )


def scorer_from_args(args, text_attr: str = "text", progress=None):
    """The Scorer the options describe (texts read and checked now, before any model is opened)."""
    from mergescope.io.errors import InputError
    from mergescope.score.candidate import Scorer
    from mergescope.score.texts import read_texts

    flag = f"--{text_attr.replace('_', '-')}"
    check_numbers(args)
    paths = getattr(args, text_attr) or []
    task_specs = getattr(args, "task", None)
    if task_specs and (paths or args.eval_cmd):
        raise InputError(f"--task: scores tasks, not {flag if paths else '--eval-cmd'}; give one way of scoring")
    texts = read_texts(paths, args.max_bytes, what=flag) if paths else {}
    if not texts and not args.eval_cmd and not task_specs:
        raise InputError(f"{flag}: give at least one held-out text file (or --eval-cmd, or --task)")
    if args.eval_cmd:
        from mergescope.score.command import check_command

        check_command(args.eval_cmd, bool(texts))
    tasks = None
    if task_specs:
        from mergescope.score.tasks import load_tasks

        tasks = load_tasks(task_specs, args.task_metric, args.num_fewshot, args.task_limit)
    return Scorer(
        texts,
        dict(zip(texts, [Path(p) for p in paths])),
        backend=args.backend,
        device=args.device,
        context=args.context,
        stride=args.stride,
        command=args.eval_cmd,
        higher_is_better=tasks.higher_is_better if tasks else args.higher_is_better,
        timeout=args.eval_timeout,
        seed=getattr(args, "seed", None),
        progress=progress,
        tasks=tasks,
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


def split_from_args(args, scorer):
    """(selection scorer, report scorer, the report split's label) of a search."""
    from mergescope.score.texts import REPORT_FRACTION, read_texts
    from mergescope.search.outcome import split_label

    report = read_texts(args.report_text, args.max_bytes, what="--report-text") if args.report_text else None
    sel, rep = scorer.split(report)
    return sel, rep, split_label(scorer, bool(report), REPORT_FRACTION)


def cell(s, digits: int = 4) -> str:
    """A score with the half-width of its 95 % interval: 2.2406 ± 0.0120."""
    from mergescope.score.stats import interval

    iv = interval(s)
    return f"{s.value:.{digits}f}" + (f" ± {iv.half:.{digits}f}" if iv is not None else "")


def print_scores(con, table: dict, title: str | None = None, mark: dict | None = None, objective=None) -> None:
    """Models × texts with 95 % intervals, best per text in bold, the objective (mean) last; `mark` adds a
    note per model row."""
    from rich.table import Table

    from mergescope.score.candidate import MEAN
    from mergescope.score.stats import reduced

    objective = objective or MEAN
    first = next(iter(table.values()))
    some = next(iter(first.values()))
    tok = any(s.token_perplexity is not None for row in table.values() for s in row.values())
    what = "bits per byte" if some.is_bits else "score"
    how = "higher is better" if some.higher_is_better else "lower is better"
    con.print(
        title
        or f"[bold]{what}[/bold] ({how}; ± half of the 95 % interval{'; token perplexity in brackets' if tok else ''}); best in bold"
    )
    t = Table(header_style="bold")
    short = short_names(list(table), 40)
    t.add_column("model")
    cols = list(first)
    for c in cols:
        t.add_column(c, justify="right")
    if len(cols) > 1:
        t.add_column(objective.describe(), justify="right")
    pick = max if some.higher_is_better else min
    best = {c: pick(row[c].value for row in table.values()) for c in cols}
    for (label, row), name in zip(table.items(), short):
        cells = []
        for c in cols:
            s = row[c]
            txt = cell(s) + (f" ({s.token_perplexity:.2f})" if s.token_perplexity is not None else "")
            cells.append(f"[bold]{txt}[/bold]" if s.value == best[c] else txt)
        if len(cols) > 1:
            iv = reduced(row, objective.reducer(row))
            cells.append(iv.pm() if iv is not None else f"{objective.value(row):.4f}")
        t.add_row(name + (f" [dim]{mark[label]}[/dim]" if mark and label in mark else ""), *cells)
    con.print(t)


def print_windows(con, table: dict, given: bool = False) -> None:
    """The windows each model was scored in (one line per model), saying what chose their length: the
    model's context, --context (`given`), or the memory budget."""
    from mergescope.tui.format import short_names

    for row, name in zip(table.values(), short_names(list(table), 40)):
        used = sorted({(s.window, s.stride, s.context) for s in row.values() if s.window is not None})
        for window, stride, context in used:
            why = "the model's context"
            if given and context and window < context:
                why = f"--context; the model's context is {context}"
            elif context and window < context:
                why = (
                    f"the model's context is {context}; longer windows would not fit the activation budget (--context)"
                )
            con.print(f"[dim]{name}: windows of {window} tokens every {stride} ({why})[/dim]", highlight=False)


def print_outcome(con, out, names: dict | None = None) -> None:
    """A search's report-split table and its verdict."""
    names = names or {}
    print_scores(
        con,
        {names.get(k, k): row for k, row in out.rows.items()},
        title=f"[bold]{out.split}[/bold] ({out.objective.describe()} over texts; ± half of the 95 % interval)",
        objective=out.objective,
    )
    style = {"better": "green", "worse": "red"}.get(out.verdict, "yellow")
    con.print(f"[{style}]{out.summary()}[/{style}]", highlight=False)


def scores_json(table: dict, names: dict | None = None, units: bool = False) -> dict:
    from mergescope.score.candidate import MEAN
    from mergescope.score.stats import reduced

    some = next(iter(next(iter(table.values())).values()))

    def mean_of(row):
        iv = reduced(row, MEAN.reducer(row))
        return {"value": MEAN.value(row), **({"interval95": [iv.lo, iv.hi]} if iv else {})}

    return {
        "metric": "bits_per_byte" if some.is_bits else "score",
        "higher_is_better": some.higher_is_better,
        "texts": {k: str(v) for k, v in (names or {}).items()},
        "scores": [
            {"model": m, "text": t, **s.to_dict(units=units)} for m, row in table.items() for t, s in row.items()
        ],
        "mean": {m: MEAN.value(row) for m, row in table.items()},
        "mean_interval95": {m: mean_of(row).get("interval95") for m, row in table.items()},
    }


def write_json(path: str, data: dict, flag: str = "--json") -> None:
    """Stamped (a rerun may replace it) and written atomically (tui/commands/outputs.py)."""
    from mergescope.tui.commands import outputs

    outputs.write_json(path, flag, data, indent=1)
