"""What `fit` and `sensitivity` share: their options, the checks before any tensor is read (paths, memory)
and the problem they build (the plan's table, its merge as a function of the table, the texts)."""

from __future__ import annotations

from mergescope.tui.commands import outputs


def add_arguments(p, *, report: bool) -> None:
    p.add_argument("plan", metavar="PLAN.yml", help="the plan: method, base, models; its table is the start")
    p.add_argument("--eval-text", nargs="+", required=True, metavar="FILE", help="held-out text files (UTF-8)")
    if report:
        p.add_argument(
            "--report-text",
            nargs="+",
            metavar="FILE",
            help="report the final numbers on these texts (default: the last quarter of each --eval-text, which "
            "the fit then does not use)",
        )
    p.add_argument("--max-bytes", type=int, metavar="N", help="use only the first N bytes of each text")
    p.add_argument(
        "--granularity",
        default="layer",
        choices=("layer", "band", "group", "model"),
        help="one value per model × layer × group (layer, default), per 3 bands of layers (band), per group "
        "(group), or one weight per model (model)",
    )
    p.add_argument(
        "--range", action="append", metavar="weight=LO:HI", help="the values a weight may take (default 0:1.5)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, help="seed for randomised methods' masks (dare, della)")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON")


def start(args, con, writes: list, report: bool):
    """Check every path and the memory, then build (problem_for, space, form, selection, report texts,
    split label). Nothing is read before the checks pass."""
    from mergescope.io.device import resolve_device
    from mergescope.io.errors import InputError
    from mergescope.io.guard import check_io
    from mergescope.io.units import fmt_bytes
    from mergescope.merge.plan import Plan
    from mergescope.merge.run import plan_reads
    from mergescope.score.texts import REPORT_FRACTION, read_texts, split_texts
    from mergescope.search.fit import Problem, available_bytes, memory_needed, prepare
    from mergescope.search.tune_space import parse_ranges
    from mergescope.tui.commands.progress_bar import cli_progress

    plan = Plan.load(args.plan)
    plan.validate(check_paths=True)
    reads = [*plan_reads(plan), *outputs.texts(args, "eval_text"), *outputs.texts(args, "report_text")]
    check_io(reads, writes, force=getattr(args, "force", False))
    if args.max_bytes is not None and args.max_bytes < 1:
        raise InputError(f"--max-bytes {args.max_bytes}: must be at least 1 (bytes of each text)")
    device = resolve_device(args.device)
    ranges = parse_ranges(args.range)
    unknown = [p for p in ranges if p != "weight"]
    if unknown:
        raise InputError(f"--range {unknown[0]}=…: fit learns weights; give --range weight=LO:HI")
    texts = read_texts(args.eval_text, args.max_bytes, what="--eval-text")
    given = getattr(args, "report_text", None)
    rep_texts = read_texts(given, args.max_bytes, what="--report-text") if given else None
    sel, rep = split_texts(texts, rep_texts) if report else (split_texts(texts)[0], None)
    weights, acts = memory_needed(plan)
    free = available_bytes(device)
    con.print(
        f"holds {fmt_bytes(weights)} of weights (the base and each model's task vector, float32) and about "
        f"{fmt_bytes(acts)} for a step (one batch's activations, the merged model and its gradient) on {device}"
        + (f"; {fmt_bytes(free)} available" if free is not None else ""),
        highlight=False,
    )
    if free is not None and weights + acts > free:
        raise InputError(
            f"{args.plan}: needs about {fmt_bytes(weights + acts)} on {device}, {fmt_bytes(free)} available; "
            "use a machine with more memory, --device cuda, or fewer models"
        )
    with cli_progress("read", unit="tensors") as progress:
        space, form = prepare(
            plan, granularity=args.granularity, ranges=ranges, device=device, seed=args.seed, progress=progress
        )

    def problem_for(txts):
        return Problem(plan, space, form, txts, granularity=args.granularity, device=device)

    split = split_label_of(given, REPORT_FRACTION) if report else "selection (first 75% of each text)"
    return plan, problem_for, space, sel, rep, split


def split_label_of(given, fraction: float) -> str:
    return "report (--report-text)" if given else f"report (last {fraction:.0%} of each text, not used to fit)"


def cell_label(name: str, models: list[str]) -> tuple[str, str]:
    """('code', 'attn L0') from a cell name like weight.attn.L0.m0 (weight.m0: every cell of a model)."""
    parts = name.split(".")
    model = models[int(parts[-1][1:])]
    where = " ".join(parts[1:-1]) or "every cell"
    if where == "norm":
        where = "final norm"
    return model, where
