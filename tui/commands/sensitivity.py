"""Which layer of which model helps or hurts which text: the gradient of each text's bits per byte with
respect to every model's weight in every cell of the plan's table, at the plan (one forward and one
backward pass per text, on the selection split: the first three quarters of each text).

A negative gradient: more of that model in that cell lowers the text's bits per byte (helps); positive:
it hurts. To first order, changing a cell's weight by Δ changes the text's score by gradient × Δ.
"""

from __future__ import annotations

from mergescope.tui.commands import fitting, outputs


def add_arguments(p) -> None:
    fitting.add_arguments(p, report=False)
    p.add_argument("--top", type=int, default=5, metavar="N", help="cells listed per text, each way (default 5)")
    outputs.add_force(p, "an existing --json file")


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from mergescope.io.errors import InputError
    from mergescope.search.sensitivity import sensitivity
    from mergescope.tui.commands.fitting import cell_label
    from mergescope.tui.commands.progress_bar import cli_progress
    from mergescope.tui.commands.scoring import write_json
    from mergescope.tui.format import short_names

    if args.top < 1:
        raise InputError(f"--top {args.top}: must be at least 1")
    con = Console()
    plan, problem_for, space, sel, _, split = fitting.start(
        args, con, outputs.file_out(args.json, "--json"), report=False
    )
    problem = problem_for(sel)
    with cli_progress("gradients", unit="texts") as progress:
        result = sensitivity(problem, progress=progress)
    models = short_names(list(space.models), 20)
    con.print(
        f"d bits per byte / d weight at the plan, {split}; negative: more of the model there helps", highlight=False
    )
    for text in result.grad:
        helps, hurts = result.ranked(text, args.top)
        t = Table(header_style="bold", title=f"{text}: {result.value[text]:.4f} bits per byte at the plan")
        for c in ("", "model", "cell", "gradient"):
            t.add_column(c, justify="right" if c == "gradient" else "left")
        for label, pairs in (("helps", helps), ("hurts", hurts)):
            for name, g in pairs:
                model, where = cell_label(name, models)
                t.add_row(label, model, where, f"{g:+.4f}")
        con.print(t)
    if args.json:
        write_json(args.json, {"split": split, "granularity": args.granularity, **result.to_dict()})
    return 0
