"""Fetching Hugging Face models before a command opens them.

`fetch` is what the commands call first: for each repo id not in the cache (`hub_ref`) it reads only
the configs and the safetensors headers (HTTP range reads), checks them against the base
(`hub_check`) so that a wrong architecture, shape or vocabulary is reported before a multi-GB
download, then downloads the weights, configs and tokenizer files with the hub's own progress bars.
Every error is an InputError naming the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mergescope.io import hub_check
from mergescope.io.errors import InputError
from mergescope.io.hub_ref import HubRef, cache_dir, complete, hf_module, hub_error, local_dir, offline, parse
from mergescope.io.units import fmt_bytes


# -------------------------------------------------------------------------------------------- fetch
def fetch(
    refs: list[str],
    base: str | None = None,
    say: Callable[[str], None] = print,
    local: Callable[[str], Path | None] | None = None,
) -> dict[str, Path]:
    """Download every repo-id reference not yet in the cache, after checking the configs and safetensors
    headers of all of them against `base` (when given). Returns {reference: snapshot folder} for the
    repo ids. `local(ref)` gives a non-hub reference's folder (default: the path as given)."""
    local = local or (lambda r: Path(r).expanduser() if Path(r).expanduser().exists() else None)
    refs = list(dict.fromkeys(p for r in refs for p in _parts(r, local)))
    hub_refs = {r: parse(r) for r in refs if local(r) is None and parse(r) is not None}
    found = {r: local_dir(h) for r, h in hub_refs.items()}
    missing = [r for r, d in found.items() if d is None]
    if not missing:
        return {r: d for r, d in found.items() if d is not None}
    if offline():
        raise InputError(
            f"{missing[0]}: no such file or directory, and not in the Hugging Face cache ({cache_dir()}) while "
            "HF_HUB_OFFLINE is set; download it once online (unset HF_HUB_OFFLINE), or fix the path"
        )
    remote = {r: hub_check.remote_header(hub_refs[r], r) for r in missing}
    headers = {}
    for r in refs:
        folder = found.get(r) or local(r)
        headers[r] = remote.get(r) or (hub_check.local_header(folder, r) if folder is not None else None)
    if base is not None:
        base = next((p for p in _parts(base, local)), base)
    if base in headers and headers[base] is not None:
        errors, warnings = hub_check.compare_all(headers[base], [h for r, h in headers.items() if r != base and h])
        for w in warnings:
            say(f"warning: {w}")
        if errors:
            raise InputError(
                f"{errors[0]}{f' (and {len(errors) - 1} more)' if len(errors) > 1 else ''}; nothing was "
                "downloaded — pick models of the same architecture and size as the base"
            )
    for r in missing:
        h = remote[r]
        say(f"downloading {r} ({len(h.files)} files, {fmt_bytes(h.download_bytes)}) into {cache_dir()}")
        found[r] = _download(hub_refs[r], h.files, r)
    return {r: d for r, d in found.items() if d is not None}


def _parts(ref: str, local) -> list[str]:
    """`BASE+ADAPTER` (mergekit's LoRA syntax) is two references."""
    if local(ref) is not None or parse(ref) is not None or "+" not in ref:
        return [ref]
    return ref.rsplit("+", 1)


def _download(hub_ref: HubRef, files: list[str], shown: str) -> Path:
    hf = hf_module()
    try:
        folder = hf.snapshot_download(hub_ref.repo, revision=hub_ref.revision, allow_patterns=files)
    except Exception as exc:
        raise hub_error(exc, shown) from None
    if not complete(Path(folder)):
        raise InputError(f"{shown}: the download holds no model weights; check the repo id and revision")
    return Path(folder)
