"""arcee_fusion, as mergekit 0.1.5: keep the fine-tune's entries that matter most, the base elsewhere.

`base` (required) is θ₀, `tensors[0]` the one other model θ₁ (mergekit's contract: exactly two inputs,
one of them the base). No parameters. In the compute dtype D:

    δ = θ₁ − θ₀;  KL = Σ_last p·log(p/q),  p = softmax(θ₁) + 1e-8, q = softmax(θ₀) + 1e-8  (per row)
    importance = |δ| · KL  (each row's entries scaled by the row's KL; a 1-D tensor is one row)
    q1, median, q3 = order statistics of importance at ascending ranks ⌊(n−1)/4⌋, ⌊(n−1)/2⌋, ⌊3(n−1)/4⌋
    threshold = median + 1.5·(q3 − q1)                          (the upper Tukey fence, in D)
    result = θ₀ + δ · [importance ≥ threshold]                  (the mask is float32, so the result is
                                                                 float32 for half inputs, as mergekit)

Quantiles: mergekit sorts a sample of 1,000,000 positions drawn with replacement by `torch.randint`
from torch's *global* generator when the tensor has more elements than that. Torch seeds that generator
randomly per process unless `--random-seed` is given, and then the draws for a tensor depend on how many
sampled tensors ran before it in the process (mergekit's schedule). So:
- with `ctx.generator` (the caller owns its state), large tensors are sampled exactly as mergekit does
  from that generator: the same generator state gives mergekit's threshold bit for bit;
- otherwise the quantiles are exact over all n elements (deterministic, what the sample estimates),
  found by `selection.kth_largest` without a sort. Up to 1M elements both are mergekit's exact values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

from mergescope.merge.methods._util import Inputs, define, flat, scratch
from mergescope.merge.methods.base import BaseUse, CoefficientInputs, Linear, Trim

SAMPLE_SIZE = 1_000_000  # mergekit's quantile sample (and the size above which it samples)
EPS = 1e-8  # added to both softmaxes
_ROWS_CHUNK = 1 << 20  # elements of the KL temporaries at a time


def row_kl(model: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """KL(softmax(model) ‖ softmax(base)) per row (last dim), keepdim, in the inputs' dtype.

    Rows are processed a chunk at a time (softmax and the row sum are per row, so chunking changes no
    bit) to keep the temporaries small."""
    import torch

    if model.dim() == 0:
        return row_kl(model.view(1), base.view(1)).view(())
    cols = model.shape[-1]
    m2, b2 = model.reshape(-1, cols), base.reshape(-1, cols)
    rows = m2.shape[0]
    out = torch.empty((rows, 1), dtype=model.dtype, device=model.device)
    step = max(1, _ROWS_CHUNK // max(cols, 1))
    for s in range(0, rows, step):
        e = min(rows, s + step)
        p = torch.softmax(m2[s:e], dim=-1).add_(EPS)
        r = torch.softmax(b2[s:e], dim=-1).add_(EPS)
        torch.div(p, r, out=r)
        r.log_().mul_(p)
        torch.sum(r, dim=-1, keepdim=True, out=out[s:e])
        del p, r
    return out.view(*model.shape[:-1], 1)


def quantile_ranks(n: int) -> tuple[int, int, int]:
    """Ascending 0-based ranks of q1, median, q3 among n values: ⌊q·(n − 1)⌋ (mergekit's float32 product
    is exact for every n it applies it to, n ≤ 1,000,000)."""
    return (n - 1) // 4, (n - 1) // 2, 3 * (n - 1) // 4


def exact_quantiles(values: torch.Tensor) -> list[torch.Tensor]:
    """[q1, median, q3] of 1-D `values` (0-dim tensors of its dtype), exact, without sorting."""
    import torch

    from mergescope.stats.selection import kth_largest

    n = values.numel()
    ranks = quantile_ranks(n)
    if bool(torch.isnan(values).any()):  # kth_largest ranks NaN lowest; mergekit's sort puts it last
        return [torch.kthvalue(values, r + 1).values for r in ranks]
    return [kth_largest(values, n - r, scratch)[0] for r in ranks]


def sampled_quantiles(values: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """[q1, median, q3] as mergekit estimates them for more than SAMPLE_SIZE values: SAMPLE_SIZE
    positions drawn with replacement from `generator` (one `randint` call, like mergekit's), then the
    same ranks among the drawn values."""
    import torch

    pos = torch.randint(values.numel(), (SAMPLE_SIZE,), generator=generator, device=values.device)
    sample = values[pos]
    del pos
    return [torch.kthvalue(sample, r + 1).values for r in quantile_ranks(SAMPLE_SIZE)]


def fusion_threshold(importance: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """median + 1.5·(q3 − q1) of `importance` (0-dim, its dtype); see the module docstring for the
    quantiles."""
    a = flat(importance)
    if generator is not None and a.numel() > SAMPLE_SIZE:
        q1, med, q3 = sampled_quantiles(a, generator)
    else:
        q1, med, q3 = exact_quantiles(a)
    return med + 1.5 * (q3 - q1)


def arcee_fusion(inp: Inputs) -> torch.Tensor:
    import torch

    dtype, b, m = inp.dtype, inp.base, inp.models[0]
    out_dtype = torch.promote_types(dtype, torch.float32)  # δ times a float32 mask
    if b.numel() == 0:
        return b.to(out_dtype, copy=True)
    delta = torch.sub(m, b)
    importance = torch.abs(delta).mul_(row_kl(m, b))
    threshold = fusion_threshold(importance, inp.ctx.generator)
    keep = torch.ge(importance, threshold)
    del importance
    out = keep.to(out_dtype)  # 1.0 / 0.0
    del keep
    return out.mul_(delta).add_(b)


def whole_task_vector(x: CoefficientInputs) -> tuple[np.ndarray, np.ndarray]:
    """cᵢ = 1: the whole task vector (its outlier mask is not modelled)."""
    return x.shared(1.0)


METHOD = define(
    "arcee_fusion",
    arcee_fusion,
    base=BaseUse.REQUIRED,
    linear=Linear.TASK_SUM,
    min_models=1,
    max_models=1,
    params=(),
    trim=Trim.IMPORTANCE_OUTLIERS,
    coefficients=whole_task_vector,
    description="Arcee Fusion: the model's entries whose |delta|·KL is an upper outlier, the base elsewhere",
)
