"""Merge models as a plan (a mergekit 0.1.x YAML config) says, into OUTPUT_DIR.

Streams tensor by tensor (memory: a few tensors plus one output shard) and writes atomically: on any
error or Ctrl-C nothing is left behind. Exit 0 on success, 2 on bad input (one line on stderr),
1 when a merge method fails, 130 when interrupted.
"""

from __future__ import annotations

import sys

from mergescope.tui.commands.models import fetch_plan_models
from mergescope.tui.commands.scoring import add_scoring_arguments


def add_arguments(p) -> None:
    p.add_argument("config", metavar="CONFIG.yaml", help="merge plan (mergekit config schema)")
    p.add_argument("output", metavar="OUTPUT_DIR", help="directory to create (must not exist or be empty)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=None, help="seed for randomized methods (dare_*, della*)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an OUTPUT_DIR that mergescope wrote (only once the merge is complete); a folder "
        "mergescope did not write is never replaced",
    )
    p.add_argument(
        "--shard-size",
        default="5GB",
        metavar="SIZE",
        help="maximum size of one output shard, e.g. 5GB, 500MB (default 5GB)",
    )
    p.add_argument(
        "--hash-inputs",
        action="store_true",
        help="record sha256 of every input weight file in the model card (default: only when inputs total <= 2 GB)",
    )
    p.add_argument(
        "--analyze",
        action="store_true",
        help="analyse the inputs first (when no cached analysis exists) so the model card records the "
        "merge-readiness findings; without it a cached `mergescope analyze` of the same paths is used if any",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument(
        "--allow-non-finite", action="store_true", help="merge even when an input holds NaN/Inf values (they spread)"
    )
    p.add_argument(
        "--force-incompatible",
        action="store_true",
        help="merge even when the readiness checks say the inputs do not share a base (the output is likely garbage)",
    )
    add_scoring_arguments(p, text_flag="--eval-text", required=False, device=False)


def run(args) -> int:
    from rich.console import Console

    from mergescope.io.guard import Write, check_io
    from mergescope.io.units import fmt_bytes, parse_size
    from mergescope.merge.plan import Plan
    from mergescope.merge.run import MergeError, plan_reads, run_merge
    from mergescope.tui.commands import outputs
    from mergescope.tui.commands.progress_bar import cli_progress
    from mergescope.tui.commands.scoring import scorer_from_args

    err = Console(stderr=True)
    out = Console()
    shard_size = parse_size(args.shard_size)
    plan = Plan.load(args.config)
    fetch_plan_models(plan)
    plan.validate(check_paths=True)
    reads = [*plan_reads(plan), *outputs.texts(args, "eval_text")]
    check_io(reads, [Write(args.output, "", folder=True)], force=args.force)
    scorer = scorer_from_args(args, "eval_text") if args.eval_text or args.eval_cmd else None  # texts read now
    from mergescope.stats.readiness import analysis_for_plan

    report = analysis_for_plan(plan, compute=args.analyze, device=args.device)
    if report is not None and report.findings and not args.quiet:
        worst = report.findings[0]
        err.print(
            f"[dim]merge-readiness: {len(report.findings)} finding(s), worst: {worst.severity} {worst.code}"
            f"{' (' + worst.model + ')' if worst.model else ''} — recorded in the model card[/dim]",
            highlight=False,
        )
    kwargs = dict(
        device=args.device,
        seed=args.seed,
        force=args.force,
        shard_size=shard_size,
        hash_inputs=True if args.hash_inputs else None,
        analysis=report,
        allow_non_finite=args.allow_non_finite,
        force_incompatible=args.force_incompatible,
    )
    try:
        with cli_progress("merge", quiet=args.quiet, console=err) as progress:
            res = run_merge(plan, args.output, progress=progress, **kwargs)
    except MergeError as exc:
        print(f"mergescope merge: error: {exc}", file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return 1
    size = fmt_bytes(res.total_bytes)
    shards = f"{len(res.shards)} shard{'s' if len(res.shards) != 1 else ''}"
    out.print(
        f"[bold]merged[/bold] {res.n_tensors} tensors ({size}, {', '.join(res.out_dtypes) or '-'}) "
        f"with {plan.merge_method} into [bold]{res.output_dir}[/bold]: {shards}, {res.seconds:.1f}s on {res.device}",
        highlight=False,
    )
    if report is None:  # with a cached analysis its findings were summarised above
        for f in res.findings:
            err.print(f"[yellow]{f.severity}[/yellow] {f.code} {f.model or ''}: {f.message}", highlight=False)
    if scorer is not None:
        _score_after(args, plan, res, out, scorer)
    if not args.quiet:
        out.print(next_step(args, plan, res.output_dir), highlight=False, soft_wrap=True)
    return 0


def next_step(args, plan, output_dir) -> str:
    """The command to run next: score the merge beside its inputs, or (scored already) see where it lost."""
    import shlex

    from mergescope.merge.plan.refs import on_disk

    refs = [r for r in plan.input_models() if plan.ref_paths(r)[1] is None] or plan.input_models()
    inputs = [str(on_disk(plan, r) or r) for r in refs]  # paths as the shell sees them; repo ids as given
    if args.eval_text and not args.eval_cmd:
        cmd = ["mergescope", "compare", str(output_dir), "--against", *inputs, "--text", *args.eval_text]
        return f"next: {shlex.join(cmd)}   (the passages where the merge lost against its inputs)"
    cmd = ["mergescope", "eval", str(output_dir), *inputs, "--text", "HELDOUT.txt"]
    return f"next: {shlex.join(cmd)}   (score it beside its inputs on held-out text of each task)"


def _score_after(args, plan, res, out, scorer) -> None:
    """Score the written model and its inputs; print the table and add it to the model card."""
    from mergescope.merge.output import append_to_card
    from mergescope.tui.commands.progress_bar import cli_progress
    from mergescope.tui.commands.scoring import cell, print_scores

    inputs = [str(plan.model_path(r)) for r in plan.referenced_models() if plan.ref_paths(r)[1] is None]
    with cli_progress("score", unit="tokens", quiet=args.quiet) as progress:
        scorer.progress = progress
        table = scorer.models([str(res.output_dir), *inputs])
    label = {str(res.output_dir): f"{res.output_dir.name} (this merge)"}
    label.update({str(plan.model_path(r)): r for r in plan.referenced_models()})
    table = {label.get(k, k): v for k, v in table.items()}
    print_scores(out, table)
    cols = list(next(iter(table.values())))
    rows = ["## Held-out scores", "", "| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    rows += [f"| `{m}` | " + " | ".join(cell(row[c]) for c in cols) + " |" for m, row in table.items()]
    metric = (
        "bits per byte, lower is better; ± half of the 95 % interval over the text's passages"
        if next(iter(table[next(iter(table))].values())).is_bits
        else ("the --eval-cmd score")
    )
    rows += ["", f"Scored by mergescope after the merge ({metric})."]
    append_to_card(res.output_dir, "\n".join(rows))
