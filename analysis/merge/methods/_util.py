"""Helpers shared by the merge methods: parameter lookup, dtype/device alignment, seeded generators
and a per-thread scratch-buffer pool.

Scratch buffers: on CPU a fresh multi-hundred-megabyte tensor costs more in page faults than the
arithmetic done in it, so methods borrow their temporaries from a per-thread pool keyed by purpose.
A borrowed buffer never escapes the method that borrowed it (results are always fresh tensors).
`release_workspace()` frees the pool (the executor calls it when a merge ends).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from mergescope.io.errors import InputError
from mergescope.merge.methods.base import MergeContext, ParamSpec

# Temporaries smaller than this are plain allocations; page faults only matter for big ones.
_POOL_MIN_NUMEL = 1 << 18


class _Pool(threading.local):
    def __init__(self) -> None:
        self.buffers: dict[tuple, torch.Tensor] = {}


_POOL = _Pool()


def scratch(key: str, shape: Sequence[int] | int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable uninitialised buffer for `key` (contents are garbage). Never return it to a caller."""
    import torch

    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    numel = math.prod(shape)
    device = torch.device(device)
    if numel < _POOL_MIN_NUMEL or device.type != "cpu":
        # CUDA's caching allocator already reuses memory; pooling there would only pin it.
        return torch.empty(shape, dtype=dtype, device=device)
    k = (key, dtype, device)
    buf = _POOL.buffers.get(k)
    if buf is None or buf.numel() < numel:
        _POOL.buffers.pop(k, None)
        del buf
        buf = torch.empty(numel, dtype=dtype, device=device)
        _POOL.buffers[k] = buf
    return buf[:numel].view(shape)


def release_workspace() -> None:
    """Free this thread's scratch buffers."""
    _POOL.buffers.clear()


def tensor_generator(ctx: MergeContext, device: torch.device) -> torch.Generator | None:
    """The generator a randomised method draws from for this tensor.

    - `ctx.generator` if the caller gave one (the caller then owns reproducibility);
    - else, with `ctx.seed` set, a fresh generator seeded from blake2b(seed, tensor_name): the draws
      for a tensor depend only on (seed, tensor name, model order), never on which tensors were
      merged before it or on threads;
    - else None: torch's global RNG, like mergekit (not reproducible).
    """
    import torch

    if ctx.generator is not None:
        return ctx.generator
    if ctx.seed is None:
        return None
    digest = hashlib.blake2b(f"{int(ctx.seed)}\x00{ctx.tensor_name}".encode(), digest_size=8).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return g


def where(ctx: MergeContext) -> str:
    return f" (tensor {ctx.tensor_name})" if ctx.tensor_name else ""


def global_params(specs: Sequence[ParamSpec], params: dict | None, ctx: MergeContext, method: str) -> dict[str, Any]:
    """Global parameters with spec defaults filled in; a missing required one is an InputError."""
    params = params or {}
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.per_model:
            continue
        value = params.get(spec.name)
        if value is None:
            if spec.required:
                raise InputError(
                    f"merge method {method}: parameter '{spec.name}' is required{where(ctx)}; "
                    f"set it under top-level `parameters:`"
                )
            value = spec.default
        out[spec.name] = value
    return out


def model_params(
    specs: Sequence[ParamSpec],
    model_params: Sequence[dict] | None,
    n: int,
    params: dict | None,
    ctx: MergeContext,
    method: str,
) -> list[dict[str, Any]]:
    """Per-model ("tensor") parameters for each of `n` models.

    Lookup order as mergekit: the model's own value, then the global `parameters:` value (mergekit's
    per-model parameter sources end with the top-level parameters), then the spec default.
    """
    params = params or {}
    mps = list(model_params or [])
    if len(mps) < n:
        mps += [{}] * (n - len(mps))
    out = []
    for i in range(n):
        mp = mps[i] or {}
        resolved: dict[str, Any] = {}
        for spec in specs:
            if not spec.per_model:
                continue
            value = mp.get(spec.name)
            if value is None:
                value = params.get(spec.name)
            if value is None:
                if spec.required:
                    raise InputError(
                        f"merge method {method}: parameter '{spec.name}' is required for model #{i + 1}"
                        f"{where(ctx)}; set it in that model's `parameters:` or globally"
                    )
                value = spec.default
            resolved[spec.name] = value
        out.append(resolved)
    return out


def common_dtype(tensors: Sequence[torch.Tensor | None]) -> torch.dtype:
    """mergekit promotes a group's inputs to one dtype before merging (after loading in `dtype:`)."""
    import torch

    dtype = None
    for t in tensors:
        if t is None:
            continue
        dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    if dtype is None or not dtype.is_floating_point:
        raise InputError("merge methods need floating-point tensors")
    return dtype


def align(t: torch.Tensor | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """Move/cast without copying when nothing changes."""
    if t is None:
        return None
    return t.to(device=device, dtype=dtype)


def check_shapes(base: torch.Tensor | None, tensors: Sequence[torch.Tensor], ctx: MergeContext, method: str) -> None:
    ref = base if base is not None else (tensors[0] if tensors else None)
    if ref is None:
        return
    for i, t in enumerate(tensors):
        if t.shape != ref.shape:
            raise InputError(
                f"merge method {method}: shape mismatch{where(ctx)}: model #{i + 1} has "
                f"{tuple(t.shape)}, expected {tuple(ref.shape)}"
            )


def base_and_one(base, tensors, ctx: MergeContext, method: str, base_role: str = ""):
    """The inputs of a method that merges one model into the base (slerp, nearswap, arcee_fusion):
    (device, common dtype, base, model), both moved and cast; InputError for any other input count."""
    import torch

    if base is None or len(tensors) != 1:
        raise InputError(
            f"merge method {method} needs a base model (`base_model:`{base_role}) and exactly one other model "
            f"(got {'no base, ' if base is None else ''}{len(tensors)} models)"
        )
    check_shapes(base, tensors, ctx, method)
    device = torch.device(ctx.device)
    dtype = common_dtype([base, tensors[0]])
    return device, dtype, align(base, dtype, device), align(tensors[0], dtype, device)


def flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view (a copy only if the tensor is not contiguous)."""
    return t.reshape(-1)


def weight_sum(wvec: torch.Tensor, ndim: int) -> torch.Tensor:
    """Σ wᵢ as mergekit computes it: the weights unsqueezed to [N, 1, ...] (one axis per tensor
    dimension) summed over dim 0 (for N >= 5 torch's reduction order depends on the layout)."""
    return wvec.view(-1, *([1] * ndim)).sum(dim=0).reshape(())
