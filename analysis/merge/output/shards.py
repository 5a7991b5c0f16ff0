"""Streaming, atomic writer for a merged model.

Two modes, same files:
- planned (what the executor uses): `plan(layout)` is given every output tensor's name, dtype and
  shape up front, so the shard boundaries and every shard's header are known before any data; each
  `add()` then writes the tensor's bytes straight into its shard file (header first, data in order,
  from the tensor's own memory: no copy, no shard buffer). Memory: nothing beyond the tensor given.
- unplanned: tensors are buffered until the current shard would exceed `shard_size`, then the shard
  is written. Memory: one shard of tensors.
Either way a shard is closed when the next tensor would overflow it (a tensor larger than
`shard_size` gets a shard of its own), under a temporary name. `finish()` renames the shards to
`model-0000i-of-0000N.safetensors` (or `model.safetensors` when there is one) and writes
`model.safetensors.index.json`, `config.json`, tokenizer files, `merge_plan.yml` and a `README.md`
model card.

Atomicity: everything is written into a temporary sibling directory `.NAME.tmp-XXXX` that replaces
OUTPUT with a rename at the very end. Any failure, cancellation or KeyboardInterrupt removes the
temporary directory, so OUTPUT either keeps its old state or holds the complete new model. An
existing non-empty OUTPUT is refused unless `force=True` (then it is replaced only after the new
model is complete).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergescope._version import __version__
from mergescope.io.checkpoint.files import TOKENIZER_FILES
from mergescope.io.dtypes import BY_NAME
from mergescope.io.errors import InputError
from mergescope.io.guard import Write, check_io
from mergescope.io.units import parse_size
from mergescope.merge.output.atomic import commit_dir, staging_dir, write_text

DEFAULT_SHARD_SIZE = 5 * 1000**3  # "5GB", as mergekit/transformers count it


def check_output(output_dir: str | os.PathLike, force: bool = False) -> Path:
    """The output folder rules of io.guard (a non-empty OUTPUT is refused, and with `force` replaced
    only when mergescope wrote it; never `/`, home or the current folder), without the inputs. Cheap;
    call early."""
    check_io([], [Write(output_dir, "", folder=True)], force=force)
    return Path(output_dir).expanduser()


@dataclass
class WriteResult:
    output_dir: Path
    files: list[str]  # every file written, relative to output_dir
    shards: list[str]
    total_bytes: int  # tensor bytes
    n_tensors: int


def _nbytes(dtype, shape) -> int:
    n = _entry(dtype).itemsize
    for s in shape:
        n *= int(s)
    return n


def _entry(dtype):
    d = BY_NAME.get(str(dtype).replace("torch.", ""))
    if d is None:
        raise ValueError(f"cannot store dtype {dtype} in safetensors")
    return d


def safetensors_header(items: Sequence[tuple[str, Any]]) -> tuple[bytes, int]:
    """Header for tensors, or for (name, (dtype, shape)) entries of a planned layout."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, t in items:
        dtype, shape = t if isinstance(t, tuple) else (t.dtype, tuple(t.shape))
        n = _nbytes(dtype, shape)
        header[name] = {
            "dtype": _entry(dtype).code,
            "shape": [int(x) for x in shape],
            "data_offsets": [offset, offset + n],
        }
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((8 - len(raw) % 8) % 8)  # align the data section to 8 bytes
    return raw, offset


def write_safetensors(path: Path, items: Sequence[tuple[str, Any]]) -> int:
    """Write tensors (CPU, any layout) as one safetensors file; returns the data size in bytes."""

    raw, total = safetensors_header(items)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for _, t in items:
            write_tensor(fh, t)
        fh.flush()
        os.fsync(fh.fileno())
    return total


def write_tensor(fh, t) -> None:
    """The tensor's raw bytes, from its own memory (a copy only when it is not contiguous)."""
    import torch

    if t.numel() == 0:
        return
    flat = t.detach().contiguous().reshape(-1)
    data = flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat
    fh.write(memoryview(data.numpy()))


