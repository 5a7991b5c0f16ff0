"""What the merge methods share: the preamble every method runs (`define`), dtype/device alignment,
seeded generators and a per-thread scratch-buffer pool.

The preamble: a method's file holds its math, `kernel(inputs) -> tensor`, and its declaration,
`METHOD = define(name, kernel, base=..., params=..., ...)`. The entry's `merge(base, tensors,
model_params, params, ctx)` checks the inputs against the declaration (the base, how many models, their
shapes), completes the parameters (`MergeMethod.complete`: every ParamSpec, its kind, its default; a
plan's jobs come complete, direct callers may leave parameters out), casts the tensors to their common
dtype on the context's device, and calls the kernel with an `Inputs`.

Scratch buffers: on CPU a fresh multi-hundred-megabyte tensor costs more in page faults than the
arithmetic done in it, so methods borrow their temporaries from a per-thread pool keyed by purpose.
A borrowed buffer never escapes the method that borrowed it (results are always fresh tensors).
`release_workspace()` frees the pool (the executor calls it when a merge ends).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from mergescope.io.errors import InputError
from mergescope.merge.methods.base import BaseUse, MergeContext, MergeMethod

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


def flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view (a copy only if the tensor is not contiguous)."""
    return t.reshape(-1)


def weight_sum(wvec: torch.Tensor, ndim: int) -> torch.Tensor:
    """Σ wᵢ as mergekit computes it: the weights unsqueezed to [N, 1, ...] (one axis per tensor
    dimension) summed over dim 0 (for N >= 5 torch's reduction order depends on the layout)."""
    return wvec.view(-1, *([1] * ndim)).sum(dim=0).reshape(())


# ---------------------------------------------------------------------- the preamble
@dataclass
class Inputs:
    """One tensor's inputs as a method's math gets them: the parameters complete, the tensors checked
    and cast to `dtype` on `device` (streaming kernels get the stored tensors as they are, `dtype` None)."""

    base: torch.Tensor | None  # None when the method takes no base, or an optional one is not given
    models: list[torch.Tensor]
    params: dict
    model_params: list[dict]
    ctx: MergeContext
    dtype: torch.dtype | None
    device: torch.device

    @property
    def shape(self) -> torch.Size:
        return (self.base if self.base is not None else self.models[0]).shape

    @property
    def where(self) -> str:
        return where(self.ctx)

    def values(self, name: str) -> list:
        """Each model's per-model parameter `name`."""
        return [mp[name] for mp in self.model_params]

    def generator(self) -> torch.Generator | None:
        return tensor_generator(self.ctx, self.device)

    def task_vectors(self, key: str) -> torch.Tensor:
        """[N, numel] scratch rows, θᵢ − θ₀ flattened (θᵢ itself without a base): borrowed, never returned."""
        import torch

        rows = scratch(key, (len(self.models), self.models[0].numel()), self.dtype, self.device)
        b = flat(self.base) if self.base is not None else None
        for i, t in enumerate(self.models):
            if b is None:
                rows[i].copy_(flat(t))
            else:
                torch.sub(flat(t), b, out=rows[i])
        return rows


_WORDS = {1: "one", 2: "two"}


def _count(k: int, what: str) -> str:
    return f"{_WORDS.get(k, k)} {what}{'s' if k != 1 else ''}"


