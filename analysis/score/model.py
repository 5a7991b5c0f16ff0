"""What a backend scores: a checkpoint opened from a path, base + LoRA adapter, or a merge held in
memory, as tensors by name plus its config and where its tokenizer lives."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mergescope.io.errors import InputError


@dataclass
class Model:
    """What a backend scores: tensors by name, the config, where the tokenizer lives, and (for backends
    that read files) a directory holding the model."""

    label: str
    tensors: Mapping
    config: dict
    tokenizer_dir: Path | None
    path: Path | None = None
    closer: Callable[[], None] | None = None

    def close(self) -> None:
        if self.closer is not None:
            self.closer()
            self.closer = None


def open_model(ref: str | os.PathLike, label: str | None = None) -> Model:
    """A checkpoint path, `BASE+ADAPTER`, or a LoRA adapter whose base_model_name_or_path is local."""
    from mergescope.io import hub_ref
    from mergescope.io.checkpoint import LoraCheckpoint, open_checkpoint

    ref = str(ref)
    label = label or ref
    base_path = None
    if not Path(ref).expanduser().exists() and "+" in ref:
        base_path, ref = ref.rsplit("+", 1)
    ck = open_checkpoint(ref, label)
    if isinstance(ck, LoraCheckpoint):
        base_path = base_path or ck.declared_base
        if not base_path or not (Path(base_path).expanduser().exists() or hub_ref.local_dir(base_path)):
            ck.close()
            raise InputError(
                f"{ref}: is a LoRA adapter and its base {base_path!r} is neither a local path nor in the Hugging "
                f"Face cache; score it as BASE+{ref}"
            )
        ck = ck.with_base(open_checkpoint(base_path))
    elif base_path is not None:
        ck.close()
        raise InputError(f"{label}: `A+B` means base A with LoRA adapter B, and {ref} is not an adapter")
    root = ck.tokenizer_dir or getattr(ck, "root", None)
    path = ck.root if getattr(ck, "lora", None) is None and ck.root is not None else None
    return Model(label, ck, dict(ck.config or {}), root, path, closer=_close_all(ck))


def _close_all(ck):
    def close():
        for c in (ck, getattr(ck, "base", None), getattr(ck, "lora", None)):
            if c is not None:
                c.close()

    return close
