"""`compare`'s report as a file to send: one self-contained HTML page (tables, plots as inline SVG, the
passages where the merge lost), or Markdown. Templates with Jinja2, plots with matplotlib (the `report`
extra); nothing is fetched when the page opens."""

from __future__ import annotations

import io
from importlib import resources


def _need(module: str):
    import importlib

    from mergescope.io.errors import InputError
    from mergescope.io.extras import install_hint

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(
            f"--report needs {module.split('.')[0]}, which is not installed: {install_hint('report')}"
        ) from None


def _template(name: str):
    jinja2 = _need("jinja2")
    text = resources.files("mergescope.tui").joinpath("templates", name).read_text(encoding="utf-8")
    return jinja2.Environment(autoescape=name.endswith(".html.j2")).from_string(text)


def _context(table: dict, pairs: list, models, parents, top: int) -> dict:
    from mergescope._version import __version__
    from mergescope.score.stats import interval

    texts = list(next(iter(table.values())))

    def cell(s):
        iv = interval(s)
        return f"{s.value:.4f}" + (f" ± {iv.half:.4f}" if iv else "")

    rows = [{"label": label, "cells": [cell(row[t]) for t in texts]} for label, row in table.items()]
    out = []
    for p in pairs:
        d = p.diff
        out.append(
            {
                "text": p.text,
                "model": p.model,
                "parent": p.parent,
                "diff": f"{d.value:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]" if d else "n/a",
                "verdict": p.verdict,
                "css": {"better": "better", "worse": "worse"}.get(p.verdict, "noise"),
                "passages": len(p.passages),
                "regressed": len(p.regressed),
                "share": f"{p.regressed_share:.0%}",
                "worst": p.worst(top),
                "best": p.best(top),
                "pair": p,
            }
        )
    some = next(iter(next(iter(table.values())).values()))
    return {
        "models": list(models),
        "parents": list(parents),
        "texts": texts,
        "rows": rows,
        "pairs": out,
        "threshold": f"{pairs[0].threshold:g}" if pairs else "",
        "metric": "bits per byte" if some.is_bits else "score",
        "direction": "higher is better" if some.higher_is_better else "lower is better",
        "version": __version__,
    }


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _plots(ctx: dict, table: dict) -> None:
    """The scores with their intervals, and each pair's per-passage differences, as inline SVG."""
    matplotlib = _need("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mergescope.score.stats import interval

    texts, labels = ctx["texts"], list(table)
    fig, ax = plt.subplots(figsize=(min(10, 2 + 1.2 * len(texts) * len(labels) / 2), 3))
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        xs = [i + k * width for i in range(len(texts))]
        ys = [table[label][t].value for t in texts]
        errs = [[0, 0]] * len(texts)
        ivs = [interval(table[label][t]) for t in texts]
        errs = [[y - iv.lo if iv else 0 for y, iv in zip(ys, ivs)], [iv.hi - y if iv else 0 for y, iv in zip(ys, ivs)]]
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=label)
    ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(texts))], texts)
    ax.set_ylabel(ctx["metric"])
    lows = [table[lab][t].value for lab in labels for t in texts]
    ax.set_ylim(min(lows) * 0.9, max(lows) * 1.05)
    ax.legend(fontsize="small")
    ctx["scores_svg"] = _svg(fig)
    plt.close(fig)
    for p in ctx["pairs"]:
        ps = p["pair"].passages
        if not ps:
            continue
        fig, ax = plt.subplots(figsize=(9, 2.2))
        ax.bar(range(len(ps)), [q.delta for q in ps], color=["#a11" if q.delta > 0 else "#176117" for q in ps])
        ax.axhline(0, color="#444", linewidth=0.6)
        ax.axhline(p["pair"].threshold, color="#a11", linewidth=0.5, linestyle="--")
        ax.set_xlabel("passage")
        ax.set_ylabel("Δ bits per byte")
        p["svg"] = _svg(fig)
        plt.close(fig)


def render(kind: str, table: dict, pairs: list, models, parents, top: int = 5) -> str:
    """The report as `html` or `md` text."""
    ctx = _context(table, pairs, models, parents, top)
    if kind == "html":
        _plots(ctx, table)
        return _template("compare.html.j2").render(**ctx)
    return _template("compare.md.j2").render(**ctx)
