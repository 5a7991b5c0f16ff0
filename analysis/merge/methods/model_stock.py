"""model_stock, as mergekit 0.1.5 (Model Stock, arXiv 2403.19522).

`base` (required) is the anchor θ₀; `tensors` are N >= 2 fine-tunes. With offsets δᵢ = θᵢ − θ₀:

    cos = mean over pairs i<j of clamp(δᵢ·δⱼ / max(‖δᵢ‖‖δⱼ‖, 1e-6), −1, 1)
    t = N·cos / (1 + (N−1)·cos)   (t = 0, i.e. the base, where |1 + (N−1)·cos| < 1e-6)
    result = t·mean(θᵢ) + (1 − t)·θ₀

With `filter_wise` (default false) each row (last dim; a 1-D tensor is one row) gets its own t;
otherwise the whole tensor is one vector. Computed in the inputs' dtype (the whole-tensor dot
products are accumulated in float64).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

from mergescope.merge.methods._util import Inputs, define, flat, scratch
from mergescope.merge.methods.base import BaseUse, CoefficientInputs, Linear, ParamSpec

PARAMS = (ParamSpec("filter_wise", False, "bool", help="one interpolation factor per row instead of per tensor"),)

_CHUNK = 1 << 20


def _t_from_cos(cos, count: int):
    import torch

    denom = 1 + (count - 1) * cos
    if isinstance(cos, torch.Tensor):
        singular = denom.abs() < 1e-6
        safe = torch.where(singular, torch.ones_like(denom), denom)
        return torch.where(singular, torch.zeros_like(cos), (count * cos) / safe)
    return 0.0 if abs(denom) < 1e-6 else count * cos / denom


def model_stock(inp: Inputs) -> torch.Tensor:
    import torch

    dtype, device = inp.dtype, inp.device
    w0, ws = inp.base, inp.models
    count = len(ws)
    shape = w0.shape

    if inp.params["filter_wise"]:
        r0 = w0 if w0.dim() > 1 else w0.unsqueeze(0)
        offsets = [(w if w.dim() > 1 else w.unsqueeze(0)) - r0 for w in ws]
        norms = [torch.linalg.vector_norm(o, dim=-1) for o in offsets]
        cos_list = [
            ((offsets[i] * offsets[j]).sum(dim=-1) / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1)
            for i, j in itertools.combinations(range(count), 2)
        ]
        del offsets
        cos = torch.stack(cos_list).mean(dim=0).unsqueeze(-1)
        t = _t_from_cos(cos, count)
        avg = sum(w if w.dim() > 1 else w.unsqueeze(0) for w in ws) / count
        return (t * avg + (1 - t) * r0).reshape(shape)

    n = w0.numel()
    b = flat(w0)
    gram = torch.zeros(count, count, dtype=torch.float64)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    buf = scratch("model_stock.offsets", (count, min(n, _CHUNK)), work, device)
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        chunk = buf[:, : e - s]
        for i, w in enumerate(ws):
            torch.sub(flat(w)[s:e].to(work), b[s:e].to(work), out=chunk[i])
        c64 = chunk.to(torch.float64)
        gram += (c64 @ c64.T).cpu()
    norms = gram.diagonal().clamp(min=0).sqrt()
    pairs = []
    for i, j in itertools.combinations(range(count), 2):
        c = float(gram[i, j]) / max(float(norms[i] * norms[j]), 1e-6)
        pairs.append(min(1.0, max(-1.0, c)))
    cos = sum(pairs) / len(pairs)
    t = _t_from_cos(cos, count)
    out = torch.add(flat(ws[0]), flat(ws[1]))
    for w in ws[2:]:
        out.add_(flat(w))
    out.div_(count).mul_(t).add_(b, alpha=1 - t)
    return out.view(shape)


def stock_ratio_coefficients(x: CoefficientInputs) -> tuple[np.ndarray, np.ndarray]:
    """The interpolation ratio t from the site's measured mean pairwise cosine (mergekit computes it per
    tensor), shared by the models: cᵢ = t / N."""
    import math

    k = x.count
    cos = 0.0 if x.cosine is None or not math.isfinite(x.cosine) else x.cosine
    denom = 1 + (k - 1) * cos
    t = (k * cos / denom) if k and abs(denom) > 1e-12 else 0.0
    return x.shared(t / max(k, 1))


METHOD = define(
    "model_stock",
    model_stock,
    base=BaseUse.REQUIRED,
    linear=Linear.STOCK_RATIO,
    min_models=2,
    max_models=None,
    params=PARAMS,
    coefficients=stock_ratio_coefficients,
    description="Model Stock: move from the base toward the models' average by their pairwise agreement",
)
