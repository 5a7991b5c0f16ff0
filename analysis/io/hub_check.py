"""A model's header without its weights (config + tensor names and shapes), local or on the Hugging Face
Hub, and the checks that can run on headers alone: architecture, tensor shapes, vocabulary. They let
`hub.fetch` report a model that cannot be merged with the base before downloading gigabytes of it.

On the Hub the header costs a few small requests: the repo's file list, config.json, and each
safetensors file's JSON header (HTTP range reads of its first bytes, huggingface_hub's
`get_safetensors_metadata`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mergescope.io.errors import InputError
from mergescope.io.hub_ref import HubRef, hf_module, hub_error
from mergescope.io.naming import site_of

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class Header:
    label: str
    config: dict
    tensors: dict[str, tuple[int, ...]] | None  # None: not readable without the download (.bin weights)
    is_adapter: bool = False
    files: list[str] = field(default_factory=list)  # what a download fetches
    download_bytes: int = 0


def wanted_files(names: list[str]) -> list[str]:
    """The files of a repo a model needs: its weights in one format (safetensors when there), configs,
    tokenizer and model card; top level only (repos also hold other formats, e.g. Llama 3's
    original/consolidated.00.pth, which are never fetched)."""
    from mergescope.io.checkpoint.files import METADATA_FILES, TOKENIZER_FILES

    top = [n for n in names if "/" not in n]
    weights = [n for n in top if n.endswith(".safetensors") and n not in ADAPTER_WEIGHTS] or [
        n for n in top if n.startswith("pytorch_model") and n.endswith(".bin")
    ]
    index = INDEXES[0] if weights and weights[0].endswith(".safetensors") else INDEXES[1]
    weights += [n for n in top if n == index or n in ADAPTER_WEIGHTS]
    return sorted(set(weights) | {n for n in top if n in {*METADATA_FILES, *TOKENIZER_FILES}})


def remote_header(hub_ref: HubRef, shown: str) -> Header:
    """The header of a model on the Hub, from its file list, config and safetensors headers only."""
    hf = hf_module()
    api = hf.HfApi()
    try:
        info = api.model_info(hub_ref.repo, revision=hub_ref.revision, files_metadata=True)
        sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
        files = wanted_files(list(sizes))
        revision = info.sha or hub_ref.revision
        is_adapter = "adapter_config.json" in files and not any(
            n.endswith(".safetensors") and n not in ADAPTER_WEIGHTS or n.startswith("pytorch_model") for n in files
        )
        config = {}
        cfg_name = "adapter_config.json" if is_adapter else "config.json"
        if cfg_name in files:
            config = _json(hf.hf_hub_download(hub_ref.repo, cfg_name, revision=revision))
        tensors = None
        if not is_adapter and any(n.endswith(".safetensors") for n in files):
            meta = api.get_safetensors_metadata(hub_ref.repo, revision=revision)
            tensors = {n: tuple(t.shape) for fm in meta.files_metadata.values() for n, t in fm.tensors.items()}
    except InputError:
        raise
    except Exception as exc:
        raise hub_error(exc, shown) from None
    if not any(n.endswith((".safetensors", ".bin")) for n in files):
        raise InputError(
            f"{shown}: the repo holds no model weights (safetensors, pytorch_model.bin or a PEFT adapter); "
            "check the repo id and revision"
        )
    return Header(shown, config, tensors, is_adapter, files, sum(sizes.get(n, 0) for n in files))


def local_header(folder: Path, label: str) -> Header:
    """The header of a model on disk (opened, headers only)."""
    from mergescope.io.checkpoint import open_checkpoint

    ck = open_checkpoint(folder, label)
    try:
        tensors = {i.name: tuple(i.shape) for i in ck.infos()}
        return Header(label, dict(ck.config or {}), tensors, bool(ck.is_delta))
    finally:
        ck.close()


def _json(path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def compare_all(base: Header, models: list[Header]) -> tuple[list[str], list[str]]:
    """(errors, warnings) of each model's header against the base's."""
    errors: list[str] = []
    warnings: list[str] = []
    for m in models:
        e, w = compare(base, m)
        errors += e
        warnings += w
    return errors, warnings


def compare(base: Header, m: Header) -> tuple[list[str], list[str]]:
    """Errors: another architecture, tensors of other shapes, base tensors absent. Warnings: another
    vocabulary (mergeable with `tokenizer_source: union`), another head class."""
    if base.is_adapter or m.is_adapter:
        return [], []
    bt, mt = base.config.get("model_type"), m.config.get("model_type")
    if bt and mt and bt != mt:
        return [f"{m.label}: architecture {mt!r}, the base {base.label} is {bt!r}"], []
    warnings = []
    ba, ma = _arch(base.config), _arch(m.config)
    if ba and ma and ba != ma:
        warnings.append(f"{m.label}: a {ma}, the base {base.label} a {ba}; their heads may differ")
    vocab = None
    if base.tensors is not None and m.tensors is not None:
        shapes, rows = [], []
        for name, bshape in base.tensors.items():
            mshape = m.tensors.get(name)
            if mshape is None or mshape == bshape:
                continue
            if site_of(name).module in ("embed_tokens", "lm_head") and mshape[1:] == bshape[1:]:
                rows.append((name, bshape[0], mshape[0]))
            else:
                shapes.append((name, bshape, mshape))
        absent = [n for n in base.tensors if n not in m.tensors]
        errors = []
        if shapes:
            name, bshape, mshape = shapes[0]
            errors.append(
                f"{m.label}: {len(shapes)} tensors differ in shape from the base's, e.g. {name} "
                f"{list(mshape)} vs {list(bshape)} in {base.label}: another size or architecture"
            )
        if absent:
            errors.append(f"{m.label}: {len(absent)} of the base's tensors are absent, e.g. {absent[0]}")
        if errors:
            return errors, warnings
        if rows:
            vocab = (rows[0][2], rows[0][1])
    if vocab is None:
        bv, mv = base.config.get("vocab_size"), m.config.get("vocab_size")
        if isinstance(bv, int) and isinstance(mv, int) and bv != mv:
            vocab = (mv, bv)
    if vocab is not None:
        warnings.append(
            f"{m.label}: a vocabulary of {vocab[0]} tokens, the base {base.label} {vocab[1]}; merge with "
            "`tokenizer_source: union` (or `base`) to align them"
        )
    return [], warnings


def _arch(config: dict) -> str | None:
    arch = config.get("architectures")
    return arch[0] if isinstance(arch, list) and arch and isinstance(arch[0], str) else None
