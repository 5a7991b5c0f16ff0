"""Findings first (colour, glyph and severity word), then one merge-readiness line per model."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from mergescope.stats.report import SEVERITIES
from mergescope.tui.format import OK_GLYPH, SEV_GLYPH, SEV_STYLE, display_names, fmt, summary_note


def findings_renderable(report) -> Group:
    parts = []
    counts = {s: sum(f.severity == s for f in report.findings) for s in SEVERITIES}
    head = Text("Findings ", style="bold")
    if report.findings:
        head.append(
            "  ".join(
                f"{SEV_GLYPH[s]} {counts[s]} {s}{'s' if counts[s] != 1 else ''}" for s in SEVERITIES if counts[s]
            ),
            style="dim",
        )
    parts.append(head)
    if not report.findings:
        parts.append(Text(f"{OK_GLYPH} no findings: these models look merge-ready", style="green"))
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, width=9)
    grid.add_column(ratio=1)
    shown = display_names([report.base, *report.models])
    for f in report.findings:
        head = Text()
        head.append(f.code, "bold")
        if f.model:
            head.append(f"  {shown.get(f.model, f.model)}", "italic")
        grid.add_row(Text(f"{SEV_GLYPH[f.severity]} {f.severity.upper()}", SEV_STYLE[f.severity]), head)
        grid.add_row("", Text(f.message))
    if report.findings:
        parts.append(grid)
    return Group(*parts)


def model_status(report, name: str) -> tuple[str, str, str]:
    """(glyph, word, style) for a model: its worst finding, or ready."""
    sev = next((s for s in SEVERITIES if any(f.severity == s and f.model == name for f in report.findings)), None)
    if sev == "error":
        return SEV_GLYPH["error"], "not mergeable", SEV_STYLE["error"]
    if sev == "warning":
        return SEV_GLYPH["warning"], "merge with care", SEV_STYLE["warning"]
    return OK_GLYPH, "ready", "green"


def summary_renderable(report) -> Table:
    whole, weights = report.whole(), report.weights()
    table = Table(
        title="Merge readiness",
        title_justify="left",
        title_style="bold",
        box=None,
        header_style="bold",
        padding=(0, 1, 0, 0),
        caption=summary_note(report, "top-20% energy"),
        caption_justify="left",
        caption_style="dim",
    )
    # narrow enough for 80 columns: two-line headers, reasons wrapped between codes (never inside one)
    table.add_column("model", no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("verdict", no_wrap=True)
    table.add_column("rel.\nnorm", justify="right", no_wrap=True)
    table.add_column("cos to\nbase", justify="right", no_wrap=True)
    table.add_column("top-20%\nenergy", justify="right", no_wrap=True)
    table.add_column("why", min_width=max([len(f.code) for f in report.findings] + [3]))
    shown = display_names([report.base, *report.models])
    for i, m in enumerate(report.models):
        g, word, style = model_status(report, m)
        codes = sorted({f.code for f in report.findings if f.model == m})
        table.add_row(
            shown[m],
            Text(f"{g} {word}", style=style),
            fmt(weights.relative_norm(i)),
            f"{weights.cosine_to_base(i):.4f}",
            fmt(whole.topk_energy(i), pct=True),
            ", ".join(codes) or "-",
        )
    return table


def header_text(report) -> Text:
    src = "from cache" if report.structure.get("from_cache") else f"analysed in {report.elapsed_s:.1f}s"
    t = Text()
    t.append("base ", "dim")
    t.append(report.base, "bold")
    t.append(f"   {report.n} fine-tune(s), {len(report.sites)} sites, density {report.density}, {src}", "dim")
    return t


class VerdictsView(VerticalScroll, can_focus=True):
    """Scrollable verdicts: header, per-model readiness table, findings with reasons."""

    HELP_TITLE = "Verdicts"
    DEFAULT_CSS = """
    VerdictsView { padding: 0 1; }
    VerdictsView > Static { margin-bottom: 1; }
    """

    def compose(self):
        yield Static(Text("No analysis yet: press o to open a model set.", style="dim"), id="verdicts-header")
        yield Static("", id="verdicts-summary")
        yield Static("", id="verdicts-findings")

    def show(self, report) -> None:
        self.query_one("#verdicts-header", Static).update(header_text(report))
        self.query_one("#verdicts-summary", Static).update(
            summary_renderable(report) if report.sites else Text("no comparable tensors", style="red")
        )
        self.query_one("#verdicts-findings", Static).update(findings_renderable(report))
