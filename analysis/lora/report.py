"""What a LoRA extraction kept: per matrix and per layer group, the share of the task vector's energy.

Why separate: the CLI's table, the adapter's README.md and `--json` all read the same numbers from here.
"Kept" is Σ kept σ² / ‖Δ‖²_F; "kept (all)" also counts the tensors saved whole (exact) and lost (0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mergescope._version import __version__
from mergescope.io.naming import GROUPS
from mergescope.io.units import fmt_bytes


@dataclass
class MatrixResult:
    """One LoRA'd matrix: its rank and how much of ‖Δ‖²_F the rank keeps."""

    name: str
    group: str
    layer: int | None
    shape: tuple[int, int]
    rank: int
    energy: float  # ‖Δ‖²_F
    kept: float  # Σ kept σ²

    @property
    def kept_share(self) -> float:
        return min(1.0, self.kept / self.energy) if self.energy else 1.0


@dataclass
class TensorNote:
    """A changed tensor saved whole, or lost (why says why)."""

    name: str
    group: str
    energy: float
    why: str = ""


@dataclass
class GroupStats:
    group: str
    lora: int = 0
    full: int = 0
    lost: int = 0
    ranks: list[int] = field(default_factory=list)
    energy_lora: float = 0.0
    kept_lora: float = 0.0
    energy_full: float = 0.0
    energy_lost: float = 0.0

    @property
    def changed(self) -> int:
        return self.lora + self.full + self.lost

    @property
    def kept_share_lora(self) -> float | None:
        return min(1.0, self.kept_lora / self.energy_lora) if self.energy_lora else None

    @property
    def kept_share_all(self) -> float | None:
        total = self.energy_lora + self.energy_full + self.energy_lost
        return min(1.0, (self.kept_lora + self.energy_full) / total) if total else None


@dataclass
class ExtractResult:
    output_dir: Path
    base: str
    model: str
    rank: int
    sv_threshold: float | None
    solver: str
    device: str
    matrices: list[MatrixResult]
    full: list[TensorNote]
    lost: list[TensorNote]
    unchanged: int
    adapter_bytes: int
    seconds: float

    def groups(self) -> dict[str, GroupStats]:
        """Per layer group (naming.GROUPS order, then "all"), only groups with a changed tensor."""
        stats = {g: GroupStats(g) for g in (*GROUPS, "all")}
        for m in self.matrices:
            for s in (stats[m.group], stats["all"]):
                s.lora += 1
                s.ranks.append(m.rank)
                s.energy_lora += m.energy
                s.kept_lora += m.kept
        for notes, kind in ((self.full, "full"), (self.lost, "lost")):
            for t in notes:
                for s in (stats[t.group], stats["all"]):
                    setattr(s, kind, getattr(s, kind) + 1)
                    setattr(s, f"energy_{kind}", getattr(s, f"energy_{kind}") + t.energy)
        return {g: s for g, s in stats.items() if s.changed}

    def to_dict(self) -> dict:
        groups = {
            g: {
                "lora": s.lora,
                "saved_whole": s.full,
                "lost": s.lost,
                "rank_min": min(s.ranks, default=None),
                "rank_max": max(s.ranks, default=None),
                "energy": s.energy_lora + s.energy_full + s.energy_lost,
                "kept_share_lora": s.kept_share_lora,
                "kept_share_all": s.kept_share_all,
            }
            for g, s in self.groups().items()
        }
        return {
            "output": str(self.output_dir),
            "base": self.base,
            "model": self.model,
            "rank": self.rank,
            "sv_threshold": self.sv_threshold,
            "solver": self.solver,
            "device": self.device,
            "seconds": round(self.seconds, 3),
            "adapter_bytes": self.adapter_bytes,
            "unchanged_tensors": self.unchanged,
            "groups": groups,
            "matrices": [
                {
                    "name": m.name,
                    "group": m.group,
                    "layer": m.layer,
                    "shape": list(m.shape),
                    "rank": m.rank,
                    "energy": m.energy,
                    "kept": m.kept,
                    "kept_share": m.kept_share,
                }
                for m in self.matrices
            ],
            "saved_whole": [{"name": t.name, "group": t.group, "energy": t.energy} for t in self.full],
            "lost": [{"name": t.name, "group": t.group, "energy": t.energy, "why": t.why} for t in self.lost],
        }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f} %"


def _ranks(ranks: list[int]) -> str:
    if not ranks:
        return "–"
    lo, hi = min(ranks), max(ranks)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def group_rows(result: ExtractResult) -> list[list[str]]:
    """The per-group table (CLI and card): group, changed, LoRA, rank, kept by LoRA, saved whole, lost, kept."""
    return [
        [g, str(s.changed), str(s.lora), _ranks(s.ranks), _pct(s.kept_share_lora), str(s.full), str(s.lost),
         _pct(s.kept_share_all)]
        for g, s in result.groups().items()
    ]  # fmt: skip


GROUP_HEADER = ["group", "changed", "LoRA", "rank", "kept (LoRA)", "whole", "lost", "kept (all)"]


def adapter_card(result: ExtractResult) -> str:
    """README.md of the adapter: what it approximates, the rank rule, and the energy table."""
    rule = f"rank {result.rank}" + (
        f", or less where {result.sv_threshold:g} of Σσ² is kept at a lower rank" if result.sv_threshold else ""
    )
    lines = [
        "---",
        f"base_model: {json.dumps(result.base)}",
        "library_name: peft",
        "tags: [lora, mergescope, extracted-lora]",
        "---",
        "",
        "# LoRA extracted by mergescope",
        "",
        f"`B·A` approximates the task vector `{result.model} − {result.base}` of each matrix by its truncated SVD "
        f"({rule}; solver `{result.solver}`, float32, scale alpha/r = 1). Kept: Σ kept σ² / ‖Δ‖²_F; "
        "'whole': tensors saved whole (PEFT modules_to_save, exact); 'kept (all)' counts them as kept "
        "and the lost ones as 0.",
        "",
        "| " + " | ".join(GROUP_HEADER) + " |",
        "|---|" + "---:|" * (len(GROUP_HEADER) - 1),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in group_rows(result)]
    if result.lost:
        lines += ["", f"Lost (changed, but not in the adapter): {len(result.lost)} tensors", ""]
        lines += [f"- `{t.name}`: {t.why}" for t in result.lost[:40]]
        if len(result.lost) > 40:
            lines.append(f"- … and {len(result.lost) - 40} more")
    lines += ["", f"Adapter tensors: {fmt_bytes(result.adapter_bytes)}. Written by mergescope {__version__}.", ""]
    return "\n".join(lines)
