"""Streaming, atomic writer for a merged model.

Tensors arrive one at a time and are buffered until the current shard would exceed `shard_size`;
then the shard is written (our own safetensors serializer: header + raw bytes, no extra copy) under
a temporary name. `finish()` renames the shards to `model-0000i-of-0000N.safetensors` (or
`model.safetensors` when there is one) and writes `model.safetensors.index.json`, `config.json`,
tokenizer files, `merge_plan.yml` and a `README.md` model card. Memory: one shard of tensors.

Atomicity: everything is written into a temporary sibling directory `.NAME.tmp-XXXX` that replaces
OUTPUT with a rename at the very end. Any failure, cancellation or KeyboardInterrupt removes the
temporary directory, so OUTPUT either keeps its old state or holds the complete new model. An
existing non-empty OUTPUT is refused unless `force=True` (then it is replaced only after the new
model is complete).

Provenance hashes: the model card lists every input weight file with its size and modification
time; sha256 is computed (streamed in 8 MiB blocks) when `hash_inputs` is true, or, by default,
when all input files together are at most `AUTO_HASH_LIMIT` bytes (multi-GB models are not hashed
unless asked: hashing 50 GB would add minutes to a merge). `mergescope merge --hash-inputs` asks.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import InputError

AUTO_HASH_LIMIT = 2 * 1024**3
DEFAULT_SHARD_SIZE = 5 * 1000**3  # "5GB", as mergekit/transformers count it

# Files copied with the tokenizer (mergekit's list plus the vocab files our checkpoints know).
TOKENIZER_COPY = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                  "added_tokens.json", "merges.txt", "vocab.json", "vocab.txt", "spiece.model",
                  "chat_template.jinja", "chat_template.json", "generation_config.json")

_ST_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
              "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
              "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}

_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
          "T": 1000**4, "TB": 1000**4, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}


def parse_size(value: str | int, what: str = "--shard-size") -> int:
    """'5GB' / '500MB' / '2GiB' / '1000000' -> bytes (decimal units like transformers; KiB/MiB/GiB binary)."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
        unit = m.group(2).upper() if m else None
        if not m or unit not in _UNITS:
            raise InputError(f"{what} {value!r}: not a size; write e.g. 5GB, 500MB or 2GiB")
        n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise InputError(f"{what} {value!r}: must be positive; write e.g. 5GB")
    return n


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def check_output(output_dir: str | os.PathLike, force: bool = False) -> Path:
    """Refuse an existing non-empty OUTPUT (unless force) or a path that is a file. Cheap; call early."""
    out = Path(output_dir).expanduser()
    if out.exists():
        if not out.is_dir():
            raise InputError(f"{output_dir}: exists and is not a directory; choose another output path")
        if any(out.iterdir()) and not force:
            raise InputError(f"{output_dir}: output directory exists and is not empty; choose another path "
                             f"or pass --force to replace it")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise InputError(f"{output_dir}: parent directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{output_dir}: cannot write into {parent} (permission denied); choose another path")
    return out


def sha256_file(path: Path, block: int = 8 * 1024 * 1024) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(block)
        view = memoryview(buf)
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


@dataclass
class InputRecord:
    """One input model for the card's provenance table."""

    role: str  # base | model | tokenizer
    ref: str  # as written in the plan
    files: list[Path] = field(default_factory=list)


@dataclass
class WriteResult:
    output_dir: Path
    files: list[str]  # every file written, relative to output_dir
    shards: list[str]
    total_bytes: int  # tensor bytes
    n_tensors: int


def _safetensors_header(items: Sequence[tuple[str, Any]]) -> tuple[bytes, int]:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, t in items:
        dt = _ST_DTYPES.get(str(t.dtype).replace("torch.", ""))
        if dt is None:
            raise ValueError(f"cannot store dtype {t.dtype} in safetensors ({name})")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((8 - len(raw) % 8) % 8)  # align the data section to 8 bytes
    return raw, offset


def write_safetensors(path: Path, items: Sequence[tuple[str, Any]]) -> int:
    """Write tensors (CPU, any layout) as one safetensors file; returns the data size in bytes."""
    import torch

    raw, total = _safetensors_header(items)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for _, t in items:
            if t.numel() == 0:
                continue
            flat = t.detach().contiguous().reshape(-1)
            data = flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat
            fh.write(memoryview(data.numpy()))
        fh.flush()
        os.fsync(fh.fileno())
    return total


