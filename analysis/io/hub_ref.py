"""Hugging Face repo ids as model references: `org/name` or `org/name@revision` (huggingface_hub, the
`hub` extra). A reference that is not a local path but reads as a repo id resolves to its complete
snapshot in the local Hugging Face cache, with no network, so it works offline. Downloading is
`mergescope.io.hub.fetch`'s job."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mergescope.io.errors import InputError
from mergescope.io.extras import install_hint

_REPO = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?")
_NOT_REPO_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".yaml", ".yml")
WEIGHTS = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class HubRef:
    repo: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo + (f"@{self.revision}" if self.revision else "")


def parse(ref) -> HubRef | None:
    """The repo id (and revision) a reference names, when it is not a local path and reads as one."""
    s = str(ref)
    if Path(s).expanduser().exists() or s.startswith((".", "/", "~")):
        return None
    m = _REPO.fullmatch(s)
    if m is None or m["repo"].lower().endswith(_NOT_REPO_SUFFIXES):
        return None
    return HubRef(m["repo"], m["rev"])


def hf_module():
    """huggingface_hub, or the InputError that says how to install it."""
    try:
        import huggingface_hub
    except ImportError:
        raise InputError(
            f"Hugging Face repo ids need huggingface_hub, which is not installed: {install_hint('hub')}"
        ) from None
    return huggingface_hub


def cache_dir() -> str:
    """The Hugging Face cache the snapshots are looked up in (HF_HUB_CACHE / HF_HOME)."""
    return str(hf_module().constants.HF_HUB_CACHE)


def local_dir(ref) -> Path | None:
    """The complete snapshot of a repo-id reference in the local cache (no network), else None."""
    hub_ref = ref if isinstance(ref, HubRef) else parse(ref)
    if hub_ref is None:
        return None
    try:
        import huggingface_hub
    except ImportError:
        return None
    for marker in ("config.json", "adapter_config.json"):
        hit = huggingface_hub.try_to_load_from_cache(hub_ref.repo, marker, revision=hub_ref.revision)
        if isinstance(hit, str) and complete(Path(hit).parent):
            return Path(hit).parent
    return None


def complete(folder: Path) -> bool:
    """Does a snapshot hold a model's weights (every shard its index lists) or an adapter's?"""
    import json

    for index in WEIGHTS:
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text()).get("weight_map", {}).values())
            except (OSError, ValueError, AttributeError):
                return False
            return bool(shards) and all((folder / s).is_file() for s in shards)
    names = ("model.safetensors", "pytorch_model.bin", *ADAPTER_WEIGHTS)
    return any((folder / n).is_file() for n in names) or any(folder.glob("*.safetensors"))


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_error(exc: Exception, shown: str) -> InputError:
    """One line for what the hub said about a reference, with what to do."""
    kinds = {c.__name__ for c in type(exc).__mro__}
    if "RevisionNotFoundError" in kinds:
        return InputError(f"{shown}: no such revision on the Hugging Face Hub; check the part after '@'")
    if "GatedRepoError" in kinds:
        return InputError(f"{shown}: a gated repo; accept its licence on huggingface.co, then log in (`hf auth login`)")
    if "RepositoryNotFoundError" in kinds:
        return InputError(
            f"{shown}: no such file or directory, and no model of that name on the Hugging Face Hub "
            f"({hf_module().constants.ENDPOINT}); check the path or repo id (private repos need `hf auth login`)"
        )
    if kinds & {"EntryNotFoundError", "RemoteEntryNotFoundError", "NotASafetensorsRepoError"}:
        return InputError(f"{shown}: the repo lacks a file it lists ({_first_line(exc)}); check the revision")
    if isinstance(exc, InputError):
        return exc
    return InputError(
        f"{shown}: cannot reach the Hugging Face Hub ({type(exc).__name__}: {_first_line(exc)}); check the "
        "network, or download it elsewhere and copy the cache folder"
    )


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:160]