@dataclass(frozen=True)
class _Preamble:
    """`MergeMethod.merge` of a method declared with `define`: the checks and casts, then the kernel."""

    kernel: Callable[[Inputs], torch.Tensor]
    method: MergeMethod
    empty_gives_base: bool
    base_role: str

    def __call__(self, base, tensors, model_params=None, params=None, ctx=None):
        inputs = self.inputs(base, tensors, model_params, params, ctx)
        if not inputs.models and self.empty_gives_base:
            return inputs.base.clone()
        return self.kernel(inputs)

    def inputs(self, base, tensors, model_params=None, params=None, ctx=None) -> Inputs:
        """The checks and casts every kernel of the method gets its Inputs through."""
        import torch

        ctx = ctx or MergeContext()
        m = self.method
        tensors = list(tensors)
        if m.base is BaseUse.INPUT:
            base = None  # the base is an input like the others (the plan passes it among `tensors`)
        self._check_counts(base, len(tensors))
        check_shapes(base, tensors, ctx, m.name)
        params, mps = m.complete(params, model_params, len(tensors), where(ctx))
        device = torch.device(ctx.device)
        dtype = common_dtype([base, *tensors])
        return Inputs(
            align(base, dtype, device), [align(t, dtype, device) for t in tensors], params, mps, ctx, dtype, device
        )

    def _check_counts(self, base, n: int) -> None:
        m = self.method
        lo, hi = m.min_models, m.max_models
        if n == 0 and self.empty_gives_base:
            lo = 0
        ok = lo <= n and (hi is None or n <= hi)
        if m.base is BaseUse.REQUIRED and (base is None or not ok):
            need = "exactly one other model" if hi == lo == 1 else self._need("model besides the base")
            raise InputError(
                f"merge method {m.name} needs a base model (`base_model:`{self.base_role}) and {need} "
                f"(got {'no base, ' if base is None else ''}{n} models)"
            )
        if not ok:
            what = "input model" if m.base is BaseUse.INPUT else "model besides the base"
            raise InputError(f"merge method {m.name} needs {self._need(what)} (got {n})")

    def _need(self, what: str) -> str:
        lo, hi = self.method.min_models, self.method.max_models
        if hi == lo:
            return f"exactly {_count(lo, what)}"
        return f"at least {_count(lo, what)}" if hi is None else f"{lo} to {hi} {what}s"


@dataclass(frozen=True)
class _PartsPreamble:
    """`MergeMethod.parts` of a method declared with `define`: the same checks and casts as its merge."""

    kernel: Callable[[Inputs], object]
    preamble: _Preamble

    def __call__(self, base, tensors, model_params=None, params=None, ctx=None):
        return self.kernel(self.preamble.inputs(base, tensors, model_params, params, ctx))


@dataclass(frozen=True)
class _StreamPreamble:
    """`MergeMethod.stream` of a method declared with `define`: the parameters completed, the stored
    tensors untouched (the kernel returns None for what it does not handle)."""

    kernel: Callable[..., torch.Tensor | None]
    method: MergeMethod

    def __call__(self, raw_base, raws, model_params, params, ctx, out_dtype):
        import torch

        ctx = ctx or MergeContext()
        params, mps = self.method.complete(params, model_params, len(raws), where(ctx))
        inputs = Inputs(raw_base, list(raws), params, mps, ctx, None, torch.device(ctx.device))
        return self.kernel(inputs, out_dtype)


def define(
    name: str,
    kernel: Callable[[Inputs], torch.Tensor],
    *,
    stream: Callable[[Inputs, torch.dtype], torch.Tensor | None] | None = None,
    parts: Callable[[Inputs], object] | None = None,
    empty_gives_base: bool = False,
    base_role: str = "",
    **declaration,
) -> MergeMethod:
    """The registry entry of a method whose math is `kernel(inputs)` (see the module docstring) and whose
    streaming kernel, if any, is `stream(inputs over the stored tensors, out_dtype)`; `declaration`: the
    other MergeMethod fields; `parts(inputs)`: the method as a differentiable function of its weights
    (base.Parts). `empty_gives_base`: no model besides the base gives the base back (a sum of no task
    vectors); `base_role`: what the base is, for messages."""
    declared = MergeMethod(name=name, merge=None, **declaration)  # what the preamble checks against
    preamble = _Preamble(kernel, declared, empty_gives_base, base_role)
    return dataclasses.replace(
        declared,
        merge=preamble,
        stream=_StreamPreamble(stream, declared) if stream is not None else None,
        parts=_PartsPreamble(parts, preamble) if parts is not None else None,
    )
