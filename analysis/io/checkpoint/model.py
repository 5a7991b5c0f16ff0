"""A checkpoint: its tensors by name (read one at a time) and the metadata that judges merge-readiness."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mergescope.io.bounded import MAX_CARD_BYTES, load_json_object, load_yaml, read_head
from mergescope.io.checkpoint.files import VOCAB_FILES
from mergescope.io.dtypes import BY_CODE
from mergescope.io.errors import InputError


class CheckpointError(InputError):
    """A path that is not a readable checkpoint; the message names the file and what to do."""


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's header facts; `dtype_name` is the safetensors code (e.g. "BF16")."""

    name: str
    shape: tuple[int, ...]
    dtype_name: str

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def itemsize(self) -> int:
        return BY_CODE[self.dtype_name].itemsize

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def is_float(self) -> bool:
        return BY_CODE[self.dtype_name].is_float

    @property
    def dtype(self):
        """The torch dtype (imports torch)."""
        import torch

        return getattr(torch, BY_CODE[self.dtype_name].name)


def read_json(path: Path, unique_keys: bool = False, what: str = "JSON file") -> dict | None:
    """The JSON object in the file (None when absent; at most MAX_JSON_BYTES, never another JSON type);
    `unique_keys`: a key given twice is an error (an index naming a tensor twice would otherwise keep the
    last silently). `what` names the kind of file in messages ("model config")."""
    if not path.is_file():
        return None
    try:
        hook = _unique if unique_keys else None
        return load_json_object(path, what, hook=hook)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror}); check the permissions") from None
    except _Twice as exc:
        raise CheckpointError(f"{path}: names {exc} twice; re-download or fix the file") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({str(exc)[:120]}); fix or remove the file") from None


class _Twice(ValueError):
    pass


def _unique(pairs):
    seen: set = set()
    for k, _ in pairs:
        if k in seen:
            raise _Twice(repr(k))
        seen.add(k)
    return dict(pairs)


def front_matter(readme: Path) -> dict:
    """The model card's YAML front matter, read from its first MAX_CARD_BYTES only and parsed without
    YAML aliases ({} when there is none, it is cut by the limit, or it does not parse)."""
    if not readme.is_file():
        return {}
    try:
        text = read_head(readme, MAX_CARD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return {}
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return {}
    import yaml

    try:
        data = load_yaml(m.group(1), aliases=False, budget=20_000)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


class Checkpoint:
    """A model's tensors (by name) plus the metadata needed to judge merge-readiness."""

    is_delta = False  # True for LoRA adapters opened on their own (tensors are deltas)
    _slots: dict = {}  # per-expert name -> experts.Slot, where fused expert tensors are split

    def __init__(self, path: Path, label: str, files: list, weight_map: dict[str, int], root: Path | None):
        self.path = path
        self.label = label
        self._files = files
        self._where = weight_map  # name -> index into files
        self.root = root  # directory holding config/tokenizer files, if any
        self.config: dict = (read_json(root / "config.json", what="model config") if root else None) or {}
        self._infos: dict[str, TensorInfo] = {}
        for name, idx in weight_map.items():
            entry = files[idx].entries[name]
            self._infos[name] = TensorInfo(name, entry[1], entry[0])
        self._slots = self._split_experts()

    def _split_experts(self) -> dict:
        """Fused expert tensors read as per-expert ones (experts.py): {per-expert name: Slot}."""
        from mergescope.io.checkpoint.experts import expert_slots

        slots = expert_slots({n: i.shape for n, i in self._infos.items()}, self.config.get("model_type"))
        if not slots:
            return {}
        by_stored: dict[str, list[str]] = {}
        stored = {s.stored for s in slots.values()}
        for name, slot in slots.items():
            if name in self._infos and name not in stored:
                raise CheckpointError(
                    f"{self.path}: holds {name!r} both per expert and in the fused tensor {slot.stored!r}; "
                    "keep one layout"
                )
            by_stored.setdefault(slot.stored, []).append(name)
        infos: dict[str, TensorInfo] = {}
        for name, info in self._infos.items():
            for v in by_stored.get(name, [name]):
                infos[v] = TensorInfo(v, slots[v].shape, info.dtype_name) if v in slots else info
        self._infos = infos
        return slots

    def slot(self, name: str):
        """Where a per-expert tensor read from a fused one lies in it (experts.Slot), or None."""
        return self._slots.get(name)

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

    def get(self, name: str):
        """The stored tensor (stored dtype, CPU, memory-mapped where possible)."""
        slot = self._slots.get(name)
        try:
            if slot is not None:
                return slot.view(self._files[self._where[slot.stored]].get(slot.stored))
            return self._files[self._where[name]].get(name)
        except KeyError:
            raise KeyError(f"{self.label}: no tensor named {name!r}") from None

    def __getitem__(self, name: str):
        """`ck[name]` is `ck.get(name)`: a checkpoint reads like a mapping of tensors (the forward pass
        and the merge both take one)."""
        return self.get(name)

    def release(self, name: str) -> None:
        """Done with this tensor for now: let its memory-mapped pages go (see SafetensorsFile)."""
        slot = self._slots.get(name)
        if slot is not None and slot.expert is not None:
            self.release_range(name, 0, self._infos[name].numel)
            return
        name = slot.stored if slot is not None else name
        idx = self._where.get(name)
        if idx is not None:
            self._files[idx].release(name)

    def release_range(self, name: str, start: int, stop: int) -> None:
        """`release` for elements [start, stop) of the flattened tensor; a no-op where the tensor is
        not a plain memory-mapped one (.bin files, LoRA views)."""
        slot = self._slots.get(name)
        if slot is not None:
            off = slot.offset(self._files[self._where[slot.stored]].entries[slot.stored][1])
            name, start, stop = slot.stored, start + off, stop + off
        idx = (getattr(self, "_where", None) or {}).get(name)
        if idx is not None and hasattr(self._files[idx], "release_range"):
            self._files[idx].release_range(name, start, stop)

    @property
    def weight_files(self) -> list[Path]:
        return [f.path for f in self._files]

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self._infos.values())

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
        from mergescope.io.naming import layer_count

        return layer_count(self._infos) or None

    @property
    def name_or_path(self) -> str | None:
        return self.config.get("_name_or_path") or None

    @property
    def declared_base(self) -> str | None:
        """`base_model` from the model card front matter (or adapter config), if any."""
        if self.root is None:
            return None
        bm = front_matter(self.root / "README.md").get("base_model")
        if isinstance(bm, list):
            bm = bm[0] if bm else None
        return str(bm) if isinstance(bm, (str, int, float)) and bm else None

    @property
    def tokenizer_dir(self) -> Path | None:
        """The directory holding this model's tokenizer (its vocabulary or tokenizer_config), or None."""
        if self.root is not None and any((self.root / f).is_file() for f in (*VOCAB_FILES, "tokenizer_config.json")):
            return self.root
        return None

    def tokenizer_fingerprint(self) -> str | None:
        """Hash of the files that define the vocabulary; None when the checkpoint ships none."""
        if self.root is None:
            return None
        h = hashlib.sha256()
        found = False
        for f in VOCAB_FILES:
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
