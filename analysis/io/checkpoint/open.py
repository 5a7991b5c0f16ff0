"""Open a path as a checkpoint: a HF directory (single/sharded safetensors, .bin), a file, or an adapter;
a Hugging Face repo id opens its snapshot in the local cache."""

from __future__ import annotations

import os
from pathlib import Path

from mergescope.io import hub_ref
from mergescope.io.checkpoint.formats import SafetensorsFile, TorchBinFile
from mergescope.io.checkpoint.lora import LoraCheckpoint
from mergescope.io.checkpoint.model import Checkpoint, CheckpointError, read_json


def _open_safetensors_dir(path: Path, label: str) -> Checkpoint:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        idx = read_json(index, unique_keys=True, what="shard index")
        wm = idx.get("weight_map") if isinstance(idx, dict) else None
        if not isinstance(wm, dict) or not wm:
            raise CheckpointError(f"{index}: no 'weight_map' in the index; re-download it")
        shard_names = sorted(set(_shard_names(index, wm)))
        files = []
        for s in shard_names:
            sp = _shard_path(index, path, s, wm)
            if not sp.is_file():
                raise CheckpointError(f"{index}: lists shard {s}, which is missing; download it")
            files.append(SafetensorsFile(sp))
        pos = {s: i for i, s in enumerate(shard_names)}
        weight_map = {}
        for name, shard in wm.items():
            if name not in files[pos[shard]].entries:
                raise CheckpointError(f"{index}: says {name!r} is in {shard}, but that shard does not hold it")
            weight_map[name] = pos[shard]
        return Checkpoint(path, label, files, weight_map, path)
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(
            f"{path}: no model weights found (expected model.safetensors, a sharded index, or pytorch_model.bin)"
        )
    files = [SafetensorsFile(s) for s in shards]
    weight_map: dict[str, int] = {}
    for i, f in enumerate(files):
        for name in f.entries:
            if name in weight_map:
                raise CheckpointError(
                    f"{path}: tensor {name!r} appears in both {files[weight_map[name]].path.name} and {f.path.name}; remove stray files"
                )
            weight_map[name] = i
    return Checkpoint(path, label, files, weight_map, path)


def _open_bin_dir(path: Path, label: str) -> Checkpoint:
    index = path / "pytorch_model.bin.index.json"
    if index.is_file():
        idx = read_json(index, unique_keys=True, what="shard index") or {}
        wm = idx.get("weight_map") or {}
        if not isinstance(wm, dict):
            raise CheckpointError(f"{index}: 'weight_map' is not an object; re-download it")
        shard_names = sorted(set(_shard_names(index, wm)))
    else:
        shard_names, wm = ["pytorch_model.bin"], {}
    files = []
    for s in shard_names:
        sp = _shard_path(index, path, s, wm)
        if not sp.is_file():
            raise CheckpointError(f"{path / s}: missing; download it")
        files.append(TorchBinFile(sp))
    weight_map = {name: i for i, f in enumerate(files) for name in f.entries}
    return Checkpoint(path, label, files, weight_map, path)


def _shard_names(index: Path, wm: dict) -> list[str]:
    bad = next(((k, v) for k, v in wm.items() if not isinstance(v, str) or not v), None)
    if bad is not None:
        raise CheckpointError(f"{index}: weight_map entry {bad[0]!r} names no shard file; re-download the index")
    return list(wm.values())


def _shard_path(index: Path, folder: Path, name: str, wm: dict) -> Path:
    """The shard file an index names; it must lie inside the model folder once symlinks are followed
    (the Hugging Face cache's blobs/ of the same repository counts as inside: its snapshots link there)."""
    sp = folder / name
    real, root = Path(os.path.realpath(sp)), Path(os.path.realpath(folder))
    roots = [root]
    if root.parent.name == "snapshots":
        roots.append(root.parent.parent / "blobs")
    lexical = Path(os.path.normpath(name))
    if lexical.is_absolute() or lexical.parts[:1] == ("..",) or not any(r in real.parents for r in roots):
        entry = next(k for k, v in wm.items() if v == name)
        via = f" (a link to {real})" if not lexical.is_absolute() and lexical.parts[:1] != ("..",) else ""
        raise CheckpointError(
            f"{index}: weight_map entry {entry!r} names the shard {name!r}{via}, outside the model folder {folder}; "
            "shards must lie inside the model's folder — fix or re-download the index"
        )
    return sp


def open_checkpoint(path: str | os.PathLike, label: str | None = None) -> Checkpoint:
    """Open a HF directory, a .safetensors/.bin file, or a PEFT LoRA adapter directory."""
    p = Path(path).expanduser()
    label = label if label is not None else str(path)
    if not p.exists():
        p = hub_ref.local_dir(path) or p  # a Hugging Face repo id, from the local cache
    if not p.exists():
        if hub_ref.parse(path) is not None:
            raise CheckpointError(
                f"{path}: no such file or directory, and no complete download of that Hugging Face repo in the "
                f"cache; the mergescope commands download it when online (from Python: mergescope.io.hub.fetch)"
            )
        raise CheckpointError(f"{path}: no such file or directory; check the path")
    try:
        return _open(p, path, label)
    except PermissionError as exc:
        raise CheckpointError(f"{exc.filename or path}: permission denied; make it readable or copy it") from None


def _open(p: Path, path, label: str) -> Checkpoint:
    if p.is_file():
        if p.suffix == ".safetensors":
            f = SafetensorsFile(p)
            root = p.parent if (p.parent / "config.json").is_file() else None
            return Checkpoint(p, label, [f], {n: 0 for n in f.entries}, root)
        if p.suffix in (".bin", ".pt", ".pth"):
            f = TorchBinFile(p)
            root = p.parent if (p.parent / "config.json").is_file() else None
            return Checkpoint(p, label, [f], {n: 0 for n in f.entries}, root)
        raise CheckpointError(
            f"{path}: not a checkpoint (expected a model directory, a .safetensors or a .bin file); point at one"
        )
    if (p / "adapter_config.json").is_file():
        return LoraCheckpoint(p, label)
    if (p / "model.safetensors.index.json").is_file() or any(p.glob("*.safetensors")):
        return _open_safetensors_dir(p, label)
    if (p / "pytorch_model.bin").is_file() or (p / "pytorch_model.bin.index.json").is_file():
        return _open_bin_dir(p, label)
    entries = sorted(x.name for x in p.iterdir())
    if not entries:
        raise CheckpointError(f"{path}: no model weights found: the directory is empty; point at a model directory")
    seen = f"holds only {', '.join(entries[:4])}{' …' if len(entries) > 4 else ''}"
    raise CheckpointError(
        f"{path}: no model weights found ({seen}; expected model.safetensors, a sharded index, "
        "pytorch_model.bin, or a PEFT adapter); download the weights or point at the model directory"
    )


def open_models(base_path, model_paths, labels=None) -> tuple[Checkpoint, list[Checkpoint]]:
    """Open a base and its fine-tunes; LoRA adapters become base+delta views.

    `labels` (base first, then models) name them in reports; the paths as given by default."""
    labels = list(labels) if labels else [None] * (1 + len(model_paths))
    base = open_checkpoint(base_path, labels[0])
    if base.is_delta:
        raise CheckpointError(f"{base_path}: is a LoRA adapter; the base must be a full model")
    models = []
    for mp, label in zip(model_paths, labels[1:]):
        ck = open_checkpoint(mp, label)
        if isinstance(ck, LoraCheckpoint):
            ck = ck.with_base(base)
        models.append(ck)
    return base, models
