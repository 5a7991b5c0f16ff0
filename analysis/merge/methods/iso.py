"""iso_c and iso_cts: isotropic merging (Marczak et al., ICML 2025, "No Task Left Behind: Isotropic Model
Merging with Common and Task-Specific Subspaces"). Mergescope extensions: mergekit has no such methods.

The sum of task vectors has a few dominant singular directions, and the tasks whose directions are
weak get lost; flattening the spectrum gives every direction the same scale. For each 2-D tensor
(m × n, r = min(m, n)) with N task vectors Δᵢ = θᵢ − θ₀ and their sum Δ = Σᵢ Δᵢ = U S Vᵀ:

iso_c   result = θ₀ + alpha · mean(S) · U Vᵀ        (all r singular values replaced by their mean)

iso_cts keeps the sum's top directions as a common subspace and spends the rest on each task's own:
    k = int(r · common_space_fraction), then rounded so that the rest splits evenly over the tasks:
        t = round((r − k) / N) · N (Python's round, half to even), k = r − t, p = t / N per task
    common: U_c = U[:, :k], S[:k], V[:, :k]
    task i: the residual Rᵢ = Δᵢ − U_c U_cᵀ Δᵢ (Δᵢ off the common left subspace), its top p triplets
    stacked (tasks first, then the common part): U* = [U_R₁ … U_R_N U_c], V* likewise, S* = their values
    U⊥, V⊥ = the polar factors of U* and V* (A = P S Qᵀ → P Qᵀ)
    result = θ₀ + alpha · mean(S*) · U⊥ V⊥ᵀ
  The isotropic scale is the mean of the stacked values S* (the sum's top k and the residuals' top p),
  as the authors' code computes it, not the mean of the sum's whole spectrum.

Every other tensor (1-D, 3-D and up) gets θ₀ + alpha · mean(Δᵢ), as the authors' code does for both
methods; there every 2-D tensor counts as a matrix, embeddings and the LM head included. The tasks
are not weighted (no `weight`); `alpha` is searched over (0, 3] on validation data in the paper and
is 1 by default here; `common_space_fraction` defaults to the paper's 0.8.

One difference from the reference code, on tiny matrices only: the task part t is capped at ⌊r/N⌋·N
(the code's rounding can exceed r, e.g. r = 3, N = 2, k = 0, and leave a negative k). The isotropic
scale includes zero singular values (a rank-deficient sum spreads mean(S) over directions the SVD
completes arbitrarily), exactly as the reference does. Computed in float32 (float64 inputs stay
float64) on the context's device. Cost per matrix: iso_c one SVD; iso_cts N + 3 (the sum, each
residual, the two polar factors).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from mergescope.merge.methods._util import Inputs, define
from mergescope.merge.methods.base import BaseUse, Linear, MergeMethod, ParamSpec
from mergescope.merge.methods.tsv import ALPHA, mean_merge, polar, subspace_coefficients, task_vectors

ISO_C_PARAMS = (ALPHA,)
ISO_CTS_PARAMS = (
    ALPHA,
    ParamSpec(
        "common_space_fraction",
        0.8,
        "float",
        min=0.0,
        max=1.0,
        exclusive=True,
        help="share of each matrix's rank given to the sum's common subspace, strictly between 0 and 1",
    ),
)


def iso_c(inp: Inputs) -> torch.Tensor:
    import torch

    b, deltas = task_vectors(inp)
    alpha, out_dtype = inp.params["alpha"], inp.dtype
    if b.ndim != 2:
        return mean_merge(b, deltas, alpha, out_dtype)
    u, s, vh = torch.linalg.svd(_sum(deltas), full_matrices=False)
    return torch.add(b, u @ vh, alpha=alpha * float(s.mean())).to(out_dtype)


def _sum(deltas: list[torch.Tensor]) -> torch.Tensor:
    """Σᵢ Δᵢ in one fresh tensor (no N-fold stack)."""
    total = deltas[0].clone()
    for d in deltas[1:]:
        total.add_(d)
    return total


def split(r: int, n_tasks: int, fraction: float) -> tuple[int, int]:
    """(k, p): the common subspace's size and each task's, k + n_tasks·p = r, as the reference rounds."""
    k = int(r * fraction)
    t = min(round((r - k) / n_tasks) * n_tasks, r // n_tasks * n_tasks)
    return r - t, t // n_tasks


def iso_cts(inp: Inputs) -> torch.Tensor:
    import torch

    b, deltas = task_vectors(inp)
    alpha, out_dtype = inp.params["alpha"], inp.dtype
    if b.ndim != 2:
        return mean_merge(b, deltas, alpha, out_dtype)
    k, p = split(min(b.shape), len(deltas), inp.params["common_space_fraction"])
    u, s, vh = torch.linalg.svd(_sum(deltas), full_matrices=False)
    uc, sc, vhc = u[:, :k].clone(), s[:k], vh[:k].clone()  # copies: views would keep the whole factors alive
    del u, s, vh
    us, ss, vhs = [], [], []
    if p > 0:
        for d in deltas:
            residual = d - uc @ (uc.T @ d)
            ut, st, vht = torch.linalg.svd(residual, full_matrices=False)
            us.append(ut[:, :p].clone())
            ss.append(st[:p])
            vhs.append(vht[:p].clone())
            del residual, ut, st, vht
    u = polar(torch.cat([*us, uc], dim=1))
    vh = polar(torch.cat([*vhs, vhc], dim=0))
    scale = float(torch.cat([*ss, sc]).mean())
    return torch.add(b, u @ vh, alpha=alpha * scale).to(out_dtype)


METHODS: tuple[MergeMethod, ...] = (
    define(
        "iso_c",
        iso_c,
        base=BaseUse.REQUIRED,
        linear=Linear.SUBSPACE,
        min_models=1,
        max_models=None,
        params=ISO_C_PARAMS,
        extension=True,
        coefficients=subspace_coefficients,
        description="Iso-C: the sum of the task vectors with its singular values all set to their mean",
    ),
    define(
        "iso_cts",
        iso_cts,
        base=BaseUse.REQUIRED,
        linear=Linear.SUBSPACE,
        min_models=1,
        max_models=None,
        params=ISO_CTS_PARAMS,
        extension=True,
        coefficients=subspace_coefficients,
        description="Iso-CTS: the sum's top singular directions plus each task's own, orthogonalised, isotropic",
    ),
)
