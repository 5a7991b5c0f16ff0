"""The two on-disk formats: safetensors (memory-mapped, tensors are zero-copy views) and torch `.bin`.

The safetensors header is parsed here (JSON, no torch): opening a checkpoint, or a cached analysis
of it, costs no torch import; tensors are created only by `get()`.
"""

from __future__ import annotations

import json
import mmap
import pickle
import struct
from pathlib import Path

from mergescope.io.checkpoint.model import CheckpointError
from mergescope.io.dtypes import BY_CODE, TABLE, of_torch

MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


class SafetensorsFile:
    """One memory-mapped .safetensors file; tensors are views into the mapping.

    The header is checked completely before anything is mapped: every entry's dtype, shape and byte
    range (inside the file, the size its shape says, no two tensors overlapping), so a truncated or
    corrupt file is a `CheckpointError` naming the file, never a crash later in a merge."""

    def __init__(self, path: Path):
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as fh:
                head = fh.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{path}: file is too short to be safetensors ({size} bytes); re-download it")
                (hlen,) = struct.unpack("<q", head)  # signed: a huge value reads as negative, like safetensors
                if hlen <= 0 or hlen > min(size - 8, MAX_HEADER):
                    raise CheckpointError(
                        f"{path}: corrupt safetensors header (declared length {hlen}, file {size} bytes); re-download the file"
                    )
                raw = fh.read(hlen)
            header = json.loads(raw, object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, json.JSONDecodeError, _Duplicate) as exc:
            raise CheckpointError(
                f"{path}: corrupt safetensors header ({exc.__class__.__name__.lstrip('_')}: {str(exc)[:80]}); "
                "re-download the file"
            ) from None
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read ({exc.strerror}); check the path and permissions") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object); re-download the file")
        meta = header.pop("__metadata__", None)
        if meta is not None and not isinstance(meta, dict):
            raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ is not an object); re-download it")
        self.metadata = meta or {}
        self.data_start = 8 + hlen
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}  # name -> (code, shape, start, end)
        for name, entry in header.items():
            self.entries[name] = _entry(path, name, entry, size - self.data_start)
        spans = sorted((s, e, n) for n, (_, _, s, e) in self.entries.items() if e > s)
        for (_, e0, n0), (s1, _, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise CheckpointError(
                    f"{path}: tensors {n0!r} and {n1!r} overlap in the file (bytes {s1}..{e0}); the header is "
                    "corrupt, re-download the file"
                )
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


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _Duplicate(f"{next(k for k in keys if keys.count(k) > 1)!r} appears twice")
    return dict(pairs)


def _entry(path: Path, name: str, entry, data_size: int) -> tuple[str, tuple[int, ...], int, int]:
    """(code, shape, start, end) of one header entry, or the CheckpointError that says what is wrong."""

    def bad(what: str):
        return CheckpointError(f"{path}: tensor {name!r}: {what}; the file is corrupt, re-download it")

    if not isinstance(entry, dict):
        raise bad(f"header entry is {type(entry).__name__}, not an object")
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(code, str):
        raise bad(f"dtype is {code!r}")
    if code not in BY_CODE:
        raise CheckpointError(
            f"{path}: tensor {name!r} has dtype {code}, which mergescope cannot read "
            f"(supported: {', '.join(d.code for d in TABLE)}); convert the checkpoint"
        )
    if not isinstance(shape, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in shape):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise bad(f"data_offsets {offsets!r} are not [start, end] with 0 <= start <= end")
    start, end = offsets
    if end > data_size:
        raise bad(f"data extends past the end of the file (byte {end} of {data_size}: truncated download?)")
    numel = 1
    for x in shape:
        numel *= x
    if (end - start) != numel * BY_CODE[code].itemsize:
        raise bad(f"holds {end - start} bytes but shape {shape} of {code} needs {numel * BY_CODE[code].itemsize}")
    return code, tuple(shape), start, end


class TorchBinFile:
    """A torch `.bin` state dict, loaded with weights_only and mmap."""

    def __init__(self, path: Path):
        import torch

        self.path = path
        try:
            try:
                self.state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                # the legacy (pre-zip) format cannot be memory-mapped: read it whole
                self.state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            why = next((ln for ln in lines if "unsupported" in ln.lower()), lines[-1] if lines else "")[:120].rstrip(
                "."
            )
            raise CheckpointError(
                f"{path}: refused: this pickle asks to run code or to build objects other than tensors "
                f"({why}); mergescope loads .bin files only with weights_only=True — if you trust the file, "
                "convert it to safetensors"
            ) from None
        except Exception as exc:  # torch raises many types for files that are not state dicts
            first = (str(exc).splitlines() or [""])[0][:120]
            raise CheckpointError(
                f"{path}: not a loadable PyTorch state dict ({exc.__class__.__name__}: {first}); re-download it"
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
