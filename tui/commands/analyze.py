"""Merge-readiness analysis of a base and its fine-tunes (findings, per-layer metrics, JSON).

Streams every tensor once; prints findings first, then a per-layer table. Exit 1 when --fail-on is met.
"""

from __future__ import annotations

from mergescope.stats.report import DEFAULT_DENSITY
from mergescope.stats.spectral import DEFAULT_RANK
from mergescope.tui.commands import outputs
from mergescope.tui.commands.models import fetch_models
from mergescope.tui.format import SEV_GLYPH, SEV_STYLE, summary_note  # shared with the Textual app
from mergescope.tui.format import display_names as _display_names
from mergescope.tui.format import fmt as _fmt
from mergescope.tui.format import heat as _heat
from mergescope.tui.format import short_names as _short_names


def add_arguments(p) -> None:
    p.add_argument(
        "base",
        metavar="BASE",
        help="base checkpoint: HF directory, .safetensors file, or Hugging Face repo id[@revision]",
    )
    p.add_argument(
        "models",
        metavar="MODEL",
        nargs="+",
        help="fine-tuned checkpoints or PEFT LoRA adapters: directories, files or Hugging Face repo ids[@revision]",
    )
    p.add_argument(
        "--json",
        metavar="FILE",
        help="write the full report as JSON (every field is described in the README, section JSON)",
    )
    p.add_argument(
        "--density",
        type=float,
        default=DEFAULT_DENSITY,
        help=f"TIES trim density for trimmed sign conflict (default {DEFAULT_DENSITY})",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--spectral",
        action="store_true",
        help="also the spectral interference metrics (top-K SVD of every attention/MLP task vector; slower)",
    )
    p.add_argument(
        "--rank",
        type=int,
        metavar="K",
        help=f"singular directions per matrix for --spectral (default {DEFAULT_RANK})",
    )
    p.add_argument(
        "--fail-on", choices=("error", "warning"), help="exit 1 when a finding of this severity (or worse) is found"
    )
    p.add_argument("--no-cache", action="store_true", help="ignore and do not write the analysis cache")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no tables (findings only)")
    outputs.add_force(p, "an existing --json FILE")


def run(args) -> int:
    from rich.console import Console

    from mergescope.io.guard import check_io
    from mergescope.stats.readiness import analyze
    from mergescope.stats.report import SEVERITIES

    check_io(outputs.models([args.base, *args.models]), outputs.file_out(args.json, "--json"), force=args.force)
    err = Console(stderr=True)
    out = Console()
    if args.rank is not None and not args.spectral:
        from mergescope.io.errors import InputError

        raise InputError(f"--rank {args.rank}: only used by --spectral; add --spectral or drop --rank")
    fetch_models([args.base, *args.models], base=args.base)
    report = _analyze_with_progress(analyze, args, err)
    if args.json:
        outputs.write_json(args.json, "--json", report.to_json(), indent=1, allow_nan=False)
    print_report(report, out, quiet=args.quiet)
    if not args.quiet:
        out.print(next_step(report, args.base, args.models), highlight=False, soft_wrap=True)
    if args.fail_on:
        limit = SEVERITIES.index(args.fail_on)
        if any(SEVERITIES.index(f.severity) <= limit for f in report.findings):
            return 1
    return 0


def _analyze_with_progress(analyze, args, err):
    from mergescope.tui.commands.progress_bar import cli_progress

    with cli_progress("analyse", quiet=args.quiet, console=err) as progress:
        return analyze(
            args.base,
            args.models,
            density=args.density,
            device=args.device,
            use_cache=not args.no_cache,
            progress=progress,
            spectral=(args.rank if args.rank is not None else DEFAULT_RANK) if args.spectral else None,
        )


def next_step(report, base: str, models: list[str]) -> str:
    """The command to run next: the explorer on the models fit to merge (those with an error left out)."""
    import shlex

    errors = [f for f in report.findings if f.severity == "error"]
    if any(f.model is None or f.model == report.base for f in errors):
        return "next: fix the base (see the error above), then analyze again"
    bad = {f.model: f.code for f in errors}
    keep = [m for m in models if m not in bad]
    if not keep:
        return "next: every model has an error above; fix those (or pick fine-tunes of this base), then analyze again"
    cmd = shlex.join(["mergescope", "ui", base, *keep])
    shown = _display_names([base, *models])
    left = f"; left out: {', '.join(f'{shown[m]} ({bad[m]})' for m in models if m in bad)}" if bad else ""
    return f"next: {cmd}   (plan the merge in the explorer and write it{left})"


