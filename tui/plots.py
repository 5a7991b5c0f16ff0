"""The plots of sweeps and tuning trials, drawn once for both faces: the CLI prints them (plotext, no
colours) and the app draws them in a textual-plotext widget, whose `plt` has plotext's API."""

from __future__ import annotations

MARKERS = ("braille", "•", "+", "x", "*", "o")  # told apart without colour
MAX_TEXTS = 4  # texts plotted, one above the other


def draw_sweep(plt, result, stale: bool = False) -> None:
    """One small plot per text (each on its own scale: texts differ by more than a sweep moves them),
    the best point of each marked ✱ as in the table."""
    texts = result.texts[:MAX_TEXTS]
    unit = "bits per byte" if next(iter(result.scores[0].values())).is_bits else "score"
    plt.subplots(len(texts), 1)
    for k, name in enumerate(texts):
        sub = plt.subplot(k + 1, 1)
        i = result.best(name)
        best = result.values[i]
        sub.plot(result.values, [row[name].value for row in result.scores], marker=MARKERS[k % len(MARKERS)])
        sub.scatter([best], [result.scores[i][name].value], marker="✱", color="red")
        sub.xticks(result.values, [f"{v:g}" for v in result.values])
        sub.title(f"{name}: best {result.param} = {best:g}" + ("  (stale)" if stale else ""))
        if k == len(texts) - 1:
            sub.xlabel(f"{result.param} · {unit}")


def draw_trials(plt, trials, higher_is_better: bool, metric: str = "bits per byte") -> None:
    """The objective of every complete trial against its number, and the best so far."""
    done = sorted((t for t in trials if t.state == "complete" and t.value is not None), key=lambda t: t.number)
    if done:
        xs, ys = [t.number for t in done], [t.value for t in done]
        pick = max if higher_is_better else min
        plt.scatter(xs, ys, label="trial", marker="•")
        plt.plot(xs, [pick(ys[: i + 1]) for i in range(len(ys))], label="best so far", marker="braille")
        plt.xticks(xs if len(xs) <= 10 else xs[:: max(1, len(xs) // 8)])
    plt.xlabel("trial")
    plt.title(f"{metric} per trial")


def text_figure(draw, width: int = 80, height: int = 16) -> str:
    """A drawing as plain text, for the terminal (`draw(plt)` draws it)."""
    import plotext as plt

    plt.clear_figure()
    draw(plt)
    plt.plotsize(width, height)
    plt.theme("clear")
    return plt.uncolorize(plt.build())