class ModelWriter:
    """Write one merged model atomically. Use as a context manager, or call `abort()` on failure."""

    def __init__(self, output_dir: str | os.PathLike, *, force: bool = False,
                 shard_size: int | str = DEFAULT_SHARD_SIZE):
        self.output_dir = check_output(output_dir, force)
        self.force = force
        self.shard_size = parse_size(shard_size)
        parent = self.output_dir.absolute().parent
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.output_dir.name}.tmp-", dir=parent))
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(self.tmp, 0o777 & ~mask)  # mkdtemp makes it 0700; the output should look like any directory
        self._current: list[tuple[str, Any]] = []
        self._current_bytes = 0
        self._parts: list[tuple[Path, list[str]]] = []  # temporary shard file, names in it
        self._names: set[str] = set()
        self.total_bytes = 0
        self._closed = False

    # -- tensors ---------------------------------------------------------------------------
    def add(self, name: str, tensor) -> None:
        """Queue one output tensor (moved to CPU); writes the current shard first if it would overflow."""
        if self._closed:
            raise RuntimeError("writer is closed")
        if name in self._names:
            raise ValueError(f"tensor {name} written twice")
        self._names.add(name)
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        n = tensor.numel() * tensor.element_size()
        if self._current and self._current_bytes + n > self.shard_size:
            self._flush()
        self._current.append((name, tensor))
        self._current_bytes += n
        self.total_bytes += n

    def _flush(self) -> None:
        if not self._current:
            return
        part = self.tmp / f".shard-{len(self._parts) + 1:05d}.partial"
        write_safetensors(part, self._current)
        self._parts.append((part, [n for n, _ in self._current]))
        self._current, self._current_bytes = [], 0

    # -- finishing -------------------------------------------------------------------------
    def finish(self, *, config: dict | None = None, tokenizer_dir: Path | None = None,
               plan_yaml: str | None = None, card: str | None = None,
               extra_files: dict[str, str] | None = None) -> WriteResult:
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
                index = {"metadata": {"total_size": self.total_bytes, "mergescope": _version()},
                         "weight_map": dict(sorted(weight_map.items()))}
                _write_text(self.tmp / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
                files.append("model.safetensors.index.json")
            if config is not None:
                _write_text(self.tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
                files.append("config.json")
            if tokenizer_dir is not None:
                for f in TOKENIZER_COPY:
                    src = Path(tokenizer_dir) / f
                    if src.is_file():
                        shutil.copyfile(src, self.tmp / f)
                        files.append(f)
            if plan_yaml is not None:
                _write_text(self.tmp / "merge_plan.yml", plan_yaml)
                files.append("merge_plan.yml")
            if card is not None:
                _write_text(self.tmp / "README.md", card)
                files.append("README.md")
            for fname, text in (extra_files or {}).items():
                _write_text(self.tmp / fname, text)
                files.append(fname)
            self._commit()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return WriteResult(self.output_dir, files, shards, self.total_bytes, len(self._names))

    def _commit(self) -> None:
        out = self.output_dir
        old = None
        if out.exists():
            if any(out.iterdir()) and not self.force:  # appeared while we were merging
                raise InputError(f"{out}: output directory is no longer empty; pass --force to replace it")
            old = out.parent / f".{out.name}.old-{os.getpid()}-{int(time.time())}"
            out.rename(old)
        try:
            self.tmp.rename(out)
        except BaseException:
            if old is not None:
                old.rename(out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Drop everything written so far (idempotent)."""
        self._closed = True
        self._current = []
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "ModelWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._closed:
            self.abort()


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def _version() -> str:
    from . import __version__

    return __version__


def provenance(inputs: Sequence[InputRecord], hash_inputs: bool | None = None) -> list[dict]:
    """Per input weight file: size, mtime and (when hashing) sha256."""
    all_files = [f for rec in inputs for f in rec.files]
    total = sum(f.stat().st_size for f in all_files if f.is_file())
    do_hash = hash_inputs if hash_inputs is not None else total <= AUTO_HASH_LIMIT
    rows = []
    cache: dict[Path, str] = {}
    for rec in inputs:
        for f in rec.files:
            st = f.stat()
            row = {"role": rec.role, "model": rec.ref, "file": str(f), "size": st.st_size,
                   "mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))}
            if do_hash:
                if f not in cache:
                    cache[f] = sha256_file(f)
                row["sha256"] = cache[f]
            rows.append(row)
    return rows


def model_card(*, name: str, method: str, base: str | None, models: Sequence[str], plan_yaml: str,
               provenance_rows: Sequence[dict], out_dtype: str | None, n_tensors: int, total_bytes: int,
               description: str = "") -> str:
    """README.md with Hugging Face front matter (base_model, tags) and the plan and provenance."""
    import yaml

    bases = ([base] if base else []) + [m for m in models if m != base]
    front = {"base_model": bases, "library_name": "transformers", "tags": ["merge", "mergescope"]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {name}", "",
             f"This model is a merge of pre-trained language models made with "
             f"mergescope {_version()}.", "", "## Merge details", "",
             f"- Method: `{method}`" + (f" ({description})" if description else ""),
             f"- Base model: `{base}`" if base else "- Base model: none", "- Models merged:"]
    lines += [f"  - `{m}`" for m in models]
    lines += [f"- Output: {n_tensors} tensors, {fmt_bytes(total_bytes)}" + (f", {out_dtype}" if out_dtype else ""), "",
              "## Configuration", "", "The plan below (also saved as `merge_plan.yml`) is a mergekit 0.1.x config:", "",
              "```yaml", plan_yaml.rstrip(), "```", "", "## Provenance", ""]
    hashed = any("sha256" in r for r in provenance_rows)
    lines.append("| role | model | file | size | modified | sha256 |")
    lines.append("|---|---|---|---:|---|---|")
    for r in provenance_rows:
        lines.append(f"| {r['role']} | `{r['model']}` | `{Path(r['file']).name}` | {r['size']} | {r['mtime']} | "
                     f"{r.get('sha256', 'not computed')} |")
    if not hashed:
        lines += ["", "sha256 was not computed for these (large) inputs; size and modification time identify them. "
                      "Run `mergescope merge --hash-inputs` to record hashes."]
    lines += ["", f"Tool: mergescope {_version()}", ""]
    return "\n".join(lines)
