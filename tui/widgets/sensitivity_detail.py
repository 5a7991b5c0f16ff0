"""The cell detail of the sensitivity heatmap: what the gradient under the cursor means for the text, the
first-order change of one table step, and the same cell for every text and every model of the plan."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from mergescope.tui.format import short_names
from mergescope.tui.state.heatdata import ALL
from mergescope.tui.state.plan_state import STEP
from mergescope.tui.state.sensitivity_map import SENSITIVITY, SensitivityMap, cell_gradient
from mergescope.tui.widgets.heatmap import DIVERGING

HELPS, HURTS = DIVERGING[-2], DIVERGING[1]  # the map's blue and red (its palette is flipped: low is good)


def _signed(g: float | None) -> Text:
    if g is None:
        return Text("·", "dim")
    return Text(f"{g:+.3g}", HELPS if g < 0 else (HURTS if g > 0 else ""))


def sensitivity_detail(
    smap: SensitivityMap, models: list[str], row: tuple, col: str, model: int, text: str, note: str = ""
) -> Group:
    label, layer, group = row
    where = label if col == ALL else f"{label} · {col}"
    short = short_names(models, 11)
    name = short[model]
    g = cell_gradient(smap, text, model, row, col)
    parts = [Text.assemble((where, "bold"), f"   {name}'s weight, ", ("for " + text, "bold"))]
    if note:
        parts.append(Text(note, "yellow"))
    if model not in smap.chosen:
        parts.append(Text(f"{name} is not in the plan that was differentiated: no gradient", "dim"))
        return Group(*parts)
    if g is None:
        parts.append(Text("no table cell here (the groups' cells are in the block rows)", "dim"))
        return Group(*parts)
    groups = [group] if layer is None else ([col] if col != ALL else None)
    now = None if groups is None else smap.start_at(model, layer, groups[0])
    parts.append(Text.assemble((SENSITIVITY.label, "cyan"), " = ", (f"{g:.5g}", "bold")))
    if col == ALL and layer is not None:
        parts.append(Text("the sum over the layer's groups: the weight raised in the whole layer", "italic"))
    step = STEP["weight"]
    verb = "helps" if g < 0 else ("hurts" if g > 0 else "does nothing to")
    parts.append(
        Text(
            f"more of {name} here {verb} {text}: + {step:g} on the weight"
            + (f" (now {now:.3g})" if now is not None else "")
            + f" → about {g * step:+.2g} bits/byte, to first order",
        )
    )
    per_text = Table(box=None, header_style="bold", padding=(0, 1, 0, 0), expand=False, title_justify="left")
    per_text.add_column("text", no_wrap=True, overflow="ellipsis", max_width=16)
    per_text.add_column("∂/∂w", justify="right")
    per_text.add_column("bits/byte", justify="right")
    for t in smap.text_choices():
        per_text.add_row(t, _signed(cell_gradient(smap, t, model, row, col)), f"{smap.value(t):.4f}")
    parts.append(per_text)
    per_model = Table(box=None, header_style="bold", padding=(0, 1, 0, 0), expand=False)
    per_model.add_column(f"model ({text[:12]})", no_wrap=True, overflow="ellipsis", max_width=20)
    per_model.add_column("∂/∂w", justify="right")
    for i in smap.chosen:
        per_model.add_row(short[i], _signed(cell_gradient(smap, text, i, row, col)))
    parts.append(per_model)
    parts.append(
        Text(
            f"at {smap.what}, per layer, on the whole texts (bits/byte: there). "
            "Negative: more helps (blue); positive: hurts (red)",
            "dim",
        )
    )
    return Group(*parts)
