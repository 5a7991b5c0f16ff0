"""The two on-disk formats: safetensors (memory-mapped, tensors are zero-copy views) and torch `.bin`.

The safetensors header is parsed here (JSON, no torch): opening a checkpoint, or a cached analysis
of it, costs no torch import; tensors are created only by `get()`.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

from ..dtypes import BY_CODE, TABLE, of_torch
from .model import CheckpointError


class SafetensorsFile:
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
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}  # name -> (code, shape, start, end)
        for name, meta in header.items():
            code = meta.get("dtype") if isinstance(meta, dict) else None
            if isinstance(code, str) and code not in BY_CODE:
                raise CheckpointError(
                    f"{path}: tensor {name!r} has dtype {code}, which mergescope cannot read "
                    f"(supported: {', '.join(d.code for d in TABLE)}); convert the checkpoint"
                )
            try:
                dtype = code
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

    def get(self, name: str):
        import torch

        code, shape, start, end = self.entries[name]
        dtype = getattr(torch, BY_CODE[code].name)
        count = (end - start) // BY_CODE[code].itemsize
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
        code, _, off, end = self.entries[name]
        size = BY_CODE[code].itemsize
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


class TorchBinFile:
    """A torch `.bin` state dict, loaded with weights_only and mmap."""

    def __init__(self, path: Path):
        import torch

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
        self.entries = {}
        for k, v in self.state.items():
            if isinstance(v, torch.Tensor):
                try:
                    self.entries[k] = (of_torch(v.dtype).code, tuple(v.shape))
                except KeyError:
                    raise CheckpointError(
                        f"{path}: tensor {k!r} has dtype {v.dtype}, which mergescope cannot read; convert the checkpoint"
                    ) from None

    def get(self, name: str):
        return self.state[name]

    def release(self, name: str) -> None:
        pass

    def close(self) -> None:
        pass
