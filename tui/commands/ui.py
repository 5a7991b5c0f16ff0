"""Open the interactive explorer (the default command): verdicts, heatmaps, plan editor, merge, evaluate.

With no paths it starts on the open dialog (recent sets are remembered in the user's config dir).
"""

from __future__ import annotations

from mergescope.stats.report import DEFAULT_DENSITY


def add_arguments(p) -> None:
    p.add_argument("base", metavar="BASE", nargs="?", help="base checkpoint (omit to pick in the open dialog)")
    p.add_argument("models", metavar="MODEL", nargs="*", help="fine-tuned checkpoints or LoRA adapters")
    p.add_argument("--plan", metavar="PLAN.yaml", help="load this plan (mergescope or mergekit YAML) into the editor")
    p.add_argument(
        "--density",
        type=float,
        default=DEFAULT_DENSITY,
        help=f"TIES trim density for the measured sign conflict (default {DEFAULT_DENSITY})",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda for the analysis and the merge (default cpu)")
    p.add_argument("--no-cache", action="store_true", help="ignore and do not write the analysis cache")
    p.add_argument(
        "--spectral",
        nargs="?",
        type=int,
        const=64,
        default=None,
        metavar="K",
        help="run the spectral pass (top-K SVD of every attention/MLP task vector, K = 64 by default) with the "
        "analysis; without it the heatmap's spectral keys (! @ # $) run it when first pressed",
    )
    p.add_argument(
        "--eval-text", nargs="+", default=[], metavar="FILE", help="held-out text files for the Evaluate tab"
    )


def run(args) -> int:
    from mergescope.io.errors import InputError

    if args.base and not args.models:
        raise InputError("give at least one fine-tuned MODEL after the BASE (or no paths for the open dialog)")
    if not 0.0 <= args.density <= 1.0:
        raise InputError(f"--density {args.density}: must be between 0 and 1")
    from mergescope.tui.commands.models import fetch_models, fetch_plan_models

    if args.base:
        fetch_models([args.base, *args.models], base=args.base)
    if args.plan:
        from mergescope.merge.plan import Plan

        fetch_plan_models(Plan.load(args.plan))
    from mergescope.tui.app import MergeScopeApp

    app = MergeScopeApp(
        args.base,
        args.models,
        args.plan,
        density=args.density,
        device=args.device,
        use_cache=not args.no_cache,
        spectral=args.spectral,
        texts=args.eval_text,
    )
    app.run()
    return int(app.return_code or 0)
