"""Extract a PEFT LoRA adapter whose B·A approximates MODEL − BASE (truncated SVD per matrix) into OUT.

Prints, per layer group, the share of the task vector's energy the rank keeps (also in OUT/README.md;
`--json FILE` adds every matrix's rank). Streams one matrix at a time and writes atomically: on any
error or Ctrl-C nothing is left behind. Exit 0 on success, 2 on bad input (one line on stderr).
"""

from __future__ import annotations

from pathlib import Path

from mergescope.tui.commands import outputs


def add_arguments(p) -> None:
    p.add_argument("base", metavar="BASE", help="the base model the fine-tune started from")
    p.add_argument("model", metavar="MODEL", help="the fine-tuned model (or a LoRA adapter of BASE to re-rank)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="adapter directory to create")
    p.add_argument("--rank", "-r", type=int, required=True, metavar="R", help="rank of every matrix (the maximum)")
    p.add_argument(
        "--sv-threshold",
        type=float,
        default=None,
        metavar="E",
        help="per matrix, the smallest rank that keeps a share E in (0, 1] of Σσ² (capped by --rank)",
    )
    p.add_argument(
        "--include", action="append", default=[], metavar="REGEX", help="only tensors whose name matches (repeatable)"
    )
    p.add_argument(
        "--exclude", action="append", default=[], metavar="REGEX", help="leave out tensors whose name matches"
    )
    p.add_argument(
        "--embeddings", action="store_true", help="save the embedding and LM head whole (PEFT modules_to_save)"
    )
    p.add_argument(
        "--lora-only",
        action="store_true",
        help="write LoRA pairs only: changed norms/biases are reported as lost instead of saved whole",
    )
    p.add_argument(
        "--base-id",
        default=None,
        metavar="HUB_ID",
        help="the base's hub id, written as the adapter's base (default: BASE's absolute path, or its hub id "
        "when BASE is in the Hugging Face cache)",
    )
    p.add_argument("--solver", default="eigh", choices=("eigh", "svd", "lowrank"), help="SVD routine (default eigh)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an OUT that mergescope wrote (only once the adapter is complete), and a --json file it did not",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--json", metavar="FILE", default=None, help="write per-matrix ranks and kept energy as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from mergescope.io.guard import Write, check_io
    from mergescope.io.units import fmt_bytes
    from mergescope.lora.extract import extract_lora
    from mergescope.lora.report import GROUP_HEADER, group_rows
    from mergescope.tui.commands.progress_bar import cli_progress

    writes = [Write(args.output, "-o", folder=True), *outputs.file_out(args.json, "--json")]
    check_io(outputs.models([args.base, args.model]), writes, force=args.force)
    err = Console(stderr=True)
    out = Console()
    with cli_progress("extract", quiet=args.quiet, console=err) as progress:
        res = extract_lora(
            args.base,
            args.model,
            args.output,
            rank=args.rank,
            sv_threshold=args.sv_threshold,
            include=args.include,
            exclude=args.exclude,
            embeddings=args.embeddings,
            lora_only=args.lora_only,
            force=args.force,
            device=args.device,
            solver=args.solver,
            progress=progress,
            base_id=args.base_id,
        )
    table = Table(*GROUP_HEADER, title="task-vector energy kept", title_justify="left")
    for col in table.columns[1:]:
        col.justify = "right"
    for row in group_rows(res):
        table.add_row(*row)
    ranks = sorted({m.rank for m in res.matrices})
    rank = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}–{ranks[-1]}"
    out.print(
        f"[bold]extracted[/bold] a LoRA of {len(res.matrices)} matrices (rank {rank}) and {len(res.full)} tensors "
        f"saved whole ({fmt_bytes(res.adapter_bytes)}) into [bold]{res.output_dir}[/bold], "
        f"{res.seconds:.1f}s on {res.device}",
        highlight=False,
    )
    how = "an absolute path: it resolves from any folder" if Path(res.base).is_absolute() else "a hub id"
    out.print(f"adapter base (base_model_name_or_path): {res.base} ({how})", highlight=False)
    out.print(table)
    if res.lost:
        first = res.lost[0]
        err.print(
            f"[yellow]warning[/yellow] {len(res.lost)} changed tensor(s) are not in the adapter (e.g. {first.name}: "
            f"{first.why}); the list is in {res.output_dir / 'README.md'}",
            highlight=False,
        )
    if args.json:
        outputs.write_json(args.json, "--json", res.to_dict(), indent=2)
    return 0