class ModelWriter:
    """Write one merged model atomically. Use as a context manager, or call `abort()` on failure."""

    def __init__(
        self, output_dir: str | os.PathLike, *, force: bool = False, shard_size: int | str = DEFAULT_SHARD_SIZE
    ):
        self.output_dir = check_output(output_dir, force)
        self.force = force
        self.shard_size = parse_size(shard_size)
        self.tmp = staging_dir(self.output_dir)
        self._current: list[tuple[str, Any]] = []
        self._current_bytes = 0
        self._parts: list[tuple[Path, list[str]]] = []  # temporary shard file, names in it
        self._names: set[str] = set()
        self.total_bytes = 0
        self._closed = False
        # planned mode
        self._layout: dict[str, tuple[int, Any, tuple]] | None = None  # name -> (shard, dtype, shape)
        self._order: list[str] = []
        self._next = 0
        self._fh = None
        self._open_shard = -1

    def plan(self, layout: Sequence[tuple[str, Any, Sequence[int]]]) -> None:
        """Fix the output up front: (name, torch dtype, shape) for every tensor, in writing order.

        Shards are cut exactly where the unplanned mode would cut them. After this, `add()` must be
        called once per entry, in this order, and writes each tensor straight to disk."""
        if self._names or self._layout is not None:
            raise RuntimeError("plan() must come first, once")
        layout = [(str(n), dt, tuple(int(x) for x in sh)) for n, dt, sh in layout]
        names = [n for n, _, _ in layout]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"tensor {dup} written twice")
        shards: list[list[tuple[str, Any, tuple]]] = []
        cur: list = []
        cur_bytes = 0
        for n, dt, sh in layout:
            nb = _nbytes(dt, sh)
            if cur and cur_bytes + nb > self.shard_size:
                shards.append(cur)
                cur, cur_bytes = [], 0
            cur.append((n, dt, sh))
            cur_bytes += nb
        if cur:
            shards.append(cur)
        self._layout = {}
        self._shard_entries = shards
        for i, entries in enumerate(shards):
            part = self.tmp / f".shard-{i + 1:05d}.partial"
            self._parts.append((part, [n for n, _, _ in entries]))
            for n, dt, sh in entries:
                self._layout[n] = (i, dt, sh)
        self._order = names

    def _start_shard(self, i: int) -> None:
        self._close_shard()
        part = self._parts[i][0]
        raw, _ = safetensors_header([(n, (dt, sh)) for n, dt, sh in self._shard_entries[i]])
        self._fh = open(part, "wb")
        self._wb_from = 0
        self._fh.write(len(raw).to_bytes(8, "little"))
        self._fh.write(raw)
        self._open_shard = i

    def _writeback(self) -> None:
        """Start writing what this shard has so far to disk now (asynchronously), so the final fsync
        finds little left and disk writes overlap the merging; it also keeps the written pages from
        crowding the inputs out of the page cache. Linux: POSIX_FADV_DONTNEED starts writeback of
        dirty pages and drops clean ones; elsewhere a no-op."""
        advise = getattr(os, "posix_fadvise", None)
        if advise is None or self._fh is None:
            return
        self._fh.flush()
        end = self._fh.tell()
        if end - self._wb_from < (64 << 20):
            return
        try:
            advise(self._fh.fileno(), 0, end, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        self._wb_from = end

    def _close_shard(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fh.close()

    # -- tensors ---------------------------------------------------------------------------
    def add(self, name: str, tensor) -> None:
        """Queue one output tensor (moved to CPU); writes the current shard first if it would overflow."""
        if self._closed:
            raise RuntimeError("writer is closed")
        if name in self._names:
            raise ValueError(f"tensor {name} written twice")
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        n = tensor.numel() * tensor.element_size()
        try:
            if self._layout is not None:
                self._add_planned(name, tensor, n)
                return
            self._names.add(name)
            if self._current and self._current_bytes + n > self.shard_size:
                self._flush()
        except OSError as exc:
            self.abort()
            raise self._write_failed(exc) from None
        self._current.append((name, tensor))
        self._current_bytes += n
        self.total_bytes += n

    def _add_planned(self, name: str, tensor, n: int) -> None:
        expected = self._order[self._next] if self._next < len(self._order) else None
        if name != expected:
            if name not in self._layout:
                raise ValueError(f"tensor {name} is not in the planned layout")
            raise ValueError(f"tensor {name} written out of the planned order (expected {expected})")
        shard, dt, sh = self._layout[name]
        if tensor.dtype != dt or tuple(tensor.shape) != sh:
            raise ValueError(f"tensor {name}: got {tensor.dtype} {list(tensor.shape)}, planned {dt} {list(sh)}")
        if shard != self._open_shard:
            self._start_shard(shard)
        write_tensor(self._fh, tensor)
        self._writeback()
        self._names.add(name)
        self._next += 1
        self.total_bytes += n

    def _flush(self) -> None:
        if self._layout is not None:
            if self._next != len(self._order):
                raise RuntimeError(f"only {self._next} of the {len(self._order)} planned tensors were written")
            if self._open_shard < len(self._parts) - 1:  # trailing shards of empty tensors only
                for i in range(self._open_shard + 1, len(self._parts)):
                    self._start_shard(i)
            self._close_shard()
            return
        if not self._current:
            return
        part = self.tmp / f".shard-{len(self._parts) + 1:05d}.partial"
        write_safetensors(part, self._current)
        self._parts.append((part, [n for n, _ in self._current]))
        self._current, self._current_bytes = [], 0

    # -- finishing -------------------------------------------------------------------------
    def finish(
        self,
        *,
        config: dict | None = None,
        tokenizer_dir: Path | None = None,
        tokenizer_writer=None,
        plan_yaml: str | None = None,
        card: str | None = None,
        extra_files: dict[str, str] | None = None,
    ) -> WriteResult:
        """Write the last shard, the index and the metadata files, then move the directory into place."""
        try:
            self._flush()
            files: list[str] = []
            shards: list[str] = []
            n = len(self._parts)
            weight_map = {}
            for i, (part, names) in enumerate(self._parts):
                final = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                part.rename(self.tmp / final)
                shards.append(final)
                for name in names:
                    weight_map[name] = final
            if n == 0:  # an empty model still gets a (valid, empty) weights file
                write_safetensors(self.tmp / "model.safetensors", [])
                shards.append("model.safetensors")
            files += shards
            if n > 1:
                index = {
                    "metadata": {"total_size": self.total_bytes, "mergescope": __version__},
                    "weight_map": dict(sorted(weight_map.items())),
                }
                write_text(self.tmp / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
                files.append("model.safetensors.index.json")
            if config is not None:
                write_text(self.tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
                files.append("config.json")
            if tokenizer_writer is not None:  # writes the tokenizer files itself (a built vocabulary)
                files += tokenizer_writer(self.tmp)
            elif tokenizer_dir is not None:
                for f in TOKENIZER_FILES:
                    src = Path(tokenizer_dir) / f
                    if src.is_file():
                        shutil.copyfile(src, self.tmp / f)
                        files.append(f)
            if plan_yaml is not None:
                write_text(self.tmp / "merge_plan.yml", plan_yaml)
                files.append("merge_plan.yml")
            if card is not None:
                write_text(self.tmp / "README.md", card)
                files.append("README.md")
            for fname, text in (extra_files or {}).items():
                write_text(self.tmp / fname, text)
                files.append(fname)
            self._commit()
        except OSError as exc:
            self.abort()
            raise self._write_failed(exc) from None
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return WriteResult(self.output_dir, files, shards, self.total_bytes, len(self._names))

    def _commit(self) -> None:
        commit_dir(self.tmp, self.output_dir, self.force, what="merge")

    def _write_failed(self, exc: OSError) -> InputError:
        import errno

        what = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        return InputError(
            f"{self.output_dir}: cannot write the merged model ({what}); nothing was written — free space or "
            "choose another output directory"
        )

    def abort(self) -> None:
        """Drop everything written so far (idempotent)."""
        self._closed = True
        self._current = []
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> ModelWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._closed:
            self.abort()
