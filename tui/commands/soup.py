"""Model soup of fine-tunes of one base: greedy (add an ingredient only if the held-out score does not
get worse) or uniform (the plain average). Candidates are merged and scored in memory.
"""

from __future__ import annotations

from mergescope.tui.commands import outputs
from mergescope.tui.commands.evaluate import add_scoring_arguments, print_scores, scorer_from_args
from mergescope.tui.format import short_names


def add_arguments(p) -> None:
    p.add_argument("models", metavar="MODEL", nargs="+", help="the ingredients: fine-tunes of one base")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--greedy", action="store_true", help="greedy soup (the default)")
    how.add_argument("--uniform", action="store_true", help="the plain weight average of all models")
    add_scoring_arguments(p, text_flag="--eval-text", required=False)
    p.add_argument("-o", "--output", metavar="OUT_DIR", help="also write the soup as a model here")
    p.add_argument("--plan-out", metavar="PLAN.yml", help="write the soup's plan (mergekit YAML) here")
    p.add_argument("--dtype", help="compute dtype of the merge (default float32)")
    p.add_argument("--out-dtype", help="dtype of the written soup (default: the inputs')")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an OUT_DIR that mergescope wrote, and --plan-out/--json files it did not (never an input)",
    )
    p.add_argument("--json", metavar="FILE", help="write the steps and scores as JSON")


def run(args) -> int:
    from rich.console import Console

    from mergescope.io.guard import Write, check_io, distinct
    from mergescope.search.soup import greedy_soup, objective, uniform_soup
    from mergescope.tui.commands.progress_bar import cli_progress

    models = [str(m) for m in args.models]
    distinct(models)
    writes = [*([Write(args.output, "-o", folder=True)] if args.output else [])]
    writes += outputs.file_out(args.plan_out, "--plan-out") + outputs.file_out(args.json, "--json")
    check_io([*outputs.models(models), *outputs.texts(args, "eval_text")], writes, force=args.force)
    con = Console()
    scorer = scorer_from_args(args, "eval_text")
    _check_ingredients(models, con)
    dtypes = {"dtype": args.dtype, "out_dtype": args.out_dtype}
    names = dict(zip(models, short_names(models, 40)))

    def show(step):
        mean = objective(step.soup)
        own = objective(step.own)
        verb = {"start": "start with", "added": "added", "rejected": "rejected"}[step.action]
        style = {"start": "bold", "added": "green", "rejected": "yellow"}[step.action]
        con.print(
            f"[{style}]{verb:>11}[/{style}] {names[step.model]}: alone {_fmt(own, scorer)}, "
            f"soup of {len(step.kept) + (step.action == 'rejected')} {_fmt(mean, scorer)}",
            highlight=False,
        )

    with cli_progress("soup", unit="steps") as progress:
        scorer.progress = progress
        if args.uniform:
            result = uniform_soup(models, scorer.plan, **dtypes)
        else:
            result = greedy_soup(models, scorer.plan, scorer.model, log=show, **dtypes)
    label = f"{result.kind} soup of {len(result.kept)}"
    print_scores(con, {label: result.score}, title=f"[bold]{label}[/bold]: {', '.join(names[m] for m in result.kept)}")
    if args.plan_out:
        outputs.write_plan(args.plan_out, "--plan-out", result.plan.to_yaml(), f"soup: {label}")
        con.print(f"plan written to {args.plan_out}")
    if args.output:
        from mergescope.merge.run import run_merge

        res = run_merge(result.plan, args.output, force=args.force, notes=_card_notes(result))
        con.print(f"[bold]soup written[/bold] to {res.output_dir} ({res.n_tensors} tensors)", highlight=False)
    if args.json:
        data = {
            "kind": result.kind,
            "kept": result.kept,
            "score": {t: s.value for t, s in result.score.items()},
            "steps": [s.to_dict() for s in result.steps],
            "plan": result.plan.to_dict(),
        }
        outputs.write_json(args.json, "--json", data, indent=1)
    return 0


def _fmt(value: float, scorer) -> str:
    unit = "" if scorer.command else " bits/byte"
    return f"{abs(value):.4f}{unit}"


def _check_ingredients(models: list[str], con) -> None:
    """Refuse ingredients that cannot be souped (different base, NaN, shapes) before any scoring."""
    from mergescope.io.errors import InputError
    from mergescope.stats.readiness import analyze

    if len(models) < 2:
        return
    report = analyze(models[0], models[1:])
    errors = [f for f in report.findings if f.severity == "error"]
    if errors:
        f = errors[0]
        raise InputError(
            f"{f.model or models[0]}: {f.code}: {f.message} (against {models[0]}); leave it out of the soup"
        )
    for f in report.findings:
        if f.severity == "warning":
            con.print(f"[yellow]warning[/yellow] {f.code} {f.model or ''}: {f.message}", highlight=False)


def _card_notes(result) -> str:
    lines = [f"## Soup ({result.kind})", ""]
    if result.steps:
        lines += ["| step | model | alone | soup | kept |", "|---|---|---:|---:|---|"]
        for s in result.steps:
            own = sum(x.value for x in s.own.values()) / len(s.own)
            soup = sum(x.value for x in s.soup.values()) / len(s.soup)
            lines.append(f"| {s.action} | `{s.model}` | {own:.4f} | {soup:.4f} | {', '.join(s.kept)} |")
    lines += ["", "Held-out score of the soup: " + ", ".join(f"{t} {s.value:.4f}" for t, s in result.score.items())]
    return "\n".join(lines)
