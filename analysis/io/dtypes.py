"""The one dtype table: safetensors codes, torch names, sizes, and the names a plan may use.

Checkpoint headers, the writer and plans all speak in these names, so reading a header (or a cached
report) needs no torch; `torch_dtype()` converts at the point where tensors are touched.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str  # torch's attribute name
    code: str  # the safetensors header's code
    itemsize: int
    is_float: bool


TABLE = (
    DType("float64", "F64", 8, True),
    DType("float32", "F32", 4, True),
    DType("float16", "F16", 2, True),
    DType("bfloat16", "BF16", 2, True),
    DType("float8_e4m3fn", "F8_E4M3", 1, True),
    DType("float8_e5m2", "F8_E5M2", 1, True),
    DType("int64", "I64", 8, False),
    DType("int32", "I32", 4, False),
    DType("int16", "I16", 2, False),
    DType("int8", "I8", 1, False),
    DType("uint8", "U8", 1, False),
    DType("bool", "BOOL", 1, False),
)
BY_CODE = {d.code: d for d in TABLE}
BY_NAME = {d.name: d for d in TABLE}

# What a plan's `dtype:` / `out_dtype:` may say (mergekit's names; a "torch." prefix is allowed).
PLAN_DTYPES = ("bfloat16", "float16", "float32", "float64")
PLAN_ALIASES = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float": "float32",
    "fp64": "float64",
    "double": "float64",
}


def plan_dtype(name) -> str | None:
    """The canonical plan dtype name of `name` ('torch.bfloat16' -> 'bfloat16'), or None."""
    if not isinstance(name, str):
        return None
    n = name[len("torch.") :] if name.startswith("torch.") else name
    return n if n in PLAN_DTYPES else None


def of_torch(dtype) -> DType:
    """The table entry of a torch dtype (KeyError for dtypes safetensors cannot store)."""
    return BY_NAME[str(dtype).replace("torch.", "")]


def torch_dtype(name: str):
    """The torch dtype for a table name or safetensors code (imports torch)."""
    import torch

    d = BY_CODE.get(name) or BY_NAME[name]
    return getattr(torch, d.name)
