"""Score a plan at each value of one parameter (weight, density, t, lambda, epsilon, ...), in memory:
a table (value × text, best per text marked), a plot in the terminal, and the best plan if asked.
"""

from __future__ import annotations

from pathlib import Path

from mergescope.tui.commands import outputs
from mergescope.tui.commands.models import fetch_plan_models
from mergescope.tui.commands.scoring import (
    add_scoring_arguments,
    add_split_arguments,
    print_outcome,
    scorer_from_args,
    split_from_args,
    write_json,
)


def add_arguments(p) -> None:
    p.add_argument("plan", metavar="PLAN.yml", help="the plan to vary (mergekit YAML)")
    p.add_argument("--param", required=True, metavar="NAME", help="the parameter to sweep, e.g. weight")
    p.add_argument("--model", metavar="M", help="set a per-model parameter for this model only (default: every model)")
    p.add_argument(
        "--values", required=True, metavar="SPEC", help="start:stop:step (e.g. 0.2:1.0:0.1) or a list (0.2,0.5,1)"
    )
    add_scoring_arguments(p, text_flag="--eval-text", required=False, tasks=True)
    add_split_arguments(p)
    p.add_argument("--objective", default="mean", metavar="SPEC", help="mean (default), max or weights:TEXT=W,...")
    p.add_argument("--seed", type=int, help="seed for randomised methods (dare, della)")
    p.add_argument("--json", metavar="FILE", help="write the points and the best values as JSON")
    p.add_argument(
        "--write-best", metavar="OUT.yml", help="write the plan at the best value (chosen on the selection split)"
    )
    p.add_argument("--no-plot", action="store_true", help="the table only")
    outputs.add_force(p, "an existing --json or --write-best file (--write-best PLAN.yml keeps PLAN.yml.bak)")


def run(args) -> int:
    from rich.console import Console

    from mergescope.io.guard import check_io, same_file
    from mergescope.merge.plan import Plan
    from mergescope.merge.run import plan_reads
    from mergescope.score.candidate import Objective
    from mergescope.search.outcome import outcome
    from mergescope.search.sweep import parse_values, sweep, with_value
    from mergescope.tui.commands.progress_bar import cli_progress
    from mergescope.tui.plots import draw_sweep, text_figure

    con = Console()
    plan = Plan.load(args.plan)
    fetch_plan_models(plan)
    plan.validate(check_paths=True)
    writes = outputs.file_out(args.json, "--json") + outputs.file_out(args.write_best, "--write-best", plan=True)
    reads = [*plan_reads(plan), *outputs.texts(args, "eval_text"), *outputs.texts(args, "report_text")]
    check_io(reads, writes, force=args.force)
    values = parse_values(args.values)
    objective = Objective.parse(args.objective)
    scorer = scorer_from_args(args, "eval_text")
    objective.check(scorer.text_names)
    sel, rep, split = split_from_args(args, scorer)
    con.print(f"choosing on the selection split; final numbers on the {split}", highlight=False)

    def show(value, row):
        con.print(f"  {args.param} = {value:g}: " + ", ".join(f"{t} {s.value:.4f}" for t, s in row.items()))

    with cli_progress("sweep", unit="steps") as progress:
        sel.progress = rep.progress = progress
        result = sweep(plan, args.param, values, sel.plan, model=args.model, log=show, objective=objective)
        best_value = result.values[result.best()]
        best = with_value(plan, args.param, best_value, args.model)
        chosen = f"{args.param} = {best_value:g}"
        out = outcome({chosen: best, "the plan as given": plan}, chosen, "the plan as given", rep, objective, split)
    print_sweep(con, result)
    if not args.no_plot:
        con.print(
            text_figure(lambda plt: draw_sweep(plt, result), min(con.width, 100), 8 * min(4, len(result.texts))),
            highlight=False,
            markup=False,
        )
    print_outcome(con, out)
    if args.json:
        write_json(args.json, {**result.to_dict(), "report": out.to_dict()})
    if args.write_best:
        what = f"sweep: {chosen}, the best of {len(result.values)} values on the selection split; {out.summary()}"
        kept = outputs.write_plan(
            args.write_best,
            "--write-best",
            best.to_yaml(at=Path(args.write_best)),
            what,
            same_file(args.write_best, args.plan),
        )
        con.print(
            f"best plan ({chosen}, chosen on the selection split) written to {args.write_best}"
            + (f"; the plan it replaced is kept as {kept}" if kept else ""),
            highlight=False,
        )
    return 0


def print_sweep(con, result) -> None:
    from rich.table import Table

    some = next(iter(result.scores[0].values()))
    what = "bits per byte" if some.is_bits else "score"
    how = "higher is better" if some.higher_is_better else "lower is better"
    who = f" of {result.model}" if result.model else ""
    con.print(f"[bold]{result.param}{who}[/bold]: {what} ({how}) on the selection split; ✱ best per text")
    t = Table(header_style="bold")
    t.add_column(result.param, justify="right")
    for name in result.texts:
        t.add_column(name, justify="right")
    multi = len(result.texts) > 1
    if multi:
        t.add_column(result.objective.describe(), justify="right")
    best = {name: result.best(name) for name in result.texts}
    best_mean = result.best()
    for i, (v, row) in enumerate(zip(result.values, result.scores)):
        cells = [f"{row[n].value:.4f}" + (" ✱" if best[n] == i else "") for n in result.texts]
        if multi:
            cells.append(f"{result.objective.value(row):.4f}" + (" ✱" if best_mean == i else ""))
        t.add_row(f"{v:g}", *cells)
    con.print(t)