def print_report(report, console, quiet: bool = False) -> None:
    from rich.table import Table
    from rich.text import Text

    src = " (cached)" if report.structure.get("from_cache") else f" in {report.elapsed_s:.1f}s"
    console.print(Text.assemble(("mergescope analyze", "bold"), f": base {report.base}, {report.n} model(s){src}"))
    shown = _display_names([report.base, *report.models])
    if report.findings:
        for f in report.findings:
            who = f" {shown.get(f.model, f.model)}" if f.model else ""
            console.print(
                Text.assemble(
                    (f"{SEV_GLYPH[f.severity]} {f.severity:<7}", SEV_STYLE[f.severity]),
                    (f" {f.code}", "bold"),
                    (who, "dim"),
                    f": {f.message}",
                )
            )
    else:
        console.print(Text("✔ no findings: these models look merge-ready", style="green"))
    if quiet or not report.sites:
        return
    whole, weights = report.whole(), report.weights()
    summary = Table(
        title="models",
        title_justify="left",
        box=None,
        header_style="bold",
        caption=summary_note(report),
        caption_justify="left",
        caption_style="dim",
    )
    for col in ("model", "rel. norm", "cos to base", "‖τ‖", "top-20% energy"):
        summary.add_column(col, justify="left" if col == "model" else "right")
    for i, m in enumerate(report.models):
        summary.add_row(
            shown[m],
            _fmt(weights.relative_norm(i)),
            f"{weights.cosine_to_base(i):.4f}",
            _fmt(whole.norm(i)),
            _fmt(whole.topk_energy(i), pct=True),
        )
    console.print(summary)
    table = Table(title="per layer (all groups of the layer)", title_justify="left", box=None, header_style="bold")
    table.add_column("layer")
    short = _short_names(report.models)
    for s in short:
        table.add_column(f"rel {s}", justify="right")
    if report.n >= 2:
        for col in ("sign conf", "trimmed", "asym", "min cos"):
            table.add_column(col, justify="right")
    for label, layer, group in report.rows():
        agg = report.row_cell(layer, group)
        cells = []
        for i in range(report.n):
            r = agg.relative_norm(i)
            cells.append(Text(_fmt(r), style=_heat(r, 0.05, 0.3)))
        if report.n >= 2:
            sc, tsc, asym = agg.sign_conflict, agg.trimmed_sign_conflict, agg.magnitude_asymmetry
            mc = min(agg.cosine(i, j) for i in range(report.n) for j in range(i + 1, report.n))
            cells += [
                Text(_fmt(sc, True), style=_heat(sc, 0.5, 0.6)),
                Text(_fmt(tsc, True), style=_heat(tsc, 0.4, 0.55)),
                Text(_fmt(asym), style=_heat(asym, 3, 10)),
                Text(_fmt(mc), style=_heat(-mc, 0.0, 0.1)),
            ]
        table.add_row(label, *cells)
    console.print(table)
    if report.spectral is not None:
        print_spectral(report, console)


def print_spectral(report, console) -> None:
    """The spectral pass: a summary (per model, per pair, whole model) and a table per layer."""
    from rich.table import Table
    from rich.text import Text

    sp = report.spectral
    whole = sp.whole()
    k = sp.rank
    src = "cached" if sp.from_cache else f"in {sp.elapsed_s:.1f}s"
    console.print(
        Text.assemble(
            ("spectral", "bold"), f" (rank {k}, {whole.matrices} attention/MLP matrices, {src}): STI {_fmt(whole.sti)}"
        )
    )
    capped = f"; 95% needed more than {k} in {whole.sar_capped:.0%} of the matrices" if whole.sar_capped else ""
    console.print(
        Text(
            f"SAR projects on the merged task vector's top {whole.sar_rank:.1f} directions (mean), "
            f"{whole.merged_energy:.0%} of its energy{capped}",
            style="dim",
        )
    )
    summary = Table(box=None, header_style="bold")
    for col in ("model", f"energy@{k}", "SAR"):
        summary.add_column(col, justify="left" if col == "model" else "right")
    shown = _display_names([report.base, *report.models])
    for i, m in enumerate(report.models):
        summary.add_row(shown[m], _fmt(whole.spectral_energy(i), pct=True), _fmt(whole.sar(i)))
    console.print(summary)
    short = _short_names(report.models)
    if report.n >= 2:
        pairs = Table(box=None, header_style="bold")
        for col in ("pair", "subspace overlap"):
            pairs.add_column(col, justify="left" if col == "pair" else "right")
        for i in range(report.n):
            for j in range(i + 1, report.n):
                pairs.add_row(f"{short[i]} – {short[j]}", _fmt(whole.subspace_overlap(i, j)))
        console.print(pairs)
    table = Table(title="spectral per layer (attention + MLP)", title_justify="left", box=None, header_style="bold")
    table.add_column("layer")
    for s in short:
        table.add_column(f"E@{k} {s}", justify="right")
    for s in short:
        table.add_column(f"SAR {s}", justify="right")
    if report.n >= 2:
        table.add_column("overlap", justify="right")
        table.add_column("STI", justify="right")
    rows = [(f"L{layer}", layer, None) for layer in sp.layers()]
    rows += [(g, None, g) for layer, g in sp.cell_keys() if layer is None]
    for label, layer, group in rows:
        agg = sp.row_cell(layer, group)
        cells = [_fmt(agg.spectral_energy(i), pct=True) for i in range(report.n)]
        cells += [_fmt(agg.sar(i)) for i in range(report.n)]
        if report.n >= 2:
            ov = [agg.subspace_overlap(i, j) for i in range(report.n) for j in range(i + 1, report.n)]
            cells += [_fmt(sum(ov) / len(ov)), _fmt(agg.sti)]
        table.add_row(label, *cells)
    console.print(table)
    console.print(
        Text(
            f"E@{k}: share of ‖Δ‖² in the top {k} directions; SAR: ‖PΔ‖/‖Δ‖ on the merged task vector's top "
            "subspace; overlap: mean over pairs; STI: task singular interference (README, The analysis)",
            style="dim",
        )
    )
