"""PEFT LoRA adapters: on their own, full-shape deltas B @ A · scale; on a base, a fine-tune view."""

from __future__ import annotations

import re
from pathlib import Path

from mergescope.io.checkpoint.formats import SafetensorsFile, TorchBinFile
from mergescope.io.checkpoint.model import Checkpoint, CheckpointError, TensorInfo, read_json


class LoraCheckpoint(Checkpoint):
    """A PEFT LoRA adapter: each target tensor reads as its full-shape delta B @ A * scale."""

    is_delta = True

    def __init__(self, path: Path, label: str):
        cfg = read_json(path / "adapter_config.json", what="adapter config") or {}
        weights = path / "adapter_model.safetensors"
        if weights.is_file():
            f = SafetensorsFile(weights)
        elif (path / "adapter_model.bin").is_file():
            f = TorchBinFile(path / "adapter_model.bin")
        else:
            raise CheckpointError(
                f"{path}: adapter_config.json found but no adapter_model.safetensors; the adapter is incomplete"
            )
        self.adapter_config = cfg
        r = cfg.get("r", 8)
        alpha = cfg.get("lora_alpha", r)
        for key, v in (("r", r), ("lora_alpha", alpha)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or (key == "r" and v != int(v)):
                raise CheckpointError(
                    f"{path / 'adapter_config.json'}: `{key}` is {v!r}; a LoRA's {key} is a positive "
                    f"{'whole number' if key == 'r' else 'number'} — fix the adapter config"
                )
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
                if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
                    raise CheckpointError(
                        f"{weights}: {name} is {list(a_shape)} but {b_name} is {list(b_shape)}; lora_A must be "
                        "[rank, in] and lora_B [out, rank] with one rank — the adapter is corrupt, re-export it"
                    )
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

    def get(self, name: str):
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

    @property
    def tokenizer_dir(self) -> Path | None:
        return self.lora.tokenizer_dir or self.base.tokenizer_dir

    def tokenizer_fingerprint(self) -> str | None:
        return self.lora.tokenizer_fingerprint() or self.base.tokenizer_fingerprint()

    def release(self, name: str) -> None:
        self.base.release(name)
        self.lora.release(name)

    def slot(self, name: str):
        return self.base.slot(name)

    def get(self, name: str):
        if name in self.lora.pairs:
            return self.base.get(name).float() + self.lora.get(name)
        if name in self.lora.full:
            return self.lora.get(name)
        return self.base.get(name)
