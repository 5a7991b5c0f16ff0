"""tsv: TSV-Merge (Gargiulo et al., CVPR 2025, "Task Singular Vectors: Reducing Task Interference in
Model Merging"). A mergescope extension: mergekit has no such method.

Task vectors interfere where their singular directions overlap; TSV-M keeps each task's leading
singular directions and decorrelates them before summing. For each 2-D tensor (m × n, r = min(m, n)),
with N task vectors Δᵢ = θᵢ − θ₀:

    Uᵢ Σᵢ Vᵢᵀ = svd(Δᵢ), truncated to its top k = max(1, ⌊r/N⌋) triplets
    U = [U₁ … U_N], V = [V₁ … V_N], Σ = blockdiag(Σ₁ … Σ_N)
    U⊥, V⊥ = the polar factors of U and V (A = P S Qᵀ → P Qᵀ, the nearest orthonormal matrix)
    result = θ₀ + alpha · U⊥ Σ V⊥ᵀ

When the tasks' kept subspaces are already orthogonal, U⊥ = U and V⊥ = V, and the merge is task
arithmetic on the truncated task vectors. Every other tensor (1-D norms and biases, 3-D and up) gets
θ₀ + alpha · mean(Δᵢ), as the authors' code does (it averages whatever is not a 2-D matrix). Like that
code, every 2-D tensor counts as a matrix, embeddings and the LM head included, and the tasks are not
weighted (`weight` is not a parameter; `alpha` is the global scale, searched over (0, 3] on validation
data in the paper, 1 by default here).

Differences from the reference code, on edge cases only: k is ⌊r/N⌋ computed exactly (the code's
int(r · (1/N)) is 0 for r = N = 49) and at least 1 (the code keeps nothing, a zero Δ, when N > r).
Computed in float32 (float64 inputs stay float64) on the context's device; returned in the inputs' dtype.
Cost per matrix: N + 2 SVDs (one per task, two for the polar factors).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

from mergescope.merge.methods._util import Inputs, define
from mergescope.merge.methods.base import BaseUse, CoefficientInputs, Linear, ParamSpec

ALPHA = ParamSpec("alpha", 1.0, "float", help="scale of the merged task vector (the papers tune it, up to 3)")
PARAMS = (ALPHA,)


def svd_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for every input dtype but float64 (torch's SVD has no half-precision kernels)."""
    import torch

    return torch.float64 if dtype == torch.float64 else torch.float32


def task_vectors(inp: Inputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(base, [Δᵢ]) in the SVD dtype."""
    work = svd_dtype(inp.dtype)
    b = inp.base.to(work)
    return b, [t.to(work) - b for t in inp.models]


def polar(a: torch.Tensor) -> torch.Tensor:
    """The orthonormal polar factor P Qᵀ of A = P S Qᵀ (orthonormal columns, or rows when A is wide)."""
    import torch

    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def mean_merge(base: torch.Tensor, deltas: list[torch.Tensor], alpha: float, out_dtype: torch.dtype) -> torch.Tensor:
    """θ₀ + alpha · mean(Δᵢ): what the subspace methods do with tensors that are not matrices."""
    import torch

    mean = torch.stack(deltas).mean(dim=0)
    return base.add(mean, alpha=alpha).to(out_dtype)


def tsv(inp: Inputs) -> torch.Tensor:
    import torch

    b, deltas = task_vectors(inp)
    alpha, out_dtype = inp.params["alpha"], inp.dtype
    if b.ndim != 2:
        return mean_merge(b, deltas, alpha, out_dtype)
    k = max(1, min(b.shape) // len(deltas))
    us, ss, vhs = [], [], []
    for d in deltas:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        us.append(u[:, :k].clone())  # copies: a view would keep the whole factor alive
        ss.append(s[:k])
        vhs.append(vh[:k].clone())
        del u, s, vh
    u, s, vh = polar(torch.cat(us, dim=1)), torch.cat(ss), polar(torch.cat(vhs, dim=0))
    merged = (u * s) @ vh
    return torch.add(b, merged, alpha=alpha).to(out_dtype)


def subspace_coefficients(x: CoefficientInputs) -> tuple[np.ndarray, np.ndarray]:
    """cᵢ = alpha: alpha·Σ τᵢ to first order (exact for orthogonal task subspaces); the per-matrix
    subspaces and rescaled spectrum are not modelled."""
    return x.shared(x.params["alpha"])


METHOD = define(
    "tsv",
    tsv,
    base=BaseUse.REQUIRED,
    linear=Linear.SUBSPACE,
    min_models=1,
    max_models=None,
    params=PARAMS,
    extension=True,
    coefficients=subspace_coefficients,
    description="TSV-Merge: each task's top singular directions, decorrelated (polar factor), then summed",
)
