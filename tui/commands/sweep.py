"""Score a plan at each value of one parameter (weight, density, t, lambda, epsilon, ...), in memory:
a table (value × text, best per text marked), a plot in the terminal, and the best plan if asked.
"""

from __future__ import annotations

from mergescope.tui.commands import outputs
from mergescope.tui.commands.evaluate import add_scoring_arguments, scorer_from_args


def add_arguments(p) -> None:
    p.add_argument("plan", metavar="PLAN.yml", help="the plan to vary (mergekit YAML)")
    p.add_argument("--param", required=True, metavar="NAME", help="the parameter to sweep, e.g. weight")
    p.add_argument("--model", metavar="M", help="set a per-model parameter for this model only (default: every model)")
    p.add_argument(
        "--values", required=True, metavar="SPEC", help="start:stop:step (e.g. 0.2:1.0:0.1) or a list (0.2,0.5,1)"
    )
    add_scoring_arguments(p, text_flag="--eval-text", required=False)
    p.add_argument("--seed", type=int, help="seed for randomised methods (dare, della)")
    p.add_argument("--json", metavar="FILE", help="write the points and the best values as JSON")
    p.add_argument("--write-best", metavar="OUT.yml", help="write the plan at the best mean value")
    p.add_argument("--no-plot", action="store_true", help="the table only")
    outputs.add_force(p, "an existing --json or --write-best file (--write-best PLAN.yml keeps PLAN.yml.bak)")


def run(args) -> int:
    from rich.console import Console

    from mergescope.io.guard import check_io, same_file
    from mergescope.merge.plan import Plan
    from mergescope.merge.run import plan_reads
    from mergescope.search.sweep import parse_values, sweep, with_value
    from mergescope.tui.commands.progress_bar import cli_progress

    con = Console()
    plan = Plan.load(args.plan)
    plan.validate(check_paths=True)
    writes = outputs.file_out(args.json, "--json") + outputs.file_out(args.write_best, "--write-best", plan=True)
    check_io([*plan_reads(plan), *outputs.texts(args, "eval_text")], writes, force=args.force)
    values = parse_values(args.values)
    scorer = scorer_from_args(args, "eval_text")

    def show(value, row):
        con.print(f"  {args.param} = {value:g}: " + ", ".join(f"{t} {s.value:.4f}" for t, s in row.items()))

    with cli_progress("sweep", unit="steps") as progress:
        scorer.progress = progress
        result = sweep(plan, args.param, values, scorer.plan, model=args.model, log=show)
    print_sweep(con, result)
    if not args.no_plot:
        con.print(sweep_plot(result, width=min(con.width, 100)), highlight=False, markup=False)
    if args.json:
        outputs.write_json(args.json, "--json", result.to_dict(), indent=1)
    if args.write_best:
        value = result.values[result.best()]
        best = with_value(plan, args.param, value, args.model)
        what = f"sweep: {args.param} = {value:g}, the best mean of {len(result.values)} values"
        kept = outputs.write_plan(
            args.write_best, "--write-best", best.to_yaml(), what, same_file(args.write_best, args.plan)
        )
        con.print(
            f"best plan ({args.param} = {value:g}) written to {args.write_best}"
            + (f"; the plan it replaced is kept as {kept}" if kept else ""),
            highlight=False,
        )
    return 0


def print_sweep(con, result) -> None:
    from rich.table import Table

    some = next(iter(result.scores[0].values()))
    what = "bits per byte" if some.nll_nats is not None else "score"
    how = "higher is better" if some.higher_is_better else "lower is better"
    who = f" of {result.model}" if result.model else ""
    con.print(f"[bold]{result.param}{who}[/bold]: {what} ({how}); ✱ best per text")
    t = Table(header_style="bold")
    t.add_column(result.param, justify="right")
    for name in result.texts:
        t.add_column(name, justify="right")
    multi = len(result.texts) > 1
    if multi:
        t.add_column("mean", justify="right")
    best = {name: result.best(name) for name in result.texts}
    best_mean = result.best()
    for i, (v, row) in enumerate(zip(result.values, result.scores)):
        cells = [f"{row[n].value:.4f}" + (" ✱" if best[n] == i else "") for n in result.texts]
        if multi:
            m = sum(s.value for s in row.values()) / len(row)
            cells.append(f"{m:.4f}" + (" ✱" if best_mean == i else ""))
        t.add_row(f"{v:g}", *cells)
    con.print(t)


def sweep_plot(result, width: int = 80, height: int = 16) -> str:
    """One line per text, score against the swept value (plotext, no colours)."""
    import plotext as plt

    plt.clear_figure()
    markers = ("braille", "•", "+", "x", "*", "o")  # told apart without colour
    for k, name in enumerate(result.texts):
        ys = [row[name].value for row in result.scores]
        plt.plot(result.values, ys, label=name, marker=markers[k % len(markers)])
    plt.plotsize(width, height)
    plt.xlabel(result.param)
    plt.title("bits per byte" if next(iter(result.scores[0].values())).nll_nats is not None else "score")
    plt.theme("clear")
    return plt.uncolorize(plt.build())
