"""Extract a PEFT LoRA adapter from a fine-tune: B·A ≈ MODEL − BASE, per matrix, by truncated SVD.

Why: a LoRA is a small, swappable stand-in for a full fine-tune; the share of the task vector's energy
(Σ kept σ² / ‖Δ‖²_F) its rank keeps says how good a stand-in it is, per layer group.

Rules (README, "LoRA extraction"):
- Each selected 2-D `*.weight` of an attention/MLP/other module whose task vector Δ (float32) is not zero
  becomes `lora_A.weight` = √S·Vᵀ [k, in] and `lora_B.weight` = U·√S [out, k] (U, S, V: the top k of
  Δ's SVD), so B·A is the best rank-k approximation of Δ. Every module's scale alpha/r is 1.
- Rank: k = min(R, out, in); with `sv_threshold` E, the smallest k whose Σ_{i≤k} σ_i² reaches
  (E − 1e-6)·‖Δ‖²_F (the 1e-6 absorbs float32 rounding), capped by R. Ranks that differ from the
  adapter's `r` go into `rank_pattern` and `alpha_pattern` (alpha = rank: scale 1 everywhere).
- Saved whole (PEFT `modules_to_save`, the MODEL's own tensors, exact): modules with a changed non-matrix
  tensor (norms, biases of modules without a LoRA weight), and with `embeddings` the embedding and head
  modules. `lora_only` saves none of them: they are reported as lost. Lost too: embeddings/head
  without `embeddings`, tensors left out by include/exclude, biases of LoRA'd Linear modules.
- Solvers: "eigh" (default) diagonalises the smaller Gram matrix ΔΔᵀ or ΔᵀΔ (float32, Δ scaled to
  max |Δ| = 1), then takes the exact SVD of Δ projected on its top R eigenvectors (Rayleigh-Ritz):
  the same kept energy as a full SVD to ~1e-7, about 3x faster; "svd" is torch.linalg.svd
  (full_matrices=False); "lowrank" is torch.svd_lowrank (q = 2R, 8 power iterations): much faster
  but it keeps a few % less energy when the spectrum is flat (noise-like task vectors).
- `base_model_name_or_path` names the base so it resolves from any folder: `base_id` when given (a hub
  id), the hub id when BASE is a snapshot in the Hugging Face cache, else BASE's absolute path.
Streams one tensor at a time (memory: one float32 Δ plus its Gram matrix); the adapter is written into
a temporary sibling directory renamed into place at the end, as a merge is.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from mergescope.io.checkpoint import open_models
from mergescope.io.device import resolve_device
from mergescope.io.errors import InputError
from mergescope.io.guard import Write, check_io, model_reads
from mergescope.io.naming import END_GROUPS, PROJECTION_GROUPS, site_of
from mergescope.io.progress import Progress
from mergescope.lora.report import ExtractResult, MatrixResult, TensorNote, adapter_card
from mergescope.merge.output.atomic import commit_dir, staging_dir, write_text
from mergescope.merge.output.shards import safetensors_header, write_tensor

SOLVERS = ("eigh", "svd", "lowrank")
RANK_TOL = 1e-6  # energy fraction slack of the --sv-threshold rule (float32 rounding)
CHUNK = 1 << 22  # elements per slice when only a tensor's energy is needed
_LORA_GROUPS = (*PROJECTION_GROUPS, "other")
_CONV1D_TYPES = ("gpt2", "openai-gpt")  # Conv1D stores [in, out]: PEFT needs fan_in_fan_out


# -- the truncated SVD -----------------------------------------------------------------------------
def truncated_svd(delta, q: int, solver: str = "eigh"):
    """(U [m, q'], S [q'] descending, Vh [q', n]) with q' = min(q, m, n): Δ's top singular triplets."""
    import torch

    m, n = delta.shape
    q = min(q, m, n)
    if solver == "svd":
        if m < n:  # LAPACK is faster on the tall orientation
            u, s, vh = torch.linalg.svd(delta.T, full_matrices=False)
            return vh[:q].T, s[:q], u[:, :q].T
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        return u[:, :q], s[:q], vh[:q]
    if solver == "lowrank":
        u, s, v = torch.svd_lowrank(delta, q=min(2 * q, m, n), niter=8)
        return u[:, :q], s[:q], v[:, :q].T
    scale = delta.abs().max()
    x = delta / scale
    if m <= n:
        _, vecs = torch.linalg.eigh(x @ x.T)
        basis = vecs[:, -q:].flip(1)  # left singular subspace, [m, q]
        uc, s, vh = torch.linalg.svd(basis.T @ x, full_matrices=False)
        return basis @ uc, s * scale, vh
    _, vecs = torch.linalg.eigh(x.T @ x)
    basis = vecs[:, -q:].flip(1)  # right singular subspace, [n, q]
    u, s, vhc = torch.linalg.svd(x @ basis, full_matrices=False)
    return u, s * scale, vhc @ basis.T


def choose_rank(s2: Sequence[float], energy: float, rank: int, sv_threshold: float | None) -> int:
    """The rank rule (module docstring): s2 are the top σ² in descending order."""
    cap = max(1, min(rank, len(s2)))
    if sv_threshold is None or energy <= 0:
        return cap
    target = (sv_threshold - RANK_TOL) * energy
    cum = 0.0
    for k, v in enumerate(s2[:cap], 1):
        cum += float(v)
        if cum >= target:
            return k
    return cap


# -- planning ----------------------------------------------------------------------------------------
def _compile(patterns: Sequence[str], flag: str) -> list[re.Pattern]:
    out = []
    for p in patterns or ():
        try:
            out.append(re.compile(p))
        except re.error as exc:
            raise InputError(f"{flag} {p!r}: not a regular expression ({exc}); fix the pattern") from None
    return out


def _check_inputs(base, model, base_path, model_path) -> None:
    extra = [n for n in model.names() if n not in base]
    if extra:
        raise InputError(
            f"{model_path}: has tensor {extra[0]!r} (and {len(extra) - 1} more) that the base {base_path} lacks; "
            "a LoRA cannot add parameters — is BASE the model MODEL was fine-tuned from?"
        )
    missing = [n for n in base.names() if n not in model]
    if missing:
        raise InputError(
            f"{model_path}: lacks tensor {missing[0]!r} (and {len(missing) - 1} more) of the base {base_path}; "
            "is BASE the model MODEL was fine-tuned from?"
        )
    for name in model.names():
        bs, ms = tuple(base.info(name).shape), tuple(model.info(name).shape)
        if bs != ms:
            raise InputError(
                f"{model_path}: tensor {name!r} is {list(ms)} but {list(bs)} in the base {base_path}; a LoRA needs "
                "equal shapes (a resized vocabulary?) — is BASE the model MODEL was fine-tuned from?"
            )
    if model.model_type in _CONV1D_TYPES:
        raise InputError(
            f"{model_path}: model_type {model.model_type!r} stores Conv1D weights as [in, out]; extraction "
            "supports Linear layouts ([out, in]: Llama, Mistral, Qwen, ...)"
        )


def _modules(model, include, exclude, embeddings: bool, lora_only: bool) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(module, [(tensor, role)])] in checkpoint order. Roles: "lora" (the LoRA weight), "full" (saved whole
    with its module if a selected tensor of it changed), or the reason it is lost when it changed."""
    by_module: dict[str, list[str]] = {}
    for name in model.names():
        if model.info(name).is_float:
            by_module.setdefault(name.rpartition(".")[0], []).append(name)
    plan = []
    for module, names in by_module.items():
        lora_weight = None
        for name in names:
            info, site = model.info(name), site_of(name)
            if (
                len(info.shape) == 2
                and name.endswith(".weight")
                and site.group in _LORA_GROUPS
                and site.module != "rel_bias"
                and module
            ):
                lora_weight = name
        roles = []
        for name in names:
            site = site_of(name)
            selected = (not include or any(r.search(name) for r in include)) and not any(
                r.search(name) for r in exclude
            )
            if not selected:
                role = "left out by --include/--exclude"
            elif name == lora_weight:
                role = "lora"
            elif lora_weight is not None:
                role = "not a matrix of a LoRA'd module (PEFT's lora_B.bias is not written)"
            elif site.group in END_GROUPS and not embeddings:
                role = "embedding/head (pass --embeddings to save it whole)"
            elif not module:
                role = "a top-level tensor (no module to save whole)"
            elif lora_only:
                role = "not a LoRA matrix (--lora-only: not saved whole)"
            else:
                role = "full"
            roles.append((name, role))
        plan.append((module, roles))
    return plan


# -- the extraction ------------------------------------------------------------------------------------
def extract_lora(
    base_path: str | os.PathLike,
    model_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    rank: int,
    sv_threshold: float | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    embeddings: bool = False,
    lora_only: bool = False,
    force: bool = False,
    device: str = "cpu",
    solver: str = "eigh",
    progress: Progress | None = None,
    base_id: str | None = None,
) -> ExtractResult:
    """Write a PEFT LoRA adapter for MODEL − BASE into output_dir (atomically); see the module docstring."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InputError(f"--rank {rank}: must be a positive integer (the largest rank of any matrix)")
    if sv_threshold is not None and not 0 < sv_threshold <= 1:
        raise InputError(f"--sv-threshold {sv_threshold}: must be in (0, 1] (the share of Σσ² each rank keeps)")
    if solver not in SOLVERS:
        raise InputError(f"--solver {solver}: unknown; use one of {', '.join(SOLVERS)}")
    if embeddings and lora_only:
        raise InputError("--embeddings saves the embedding and head whole, which --lora-only forbids; drop one")
    inc, exc = _compile(include, "--include"), _compile(exclude, "--exclude")
    dev = resolve_device(device)
    check_io([*model_reads(base_path), *model_reads(model_path)], [Write(output_dir, "", folder=True)], force=force)
    out = Path(output_dir).expanduser()
    base, (model,) = open_models(base_path, [model_path])
    _check_inputs(base, model, base_path, model_path)
    plan = _modules(model, inc, exc, embeddings, lora_only)
    if not any(role == "lora" for _, roles in plan for _, role in roles):
        raise InputError(f"{model_path}: no matrix selected for a LoRA; check --include/--exclude")

    t0 = time.perf_counter()
    tmp = staging_dir(out)
    try:
        res = _extract(base, model, plan, tmp, rank, sv_threshold, dev, solver, progress)
        matrices, full, lost, unchanged, entries, data = res
        if not matrices:
            raise InputError(
                f"{model_path}: no selected matrix differs from the base {base_path}; there is nothing to extract"
            )
        result = ExtractResult(
            out, base_reference(base_path, base_id), str(model_path), rank, sv_threshold, solver, dev, matrices, full, lost, unchanged,
            0, 0.0,
        )  # fmt: skip
        result.adapter_bytes = _finish_safetensors(tmp, entries, data)
        write_text(tmp / "adapter_config.json", json.dumps(_adapter_config(result, plan), indent=2) + "\n")
        result.seconds = time.perf_counter() - t0
        write_text(tmp / "README.md", adapter_card(result))
        commit_dir(tmp, out, force, what="extraction")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        base.close()
        model.close()
    return result


def base_reference(base_path: str | os.PathLike, base_id: str | None = None) -> str:
    """What the adapter names as its base, resolvable from any folder: `base_id`, else the hub id of a
    Hugging Face cache snapshot (…/models--ORG--NAME/snapshots/REV), else the absolute path."""
    if base_id:
        return base_id
    p = Path(os.path.abspath(Path(base_path).expanduser()))
    if p.parent.name == "snapshots" and p.parent.parent.name.startswith("models--"):
        return p.parent.parent.name[len("models--") :].replace("--", "/")
    return str(p)


def _extract(base, model, plan, tmp: Path, rank, sv_threshold, dev, solver, progress):
    """One pass over the plan's modules: LoRA pairs and whole modules streamed into tmp/.adapter.data."""
    matrices: list[MatrixResult] = []
    full: list[TensorNote] = []
    lost: list[TensorNote] = []
    entries: list[tuple[str, tuple]] = []  # (name, (dtype, shape)) in data order
    unchanged = 0
    total = sum(model.info(n).nbytes for _, roles in plan for n, _ in roles)
    done = 0
    data = tmp / ".adapter.data"
    with open(data, "wb") as fh:

        def put(name, t):
            t = t.detach().to("cpu").contiguous()
            write_tensor(fh, t)
            entries.append((name, (t.dtype, tuple(t.shape))))

        for module, roles in plan:
            to_save: list[TensorNote] = []
            for name, role in roles:
                site = site_of(name)
                if role == "lora":
                    r = _lora_pair(base, model, name, rank, sv_threshold, dev, solver)
                    if r is None:
                        unchanged += 1
                    else:
                        a, b, energy, kept = r
                        put(f"base_model.model.{module}.lora_A.weight", a)
                        put(f"base_model.model.{module}.lora_B.weight", b)
                        shape = tuple(model.info(name).shape)
                        matrices.append(MatrixResult(name, site.group, site.layer, shape, a.shape[0], energy, kept))
                else:
                    energy = _delta_energy(base, model, name, dev)
                    if energy == 0:
                        unchanged += 1
                    elif role == "full":
                        to_save.append(TensorNote(name, site.group, energy))
                    else:
                        lost.append(TensorNote(name, site.group, energy, role))
                base.release(name)
                model.release(name)
                done += model.info(name).nbytes
                if progress is not None:
                    progress(done, total, name)
            if to_save:  # PEFT loads every tensor of a saved module: the MODEL's where selected, else the base's
                for name, role in roles:
                    src = model if role == "full" else base
                    put(f"base_model.model.{name}", src.get(name))
                    src.release(name)
                full += to_save
        fh.flush()
        os.fsync(fh.fileno())
    return matrices, full, lost, unchanged, entries, data


def _lora_pair(base, model, name, rank, sv_threshold, dev, solver):
    """(lora_A [k, in], lora_B [out, k], ‖Δ‖², kept σ²) in float32, or None when Δ is zero."""
    import torch

    delta = model.get(name).to(dev, torch.float32, copy=True)
    delta.sub_(base.get(name).to(dev))
    energy = float(torch.linalg.vector_norm(delta).double() ** 2)  # float32, cascade-summed: no float64 copy
    if not math.isfinite(energy):
        raise InputError(f"{name}: MODEL − BASE holds NaN/Inf values; check both checkpoints")
    if energy == 0:
        return None
    u, s, vh = truncated_svd(delta, rank, solver)
    s2 = (s.double() ** 2).tolist()
    k = choose_rank(s2, energy, rank, sv_threshold)
    root = s[:k].sqrt()
    a = (root[:, None] * vh[:k]).float()
    b = (u[:, :k] * root[None, :]).float()
    return a, b, energy, float(sum(s2[:k]))


def _delta_energy(base, model, name: str, dev) -> float:
    """‖MODEL − BASE‖²_F of one tensor, CHUNK elements at a time, each chunk's pages released once read
    (an embedding matrix is the largest tensor: it never needs to be whole in memory)."""
    import torch

    bf, mf = base.get(name).reshape(-1), model.get(name).reshape(-1)
    total = 0.0
    for i in range(0, mf.numel(), CHUNK):
        d = mf[i : i + CHUNK].to(dev, torch.float32, copy=True)
        d.sub_(bf[i : i + CHUNK].to(dev))
        total += float(torch.linalg.vector_norm(d).double() ** 2)
        base.release_range(name, i, i + CHUNK)
        model.release_range(name, i, i + CHUNK)
    if not math.isfinite(total):
        raise InputError(f"{name}: MODEL − BASE holds NaN/Inf values; check both checkpoints")
    return total


# -- writing -------------------------------------------------------------------------------------------
def _finish_safetensors(tmp: Path, entries, data: Path) -> int:
    """adapter_model.safetensors = header + the data streamed so far; returns the tensor bytes."""
    raw, nbytes = safetensors_header(entries)
    path = tmp / "adapter_model.safetensors"
    with open(path, "wb") as fh, open(data, "rb") as src:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        shutil.copyfileobj(src, fh, 8 << 20)
        fh.flush()
        os.fsync(fh.fileno())
    data.unlink()
    return nbytes


def _adapter_config(result: ExtractResult, plan) -> dict:
    """PEFT LoraConfig: r = the largest rank, alpha = rank per module (scale 1), full module names where a
    short name (q_proj) would also match modules left out."""
    ranks = {m.name.rpartition(".")[0]: m.rank for m in result.matrices}
    r = max(ranks.values())
    pattern = {mod: k for mod, k in ranks.items() if k != r}
    all_by_leaf: dict[str, set[str]] = {}
    for module, roles in plan:
        for name, _ in roles:
            if name == f"{module}.weight" and module:
                all_by_leaf.setdefault(module.rpartition(".")[2], set()).add(module)
    targets: list[str] = []
    for leaf in dict.fromkeys(mod.rpartition(".")[2] for mod in ranks):
        mods = [mod for mod in ranks if mod.rpartition(".")[2] == leaf]
        targets += [leaf] if set(mods) == all_by_leaf.get(leaf, set()) else mods
    saved = list(dict.fromkeys(t.name.rpartition(".")[0] for t in result.full))
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": result.base,
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": targets,
        "modules_to_save": saved or None,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "inference_mode": True,
    }
