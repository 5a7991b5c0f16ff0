"""The merged model's card (README.md): front matter, plan, provenance of every input, readiness findings.

Provenance hashes: the card lists every input weight file with its size and modification time; sha256
is computed (streamed in 8 MiB blocks) when `hash_inputs` is true, or, by default, when all input
files together are at most `AUTO_HASH_LIMIT` bytes (multi-GB models are not hashed unless asked:
hashing 50 GB would add minutes to a merge). `mergescope merge --hash-inputs` asks.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mergescope._version import __version__
from mergescope.io.units import fmt_bytes

AUTO_HASH_LIMIT = 2 * 1024**3


def sha256_file(path: Path, block: int = 8 * 1024 * 1024) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(block)
        view = memoryview(buf)
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


@dataclass
class InputRecord:
    """One input model for the card's provenance table."""

    role: str  # base | model | tokenizer
    ref: str  # as written in the plan
    files: list[Path] = field(default_factory=list)


def provenance(inputs: Sequence[InputRecord], hash_inputs: bool | None = None) -> list[dict]:
    """Per input weight file: size, mtime and (when hashing) sha256."""
    all_files = [f for rec in inputs for f in rec.files]
    total = sum(f.stat().st_size for f in all_files if f.is_file())
    do_hash = hash_inputs if hash_inputs is not None else total <= AUTO_HASH_LIMIT
    rows = []
    cache: dict[Path, str] = {}
    for rec in inputs:
        for f in rec.files:
            st = f.stat()
            row = {
                "role": rec.role,
                "model": rec.ref,
                "file": str(f),
                "size": st.st_size,
                "mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime)),
            }
            if do_hash:
                if f not in cache:
                    cache[f] = sha256_file(f)
                row["sha256"] = cache[f]
            rows.append(row)
    return rows


def model_card(
    *,
    name: str,
    method: str,
    base: str | None,
    models: Sequence[str],
    plan_yaml: str,
    provenance_rows: Sequence[dict],
    out_dtype: str | None,
    n_tensors: int,
    total_bytes: int,
    description: str = "",
    analysis=None,
    notes: str | None = None,
    seed: int | None = None,
) -> str:
    """README.md with Hugging Face front matter (base_model, tags) and the plan and provenance;
    `notes`: a Markdown section of the caller's (a soup's steps, the seed) before the footer."""
    import yaml

    bases = ([base] if base else []) + [m for m in models if m != base]
    front = {"base_model": bases, "library_name": "transformers", "tags": ["merge", "mergescope"]}
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        f"This model is a merge of pre-trained language models made with mergescope {__version__}.",
        "",
        "## Merge details",
        "",
        f"- Method: `{method}`" + (f" ({description})" if description else ""),
        f"- Base model: `{base}`" if base else "- Base model: none",
        *([f"- Seed: {seed} (randomised methods repeat bit for bit with it)"] if seed is not None else []),
        "- Models merged:",
    ]
    lines += [f"  - `{m}`" for m in models]
    lines += [
        f"- Output: {n_tensors} tensors, {fmt_bytes(total_bytes)}" + (f", {out_dtype}" if out_dtype else ""),
        "",
        "## Configuration",
        "",
        "The plan below (also saved as `merge_plan.yml`) is a mergekit 0.1.x config:",
        "",
        "```yaml",
        plan_yaml.rstrip(),
        "```",
        "",
        "## Provenance",
        "",
    ]
    hashed = any("sha256" in r for r in provenance_rows)
    lines.append("| role | model | file | size | modified | sha256 |")
    lines.append("|---|---|---|---:|---|---|")
    for r in provenance_rows:
        lines.append(
            f"| {r['role']} | `{r['model']}` | `{Path(r['file']).name}` | {r['size']} | {r['mtime']} | "
            f"{r.get('sha256', 'not computed')} |"
        )
    if not hashed:
        lines += [
            "",
            "sha256 was not computed for these (large) inputs; size and modification time identify them. "
            "Run `mergescope merge --hash-inputs` to record hashes.",
        ]
    lines += ["", "## Merge-readiness at merge time", ""]
    lines += _analysis_section(analysis)
    if notes:
        lines += ["", notes.rstrip()]
    lines += ["", f"Tool: mergescope {__version__}", ""]
    return "\n".join(lines)


def _analysis_section(report) -> list[str]:
    """Findings and per-model summary of the analysis the merge was planned on (or how to get one)."""
    if report is None:
        return [
            "No analysis was on record for these inputs. Run `mergescope analyze BASE MODEL...` before "
            "merging (the merge then finds it in the cache) to record the merge-readiness findings here."
        ]
    whole, weights = report.whole(), report.weights()
    out = [
        f"Analysed by mergescope (trim density {report.density}); base `{report.base}`.",
        "",
        "| model | relative norm | cosine to base | relative norm, all tensors |",
        "|---|---:|---:|---:|",
    ]
    for i, m in enumerate(report.models):
        out.append(
            f"| `{m}` | {weights.relative_norm(i):.3f} | {weights.cosine_to_base(i):.4f} | {whole.relative_norm(i):.3f} |"
        )
    out += ["", f"Relative norm and cosine to base over the {report.weights_scope()}, as the findings judge.", ""]
    if report.findings:
        out += [
            f"- **{f.severity}** `{f.code}`" + (f" ({f.model})" if f.model else "") + f": {f.message}"
            for f in report.findings
        ]
    else:
        out.append("No findings: the inputs looked merge-ready.")
    return out


def append_to_card(output_dir: Path, section: str) -> None:
    """Add a Markdown section to a written model's README.md (before its footer), atomically."""
    import os
    import tempfile

    card = Path(output_dir) / "README.md"
    text = card.read_text(encoding="utf-8")
    footer = f"\nTool: mergescope {__version__}\n"
    head, sep, tail = text.rpartition(footer)
    new = (head + "\n" + section.rstrip() + "\n" + sep + tail) if sep else text.rstrip() + "\n\n" + section + "\n"
    fd, tmp = tempfile.mkstemp(dir=card.parent, prefix=".README-", suffix=".md")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(new)
    os.replace(tmp, card)
