"""Search a plan's per-layer-group ratio table with Optuna (TPE or CMA-ES), every trial merged and
scored in memory; the best plan is written as ordinary mergekit YAML.

The space is the plan editor's table: one value per model × layer band × group for each --space
parameter. Studies live in Optuna storage (PLAN.tune.db beside the plan unless --storage names
another): Ctrl-C stops cleanly, rerunning the same command continues the study, and workers given
one --storage postgresql://... URL share it.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from mergescope.tui.commands import outputs
from mergescope.tui.commands.scoring import (
    add_scoring_arguments,
    add_split_arguments,
    print_outcome,
    scorer_from_args,
    split_from_args,
)


def add_arguments(p) -> None:
    p.add_argument("plan", metavar="PLAN.yml", help="the plan to tune: method, base, models, other parameters")
    add_scoring_arguments(p, text_flag="--eval-text", required=False, tasks=True)
    add_split_arguments(p)
    p.add_argument(
        "--objective",
        default="mean",
        metavar="SPEC",
        help="mean (default), max (the worst text) or weights:TEXT=W,... over the texts (named by file stem; a "
        "negative weight asks for that text to get worse, e.g. weights:code=1,dialog=-0.5)",
    )
    p.add_argument(
        "--trials", default="40", metavar="N", help="finished trials the study should hold, all workers together (40)"
    )
    p.add_argument("--space", default="weight", metavar="P,...", help="table parameters to search (default weight)")
    p.add_argument(
        "--bands", default="3", metavar="1|2|3|4|6|0", help="layer bands per group (default 3; 0: per layer)"
    )
    p.add_argument("--groups", metavar="G,...", help="groups to search: attn,mlp,norm,embed,head (default all)")
    p.add_argument("--sampler", default="tpe", metavar="tpe|cmaes", help="Optuna sampler (default tpe)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage: a SQLite path or a URL (default PLAN.tune.db)")
    p.add_argument("--study", metavar="NAME", help="study name (default: the plan's name and a hash of the search)")
    p.add_argument(
        "--range", action="append", metavar="P=LO:HI", help="search P in [LO, HI] (default: the method's bounds)"
    )
    p.add_argument("--seed", metavar="S", help="sampler seed (and randomised methods'); one per worker")
    p.add_argument("--no-prune", action="store_true", help="score every trial on all of the text")
    p.add_argument("-o", "--output", metavar="BEST.yml", help="where the best plan goes (default PLAN.best.yml)")
    p.add_argument("--no-plot", action="store_true", help="the table only")
    outputs.add_force(p, "an existing BEST.yml (-o PLAN.yml keeps PLAN.yml.bak)")


def _int(raw, flag: str, allowed=None, low: int | None = None) -> int | None:
    from mergescope.io.errors import InputError

    if raw is None:
        return None
    try:
        v = int(str(raw).strip())
    except ValueError:
        v = None
    if v is None or (allowed is not None and v not in allowed) or (low is not None and v < low):
        want = "|".join(map(str, allowed)) if allowed is not None else f"a whole number ≥ {low}"
        raise InputError(f"{flag} {raw}: use {want}")
    return v


def run(args) -> int:
    import warnings

    from rich.console import Console

    from mergescope.io.errors import InputError
    from mergescope.io.guard import Write, check_io, same_file
    from mergescope.merge.plan import Plan
    from mergescope.merge.plan.ratio_table import BAND_MODES
    from mergescope.merge.run import plan_reads
    from mergescope.score.candidate import Objective
    from mergescope.search.outcome import outcome
    from mergescope.search.tune import require_optuna, tune
    from mergescope.search.tune_space import build_space, parse_list, parse_ranges, plan_layout
    from mergescope.search.tune_study import (
        SAMPLERS,
        default_study_name,
        open_storage,
        open_study,
        safe_url,
        search_of,
        storage_url,
    )
    from mergescope.tui.commands.progress_bar import cli_progress

    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are our errors, said once
    warnings.filterwarnings("ignore", module="optuna")
    con = Console()
    n_trials = _int(args.trials, "--trials", low=1)
    band_mode = _int(args.bands, "--bands", allowed=BAND_MODES)
    seed = _int(args.seed, "--seed", low=0)
    if args.sampler not in SAMPLERS:
        raise InputError(f"--sampler {args.sampler}: use one of {', '.join(SAMPLERS)}")
    objective = Objective.parse(args.objective)
    params = parse_list(args.space, "--space")
    groups = parse_list(args.groups, "--groups") if args.groups is not None else None
    ranges = parse_ranges(args.range)
    plan = Plan.load(args.plan)
    from mergescope.tui.commands.models import fetch_plan_models

    fetch_plan_models(plan)
    plan.validate(check_paths=True)
    out = Path(args.output) if args.output else Path(args.plan).with_name(Path(args.plan).stem + ".best.yml")
    url = storage_url(args.storage, args.plan)
    writes = [Write(out, "-o", plan=True)]
    if url.startswith("sqlite:///"):
        writes.append(Write(url.split(":///", 1)[1], "--storage", store=True))
    reads = [*plan_reads(plan), *outputs.texts(args, "eval_text"), *outputs.texts(args, "report_text")]
    check_io(reads, writes, force=args.force)
    args.seed = seed
    scorer = scorer_from_args(args, "eval_text")
    sel, rep, split = split_from_args(args, scorer)
    names, n_layers = plan_layout(plan)
    space = build_space(
        plan, params=params, band_mode=band_mode, groups=groups, ranges=ranges, names=names, num_layers=n_layers
    )
    objective.check(scorer.text_names)
    search = search_of(space, objective, sel)
    name = args.study or default_study_name(args.plan, search, args.sampler)
    study = open_study(
        open_storage(url),
        name,
        search,
        higher_is_better=scorer.higher_is_better,
        sampler=args.sampler,
        seed=seed,
        prune=not args.no_prune,
        start=space.start_values(),
    )
    before = len([t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")])
    con.print(
        f"[bold]tune[/bold] {args.plan}: {len(space.dims)} values ({', '.join(space.params)} × "
        f"{len(space.models)} models × {len(space.bands)} bands of {n_layers} layers × groups {','.join(space.groups)}); "
        f"study {name} in {safe_url(url)}, {before}/{n_trials} trials done; choosing on the selection split, "
        f"final numbers on the {split}",
        highlight=False,
    )
    best = [study.best_value if any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)) else None]

    def show(rec) -> None:
        if rec.state == "complete":
            better = best[0] is None or (rec.value > best[0] if scorer.higher_is_better else rec.value < best[0])
            best[0] = rec.value if better else best[0]
            per = ", ".join(f"{t} {v:.4f}" for t, v in rec.scores.items())
            con.print(f"  trial {rec.number}: {rec.value:.4f} ({per}){' ✱' if better else ''}", highlight=False)
        elif rec.state == "pruned":
            con.print(f"  trial {rec.number}: pruned (first quarter {rec.first_slice:.4f})", highlight=False)

    with cli_progress("tune", unit="trials") as progress, _first_ctrl_c_stops() as stop:
        result = tune(
            space,
            sel,
            study,
            n_trials=n_trials,
            objective=objective,
            prune=not args.no_prune,
            progress=progress,
            log=show,
            should_stop=stop.is_set,
        )
    print_trials(con, result, space)
    if not args.no_plot and result.ranked():
        from mergescope.tui.plots import draw_trials, text_figure

        fig = text_figure(
            lambda plt: draw_trials(plt, result.trials, result.higher_is_better, result.metric), min(con.width, 100)
        )
        con.print(fig, highlight=False, markup=False)
    if result.best is not None:
        from mergescope.search.tune import best_yaml

        best_plan = space.plan_for(result.best.params)
        chosen = f"trial {result.best.number}"
        start = space.start_values()
        reference = "the plan as given"
        with cli_progress("report", unit="steps") as progress:
            rep.progress = progress
            report = outcome({chosen: best_plan, reference: plan}, chosen, reference, rep, objective, split)
        print_outcome(con, report)
        kept = outputs.write_plan(
            out, "-o", best_yaml(result, space, objective, report, at=out), "tune", same_file(out, args.plan)
        )
        if kept:
            con.print(f"the plan it replaces is kept as {kept}", highlight=False)
        if report.verdict == "better":
            con.print(f"best plan ({chosen}) written to {out}", highlight=False)
        elif start is not None and result.best.params == start:
            con.print(f"no trial beat the plan as given; it is written unchanged to {out}", highlight=False)
        else:
            con.print(
                f"{chosen} written to {out}, but it is no improvement on the report split: keep the plan as given",
                highlight=False,
            )
    if result.stopped:
        con.print(
            f"stopped: {len(result.done)}/{n_trials} trials in study {name}; rerun the same command to continue",
            highlight=False,
        )
        return 130
    return 0


@contextmanager
def _first_ctrl_c_stops():
    """Ctrl-C sets a flag the search polls (between trials and inside each merge and score), so the stop
    is clean wherever it lands (a KeyboardInterrupt raised inside a garbage-collection callback is lost);
    a second Ctrl-C interrupts at once."""
    import signal
    import threading

    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main else None
    try:
        yield stop
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def print_trials(con, result, space, top: int = 8) -> None:
    """The best trials (objective, per text), then the best table's searched values per model."""
    from rich.table import Table

    from mergescope.merge.plan.ratio_table import band_label
    from mergescope.tui.format import short_names

    counts = {s: sum(t.state == s for t in result.trials) for s in ("complete", "pruned", "fail")}
    how = "higher is better" if result.higher_is_better else "lower is better"
    con.print(
        f"[bold]{len(result.done)}/{result.n_trials} trials[/bold] ({counts['complete']} complete, "
        f"{counts['pruned']} pruned, {counts['fail']} failed; {result.ran} this run); {result.metric}, {how}",
        highlight=False,
    )
    ranked = result.ranked()
    if not ranked:
        return
    workers = {t.worker for t in result.trials if t.worker}
    t = Table(header_style="bold")
    t.add_column("trial", justify="right")
    t.add_column("objective", justify="right")
    texts = list(ranked[0].scores)
    for name in texts:
        t.add_column(name, justify="right")
    if len(workers) > 1:
        t.add_column("worker")
    for rec in ranked[:top]:
        cells = [str(rec.number), f"{rec.value:.4f}", *(f"{rec.scores.get(n, float('nan')):.4f}" for n in texts)]
        t.add_row(*cells, *([rec.worker or ""] if len(workers) > 1 else []))
    con.print(t)
    best = ranked[0]
    vals = space.tables(best.params)
    short = short_names(space.models, 14)
    b = Table(header_style="bold", title=f"trial {best.number}: the values searched")
    b.add_column("row")
    for s in short:
        b.add_column(s, justify="right")
    seen = []
    for d in space.dims:
        label = f"{d.param} {d.group} " + (band_label(d.band) if d.band else ("final" if d.group == "norm" else ""))
        if (d.param, d.key) in seen:
            continue
        seen.append((d.param, d.key))
        b.add_row(label.strip(), *(f"{v:.3f}" for v in vals[d.param][d.key]))
    con.print(b)
