"""Learn the plan's ratio table from held-out text: the merged weights are a smooth function of the
table, so its cells are fitted by gradient descent (Adam) on the selection split, with early stopping on
a held-out part of it, starting at the plan. The result is an ordinary mergekit plan (per-layer values as
gradient lists, groups as filters), reported on the report split against the plan as given and against
the best single weight for every model, with paired 95 % intervals.

fit differentiates the built-in Llama-family forward, for task_arithmetic, linear, ties, dare_*,
breadcrumbs* and della* (masks and elected signs frozen at the plan's weights). Ctrl-C keeps the best
step so far.
"""

from __future__ import annotations

from pathlib import Path

from mergescope.tui.commands import fitting, outputs


def add_arguments(p) -> None:
    fitting.add_arguments(p, report=True)
    p.add_argument("--objective", default="mean", metavar="SPEC", help="mean (default), max or weights:TEXT=W,...")
    p.add_argument("--steps", type=int, default=60, metavar="N", help="Adam steps at most (default 60)")
    p.add_argument("--lr", type=float, default=0.03, metavar="LR", help="Adam's learning rate (default 0.03)")
    p.add_argument(
        "--patience", type=int, default=15, metavar="N", help="stop after N steps without a better held-out loss (15)"
    )
    p.add_argument("--no-global", action="store_true", help="skip the sweep of one global weight it compares with")
    p.add_argument("-o", "--output", metavar="FITTED.yml", help="where the fitted plan goes (default PLAN.fit.yml)")
    outputs.add_force(p, "an existing -o or --json file")


def run(args) -> int:
    from rich.console import Console

    from mergescope.io.guard import Write
    from mergescope.score.candidate import Objective, Scorer
    from mergescope.search.fit import fit
    from mergescope.search.outcome import outcomes
    from mergescope.tui.commands.progress_bar import cli_progress
    from mergescope.tui.commands.scoring import print_outcome, write_json

    con = Console()
    out = Path(args.output) if args.output else Path(args.plan).with_name(Path(args.plan).stem + ".fit.yml")
    writes = [Write(out, "-o", plan=True), *outputs.file_out(args.json, "--json")]
    objective = Objective.parse(args.objective)
    plan, problem_for, space, sel, rep, split = fitting.start(args, con, writes, report=True)
    objective.check(list(sel))

    def show(step):
        con.print(
            f"  step {step.step}: fit {step.fit:.4f}, held-out {step.held:.4f} ({step.seconds:.1f} s)", highlight=False
        )

    with cli_progress("fit", unit="steps") as progress:
        result, problem = fit(
            problem_for,
            sel,
            granularity=args.granularity,
            objective=objective,
            steps=args.steps,
            lr=args.lr,
            patience=args.patience,
            global_sweep=not args.no_global,
            progress=progress,
            log=show,
        )
    import torch

    per = result.history[0].seconds if result.history else 0.0
    con.print(
        f"{len(result.best)} values ({args.granularity}); best held-out loss at step {result.best_step} of "
        f"{len(result.history) - 1}; {result.seconds:.1f} s, {per:.2f} s per step"
        + ("; stopped: the best so far is kept" if result.stopped else ""),
        highlight=False,
    )
    fitted = problem.plan_for(torch.tensor(result.best))
    chosen, given = f"fitted ({args.granularity})", "the plan as given"
    cands = {chosen: fitted, given: plan}
    refs = [given]
    if result.global_weight is not None:
        g = f"best global weight {result.global_weight:g}"
        cands[g] = problem.plan_for(torch.full((len(result.best),), float(result.global_weight)))
        refs.append(g)
    scorer = Scorer(rep, device=args.device, seed=args.seed)
    with cli_progress("report", unit="tokens") as progress:
        scorer.progress = progress
        reports = outcomes(cands, chosen, refs, scorer, objective, split)
    print_outcome(con, reports[0])
    for r in reports[1:]:
        style = {"better": "green", "worse": "red"}.get(r.verdict, "yellow")
        con.print(f"[{style}]{r.summary()}[/{style}]", highlight=False)
    print_table(con, result, space)
    head = "".join(f"# {line}\n" for line in _header(args, result, reports))
    outputs.write_plan(out, "-o", head + fitted.to_yaml(at=out), "fit")
    con.print(f"fitted plan written to {out}", highlight=False)
    if args.json:
        write_json(args.json, {**result.to_dict(), "report": [r.to_dict() for r in reports], "plan": str(out)})
    return 130 if result.stopped else 0


def _header(args, result, reports) -> list[str]:
    lines = [
        f"mergescope fit: {args.granularity} granularity, objective {result.objective.describe()}, best step "
        f"{result.best_step}{' (stopped early by the user)' if result.stopped else ''}"
    ]
    for r in reports:
        lines.append(f"{r.split}: {r.summary()}")
    return lines


def print_table(con, result, space) -> None:
    """The fitted values per model (rows: cells), beside the plan's."""
    from rich.table import Table

    from mergescope.tui.commands.fitting import cell_label
    from mergescope.tui.format import short_names

    models = short_names(list(space.models), 14)
    cells: dict[str, dict[str, tuple[float, float]]] = {}
    for name, start, best in zip(result.names, result.start, result.best):
        model, where = cell_label(name, models)
        cells.setdefault(where, {})[model] = (start, best)
    t = Table(header_style="bold", title="fitted weights (the plan's in brackets)")
    t.add_column("cell")
    for m in models:
        t.add_column(m, justify="right")
    for where, row in cells.items():
        t.add_row(where, *(f"{row[m][1]:.3f} ({row[m][0]:.2f})" if m in row else "" for m in models))
    con.print(t)
