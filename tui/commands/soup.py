"""Model soup of fine-tunes of one base: greedy (add an ingredient only if the held-out score does not
get worse) or uniform (the plain average). Candidates are merged and scored in memory.
"""

from __future__ import annotations

from pathlib import Path

from mergescope.tui.commands import outputs
from mergescope.tui.commands.models import fetch_models
from mergescope.tui.commands.scoring import (
    add_scoring_arguments,
    add_split_arguments,
    print_outcome,
    print_scores,
    scorer_from_args,
    split_from_args,
    write_json,
)
from mergescope.tui.format import short_names


def add_arguments(p) -> None:
    p.add_argument("models", metavar="MODEL", nargs="+", help="the ingredients: fine-tunes of one base")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--greedy", action="store_true", help="greedy soup (the default)")
    how.add_argument("--uniform", action="store_true", help="the plain weight average of all models (no text needed)")
    add_scoring_arguments(p, text_flag="--eval-text", required=False, tasks=True)
    add_split_arguments(p)
    p.add_argument(
        "--min-gain",
        type=float,
        default=0.0,
        metavar="G",
        help="add an ingredient only when the soup's objective improves by at least G (default 0: not worse)",
    )
    p.add_argument(
        "--significant",
        action="store_true",
        help="add an ingredient only when its gain is beyond noise (the 95 %% interval excludes 0)",
    )
    p.add_argument("--objective", default="mean", metavar="SPEC", help="mean (default), max or weights:TEXT=W,...")
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

    from mergescope.io.errors import InputError
    from mergescope.io.guard import Write, check_io, distinct
    from mergescope.score.candidate import Objective
    from mergescope.search.outcome import outcome
    from mergescope.search.soup import greedy_soup, soup_plan, uniform_soup
    from mergescope.tui.commands.progress_bar import cli_progress

    models = [str(m) for m in args.models]
    distinct(models)
    writes = [*([Write(args.output, "-o", folder=True)] if args.output else [])]
    writes += outputs.file_out(args.plan_out, "--plan-out") + outputs.file_out(args.json, "--json")
    reads = [*outputs.models(models), *outputs.texts(args, "eval_text"), *outputs.texts(args, "report_text")]
    check_io(reads, writes, force=args.force)
    con = Console()
    objective = Objective.parse(args.objective)
    needs_text = not args.uniform
    if needs_text and not (args.eval_text or args.eval_cmd or args.task):
        raise InputError("--eval-text: a greedy soup chooses by held-out scores; give text files (or --uniform)")
    scorer = scorer_from_args(args, "eval_text") if (args.eval_text or args.eval_cmd or args.task) else None
    fetch_models(models, base=models[0])
    _check_ingredients(models, con)
    dtypes = {"dtype": args.dtype, "out_dtype": args.out_dtype}
    names = dict(zip(models, short_names(models, 40)))
    result, out = None, None
    if args.uniform:
        if scorer is None:
            from mergescope.search.soup import SoupResult

            result = SoupResult("uniform", soup_plan(models, **dtypes), {}, [], objective)
        else:
            with cli_progress("soup", unit="steps") as progress:
                scorer.progress = progress
                result = uniform_soup(models, scorer.plan, **dtypes)
            print_scores(con, {f"uniform soup of {len(models)}": result.score}, objective=objective)
    else:
        objective.check(scorer.text_names)
        sel, rep, split = split_from_args(args, scorer)
        con.print(f"choosing on the selection split; final numbers on the {split}", highlight=False)

        def show(step):
            verb = {"start": "start with", "added": "added", "rejected": "rejected"}[step.action]
            style = {"start": "bold", "added": "green", "rejected": "yellow"}[step.action]
            n = len(step.kept) + (step.action == "rejected")
            gain = ""
            if step.gain is not None:
                g = step.gain
                gain = f"; change {g.value:+.4f} [{g.lo:+.4f}, {g.hi:+.4f}] {step.noise}"
            con.print(
                f"[{style}]{verb:>11}[/{style}] {names[step.model]}: alone {_fmt(objective.value(step.own), scorer)}, "
                f"soup of {n} {_fmt(objective.value(step.soup), scorer)}{gain}",
                highlight=False,
            )

        with cli_progress("soup", unit="steps") as progress:
            sel.progress = rep.progress = progress
            result = greedy_soup(
                models,
                sel.plan,
                sel.model,
                log=show,
                objective=objective,
                min_gain=args.min_gain,
                significant=args.significant,
                **dtypes,
            )
            first = result.steps[0].model
            chosen = f"greedy soup of {len(result.kept)}"
            reference = f"best single ({names[first]})"
            cands = {chosen: result.plan if len(result.kept) > 1 else first, reference: first}
            out = outcome(cands, chosen, reference, rep, objective, split)
        print_outcome(con, out)
    if args.plan_out:
        outputs.write_plan(
            args.plan_out,
            "--plan-out",
            result.plan.to_yaml(at=Path(args.plan_out)),
            f"{result.kind} soup of {len(result.kept)}",
        )
        con.print(f"plan written to {args.plan_out}")
    if args.output:
        from mergescope.merge.run import run_merge

        res = run_merge(result.plan, args.output, force=args.force, notes=_card_notes(result, out))
        con.print(f"[bold]soup written[/bold] to {res.output_dir} ({res.n_tensors} tensors)", highlight=False)
    if args.json:
        data = {
            "kind": result.kind,
            "kept": result.kept,
            "selection": {t: s.value for t, s in result.score.items()},
            "steps": [s.to_dict() for s in result.steps],
            "report": out.to_dict() if out is not None else None,
            "plan": result.plan.to_dict(),
        }
        write_json(args.json, data)
    return 0


def _fmt(value: float, scorer) -> str:
    unit = "" if scorer.command or scorer.tasks is not None else " bits/byte"
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


def _card_notes(result, out=None) -> str:
    obj = result.objective
    lines = [f"## Soup ({result.kind})", ""]
    if result.steps:
        lines += [
            f"Chosen on the selection split ({obj.describe()} over texts):",
            "",
            "| step | model | alone | soup | change [95 % interval] | kept |",
            "|---|---|---:|---:|---|---|",
        ]
        for s in result.steps:
            g = f"{s.gain.value:+.4f} [{s.gain.lo:+.4f}, {s.gain.hi:+.4f}] {s.noise}" if s.gain else ""
            lines.append(
                f"| {s.action} | `{s.model}` | {obj.value(s.own):.4f} | {obj.value(s.soup):.4f} | {g} | {', '.join(s.kept)} |"
            )
    if out is not None:
        lines += ["", f"On the {out.split}: {out.summary()}."]
        for label, row in out.rows.items():
            lines.append(f"- {label}: " + ", ".join(f"{t} {s.value:.4f}" for t, s in row.items()))
    elif result.score:
        lines += ["", "Held-out score of the soup: " + ", ".join(f"{t} {s.value:.4f}" for t, s in result.score.items())]
    return "\n".join(lines)
