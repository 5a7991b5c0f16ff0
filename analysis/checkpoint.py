"""Open a checkpoint and read it one tensor at a time, never the whole model.

Safetensors files are memory-mapped and tensors are zero-copy views into the mapping, so reading
a tensor costs page-cache traffic only. `.bin` files go through `torch.load(mmap=True)`. A PEFT LoRA
adapter opens as its own checkpoint of full-shape deltas; `with_base()` turns it into a fine-tune view
(base + B@A*scale, computed lazily per tensor) that analysis and merging treat like any fine-tune.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
if hasattr(torch, "float8_e4m3fn"):
    SAFETENSORS_DTYPES["F8_E4M3"] = torch.float8_e4m3fn
    SAFETENSORS_DTYPES["F8_E5M2"] = torch.float8_e5m2
DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
# Files whose content defines the token <-> id mapping (tokenizer_config only carries options).
_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "spiece.model")


class CheckpointError(InputError):
    """A path that is not a readable checkpoint; the message names the file and what to do."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, str(self.dtype).replace("torch.", ""))


class _SafetensorsFile:
    """One memory-mapped .safetensors file; tensors are views into the mapping."""

    def __init__(self, path: Path):
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as fh:
                head = fh.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{path}: file is too short to be safetensors ({size} bytes); re-download it")
                (hlen,) = struct.unpack("<Q", head)
                if hlen <= 0 or hlen > min(size - 8, 100_000_000):
                    raise CheckpointError(
                        f"{path}: corrupt safetensors header (declared length {hlen}, file {size} bytes); re-download the file"
                    )
                header = json.loads(fh.read(hlen))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(
                f"{path}: corrupt safetensors header ({exc.__class__.__name__}); re-download the file"
            ) from None
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read ({exc.strerror}); check the path and permissions") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + hlen
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, meta in header.items():
            try:
                dtype = SAFETENSORS_DTYPES[meta["dtype"]]
                start, end = meta["data_offsets"]
                shape = tuple(int(s) for s in meta["shape"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(
                    f"{path}: tensor {name!r} has an unreadable header entry ({meta!r}); re-download the file"
                ) from None
            if self.data_start + end > size:
                raise CheckpointError(
                    f"{path}: tensor {name!r} extends past the end of the file (truncated download?); re-download the file"
                )
            self.entries[name] = (dtype, shape, start, end)
        self._mm: mmap.mmap | None = None

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            with open(self.path, "rb") as fh:
                # ACCESS_COPY: private mapping, writable (torch wants that) but never written back.
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._mm

    def get(self, name: str) -> torch.Tensor:
        dtype, shape, start, end = self.entries[name]
        count = (end - start) // max(1, torch.empty((), dtype=dtype).element_size())
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        flat = torch.frombuffer(self._map(), dtype=dtype, count=count, offset=self.data_start + start)
        return flat.view(shape)

    def release(self, name: str) -> None:
        """Drop the pages of one tensor from this process (they stay in the page cache).

        Without this, every page ever read stays mapped and counts in RSS, so reading a model
        tensor by tensor would still 'use' the whole model's size. Safe for a private read-only
        mapping: a later access re-reads the same bytes from the file."""
        if self._mm is None or not hasattr(self._mm, "madvise"):
            return
        _, _, start, end = self.entries[name]
        page = mmap.PAGESIZE
        lo = (self.data_start + start) // page * page
        hi = min(len(self._mm), -(-(self.data_start + end) // page) * page)
        if hi > lo:
            try:
                self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):
                pass

    def release_range(self, name: str, start: int, stop: int) -> None:
        """`release` for elements [start, stop) of the flattened tensor (whole pages inside it only),
        so a tensor streamed in chunks never has more than a few chunks mapped."""
        if self._mm is None or not hasattr(self._mm, "madvise"):
            return
        dtype, _, off, end = self.entries[name]
        size = torch.empty((), dtype=dtype).element_size()
        page = mmap.PAGESIZE
        lo = -(-(self.data_start + off + start * size) // page) * page
        hi = min(self.data_start + off + stop * size, self.data_start + end) // page * page
        if hi > lo:
            try:
                self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        # Views may still reference the mapping; dropping our handle lets GC close it when they go.
        self._mm = None


class _TorchBinFile:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises many types for bad pickles
            raise CheckpointError(
                f"{path}: not a loadable PyTorch state dict ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]})"
            ) from None
        if isinstance(self.state, dict) and "state_dict" in self.state and isinstance(self.state["state_dict"], dict):
            self.state = self.state["state_dict"]
        if not isinstance(self.state, dict):
            raise CheckpointError(f"{path}: holds a {type(self.state).__name__}, not a state dict of tensors")
        self.entries = {k: (v.dtype, tuple(v.shape)) for k, v in self.state.items() if isinstance(v, torch.Tensor)}

    def get(self, name: str) -> torch.Tensor:
        return self.state[name]

    def release(self, name: str) -> None:
        pass

    def close(self) -> None:
        pass


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); fix or remove the file") from None


def _front_matter(readme: Path) -> dict:
    if not readme.is_file():
        return {}
    try:
        text = readme.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return {}
    import yaml

    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


class Checkpoint:
    """A model's tensors (by name) plus the metadata needed to judge merge-readiness."""

    is_delta = False  # True for LoRA adapters opened on their own (tensors are deltas)

    def __init__(self, path: Path, label: str, files: list, weight_map: dict[str, int], root: Path | None):
        self.path = path
        self.label = label
        self._files = files
        self._where = weight_map  # name -> index into files
        self.root = root  # directory holding config/tokenizer files, if any
        self.config: dict = (_read_json(root / "config.json") if root else None) or {}
        self._infos: dict[str, TensorInfo] = {}
        for name, idx in weight_map.items():
            entry = files[idx].entries[name]
            self._infos[name] = TensorInfo(name, entry[1], entry[0])

    # -- tensors ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def __len__(self) -> int:
        return len(self._infos)

    def info(self, name: str) -> TensorInfo:
        return self._infos[name]

    def infos(self) -> Iterable[TensorInfo]:
        return self._infos.values()

    def get(self, name: str) -> torch.Tensor:
        """The stored tensor (stored dtype, CPU, memory-mapped where possible)."""
        try:
            return self._files[self._where[name]].get(name)
        except KeyError:
            raise KeyError(f"{self.label}: no tensor named {name!r}") from None

    def release(self, name: str) -> None:
        """Done with this tensor for now: let its memory-mapped pages go (see _SafetensorsFile)."""
        idx = self._where.get(name)
        if idx is not None:
            self._files[idx].release(name)

    def release_range(self, name: str, start: int, stop: int) -> None:
        """`release` for elements [start, stop) of the flattened tensor; a no-op where the tensor is
        not a plain memory-mapped one (.bin files, LoRA views)."""
        idx = (getattr(self, "_where", None) or {}).get(name)
        if idx is not None and hasattr(self._files[idx], "release_range"):
            self._files[idx].release_range(name, start, stop)

    @property
    def weight_files(self) -> list[Path]:
        return [f.path for f in self._files]

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self._infos.values())

    @property
    def total_params(self) -> int:
        return sum(i.numel for i in self._infos.values())

    def close(self) -> None:
        for f in self._files:
            f.close()

    # -- metadata --------------------------------------------------------------------------
    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def architecture(self) -> str | None:
        arch = self.config.get("architectures")
        return arch[0] if isinstance(arch, list) and arch else None

    @property
    def vocab_size(self) -> int | None:
        v = self.config.get("vocab_size")
        return int(v) if isinstance(v, int) else None

    @property
    def num_layers(self) -> int | None:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(self.config.get(key), int):
                return self.config[key]
        from .naming import layer_count

        return layer_count(self._infos) or None

    @property
    def name_or_path(self) -> str | None:
        return self.config.get("_name_or_path") or None

    @property
    def declared_base(self) -> str | None:
        """`base_model` from the model card front matter (or adapter config), if any."""
        if self.root is None:
            return None
        bm = _front_matter(self.root / "README.md").get("base_model")
        if isinstance(bm, list):
            bm = bm[0] if bm else None
        return str(bm) if bm else None

    def tokenizer_files(self) -> list[Path]:
        if self.root is None:
            return []
        return [self.root / f for f in TOKENIZER_FILES if (self.root / f).is_file()]

    def tokenizer_fingerprint(self) -> str | None:
        """Hash of the files that define the vocabulary; None when the checkpoint ships none."""
        if self.root is None:
            return None
        h = hashlib.sha256()
        found = False
        for f in _VOCAB_FILES:
            p = self.root / f
            if p.is_file():
                found = True
                h.update(f.encode() + b"\0")
                data = p.read_bytes()
                if f == "tokenizer.json":
                    data = _vocab_of_tokenizer_json(data)
                h.update(data)
        return h.hexdigest()[:16] if found else None

    def __repr__(self) -> str:
        return f"Checkpoint({self.label!r}, {len(self)} tensors)"


def _vocab_of_tokenizer_json(data: bytes) -> bytes:
    """The vocabulary part of tokenizer.json (so cosmetic option changes don't count as a new vocab)."""
    try:
        tok = json.loads(data)
        model = tok.get("model", {})
        key = {"vocab": model.get("vocab"), "merges": model.get("merges"), "added": tok.get("added_tokens")}
        return json.dumps(key, sort_keys=True).encode()
    except (ValueError, AttributeError):
        return data


class LoraCheckpoint(Checkpoint):
    """A PEFT LoRA adapter: each target tensor reads as its full-shape delta B @ A * scale."""

    is_delta = True

    def __init__(self, path: Path, label: str):
        cfg = _read_json(path / "adapter_config.json") or {}
        weights = path / "adapter_model.safetensors"
        if weights.is_file():
            f = _SafetensorsFile(weights)
        elif (path / "adapter_model.bin").is_file():
            f = _TorchBinFile(path / "adapter_model.bin")
        else:
            raise CheckpointError(
                f"{path}: adapter_config.json found but no adapter_model.safetensors; the adapter is incomplete"
            )
        self.adapter_config = cfg
        r = cfg.get("r", 8)
        alpha = cfg.get("lora_alpha", r)
        self.scale = alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r
        self.pairs: dict[str, tuple[str, str]] = {}
        self.full: dict[str, str] = {}
        infos: dict[str, TensorInfo] = {}
        for name in f.entries:
            m = re.match(r"^(?:base_model\.model\.)?(.*)\.lora_A(?:\.[^.]+)?\.weight$", name)
            if m:
                target = m.group(1) + ".weight"
                b_name = name.replace(".lora_A", ".lora_B")
                if b_name not in f.entries:
                    raise CheckpointError(f"{weights}: {name} has no matching lora_B tensor; the adapter is incomplete")
                self.pairs[target] = (name, b_name)
                a_shape, b_shape = f.entries[name][1], f.entries[b_name][1]
                infos[target] = TensorInfo(target, (b_shape[0], a_shape[1]), f.entries[name][0])
            elif ".lora_B" in name:
                continue
            else:
                target = re.sub(r"^base_model\.model\.", "", name).replace(".modules_to_save.default", "")
                self.full[target] = name
                infos[target] = TensorInfo(target, f.entries[name][1], f.entries[name][0])
        if not self.pairs and not self.full:
            raise CheckpointError(f"{weights}: no lora_A/lora_B tensors found; is this a PEFT LoRA adapter?")
        self.path, self.label, self._files, self.root = path, label, [f], path
        self.config = {}
        self._infos = infos
        self._where = {}

    @property
    def declared_base(self) -> str | None:
        return self.adapter_config.get("base_model_name_or_path") or super().declared_base

    def get(self, name: str) -> torch.Tensor:
        f = self._files[0]
        if name in self.pairs:
            a_name, b_name = self.pairs[name]
            a = f.get(a_name).float()
            b = f.get(b_name).float()
            if self.adapter_config.get("fan_in_fan_out"):
                return (b @ a).T * self.scale
            return (b @ a) * self.scale
        if name in self.full:
            return f.get(self.full[name])
        raise KeyError(f"{self.label}: adapter has no tensor {name!r}")

    def release(self, name: str) -> None:
        f = self._files[0]
        for src in self.pairs.get(name, ()) or ([self.full[name]] if name in self.full else []):
            f.release(src)

    def with_base(self, base: Checkpoint) -> AdaptedCheckpoint:
        return AdaptedCheckpoint(base, self)


class AdaptedCheckpoint(Checkpoint):
    """base + LoRA delta, one tensor at a time (float32 where the adapter touches a tensor)."""

    def __init__(self, base: Checkpoint, lora: LoraCheckpoint):
        self.base, self.lora = base, lora
        self.path, self.label, self.root = lora.path, lora.label, lora.root
        self._files = list(base._files) + list(lora._files)
        self.config = base.config
        self._infos = dict(base._infos)
        for name in lora.pairs:
            if name not in base:
                raise CheckpointError(
                    f"{lora.path}: adapter targets {name!r}, which the base {base.label} does not have; wrong base model?"
                )
            bi, li = base.info(name), lora.info(name)
            if tuple(bi.shape) != tuple(li.shape):
                raise CheckpointError(
                    f"{lora.path}: adapter delta for {name!r} is {list(li.shape)} but the base has {list(bi.shape)}; wrong base model?"
                )
        for name in lora.full:
            self._infos[name] = lora.info(name)

    @property
    def declared_base(self) -> str | None:
        return self.lora.declared_base

    def tokenizer_files(self) -> list[Path]:
        return self.lora.tokenizer_files() or self.base.tokenizer_files()

    def tokenizer_fingerprint(self) -> str | None:
        return self.lora.tokenizer_fingerprint() or self.base.tokenizer_fingerprint()

    def release(self, name: str) -> None:
        self.base.release(name)
        self.lora.release(name)

    def get(self, name: str) -> torch.Tensor:
        if name in self.lora.pairs:
            return self.base.get(name).float() + self.lora.get(name)
        if name in self.lora.full:
            return self.lora.get(name)
        return self.base.get(name)


def _open_safetensors_dir(path: Path, label: str) -> Checkpoint:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        idx = _read_json(index)
        wm = idx.get("weight_map") if isinstance(idx, dict) else None
        if not isinstance(wm, dict) or not wm:
            raise CheckpointError(f"{index}: no 'weight_map' in the index; re-download it")
        shard_names = sorted(set(wm.values()))
        files = []
        for s in shard_names:
            sp = path / s
            if not sp.is_file():
                raise CheckpointError(f"{index}: lists shard {s}, which is missing; download it")
            files.append(_SafetensorsFile(sp))
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
    files = [_SafetensorsFile(s) for s in shards]
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
        idx = _read_json(index) or {}
        shard_names = sorted(set((idx.get("weight_map") or {}).values()))
    else:
        shard_names = ["pytorch_model.bin"]
    files = []
    for s in shard_names:
        if not (path / s).is_file():
            raise CheckpointError(f"{path / s}: missing; download it")
        files.append(_TorchBinFile(path / s))
    weight_map = {name: i for i, f in enumerate(files) for name in f.entries}
    return Checkpoint(path, label, files, weight_map, path)


def open_checkpoint(path: str | os.PathLike, label: str | None = None) -> Checkpoint:
    """Open a HF directory, a .safetensors/.bin file, or a PEFT LoRA adapter directory."""
    p = Path(path).expanduser()
    label = label if label is not None else str(path)
    if not p.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if p.is_file():
        if p.suffix == ".safetensors":
            f = _SafetensorsFile(p)
            root = p.parent if (p.parent / "config.json").is_file() else None
            return Checkpoint(p, label, [f], {n: 0 for n in f.entries}, root)
        if p.suffix in (".bin", ".pt", ".pth"):
            f = _TorchBinFile(p)
            root = p.parent if (p.parent / "config.json").is_file() else None
            return Checkpoint(p, label, [f], {n: 0 for n in f.entries}, root)
        raise CheckpointError(f"{path}: not a checkpoint (expected a directory, .safetensors or .bin file)")
    if (p / "adapter_config.json").is_file():
        return LoraCheckpoint(p, label)
    if (p / "model.safetensors.index.json").is_file() or any(p.glob("*.safetensors")):
        return _open_safetensors_dir(p, label)
    if (p / "pytorch_model.bin").is_file() or (p / "pytorch_model.bin.index.json").is_file():
        return _open_bin_dir(p, label)
    raise CheckpointError(
        f"{path}: no model weights found (expected model.safetensors, a sharded index, pytorch_model.bin, or a PEFT adapter)"
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
