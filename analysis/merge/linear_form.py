"""A plan's merge as a differentiable function of its models' weights: what `fit` optimises and
`sensitivity` differentiates.

Every output tensor of the plan becomes, once, either a constant (tensors the weights do not touch:
copies, non-float buffers) or its method's `Parts` (methods/base.py): θ₀ + Σᵢ wᵢ·dᵢ / D(w) with the
trims and elected signs frozen at the plan's own weights (the same seed draws the same DARE masks). The
weights come per tensor from `weights_of(job)`: a caller maps each (layer, group) site to the entries
of its parameter vector. Memory: the base and every model's frozen task vector in float32, (N + 1) ×
the model, plus the masks of sign-electing methods; `bytes` says how much, before anything is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from mergescope.io.errors import InputError
from mergescope.io.naming import site_of
from mergescope.io.progress import Progress, ShouldStop, check

SUPPORTED = ("task_arithmetic", "linear", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties")
SUPPORTED += ("della", "della_linear")


@dataclass
class Piece:
    """One output tensor: a constant, or its parts and the plan models its weights belong to."""

    name: str
    layer: int | None
    group: str
    shape: tuple[int, ...]
    const: object = None  # torch.Tensor
    parts: object = None  # methods.base.Parts
    models: tuple[str, ...] = ()  # the plan's model reference per term (in Parts order)
    fixed: tuple[float | None, ...] = ()  # a term's weight when it is no plan model's (the base as an input)


def estimate_bytes(plan) -> int:
    """What a LinearForm of `plan` holds, from the headers alone: (N + 1) float32 copies of the merged
    tensors, plus a float32 mask per model for methods that elect signs."""
    from mergescope.merge.plan import close_all

    method = plan.method()
    cks = plan.open_checkpoints()
    try:
        jobs = list(plan.tensor_jobs(cks))
        per = sum(4 * max(1, len(j.inputs)) * _numel(j.shape) + 4 * _numel(j.shape) for j in jobs if j.is_float)
        mask = sum(4 * len(j.inputs) * _numel(j.shape) for j in jobs if j.is_float) if method.elects_signs else 0
        return per + mask
    finally:
        close_all(cks)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class LinearForm:
    """The plan's merged tensors at any weights: `tensors(weights_of)` is a mapping name -> tensor that
    computes each merged tensor from the weights when asked (so a forward pass builds the model as it
    goes, and gradients reach the weights)."""

    def __init__(self, pieces: list[Piece], config: dict, tokenizer_dir, models: list[str]):
        self.pieces = {p.name: p for p in pieces}
        self.config, self.tokenizer_dir, self.models = config, tokenizer_dir, models

    @classmethod
    def from_plan(
        cls,
        plan,
        *,
        device: str = "cpu",
        seed: int | None = None,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> LinearForm:
        import torch

        from mergescope.merge.executor import job_inputs, open_merge
        from mergescope.merge.methods.base import MergeContext

        method = plan.method()
        if method.parts is None:
            raise InputError(
                f"merge_method {method.name}: fit and sensitivity differentiate {', '.join(SUPPORTED)}; for "
                f"{method.name}, search the table with `mergescope tune` instead"
            )
        refs = list(plan.input_models())
        pieces = []
        with open_merge(plan, device=device, seed=seed) as run:
            total = len(run.jobs)
            for k, job in enumerate(run.jobs):
                check(should_stop)
                site = site_of(job.name)
                ins = [run.cks[x.model].get(x.name) for x in job.all_inputs]
                if not job.is_float or not job.inputs:
                    const = ins[0].to(device) if job.is_float else ins[0]
                    pieces.append(Piece(job.name, site.layer, site.group, job.shape, const=const))
                else:
                    base, tensors = job_inputs(job, ins, run.device, torch.float32)
                    ctx = MergeContext(tensor_name=job.name, seed=seed, device=run.device)
                    parts = method.parts(base, tensors, job.model_params, job.params, ctx)
                    names = tuple(x.model for x in job.inputs)
                    fixed = tuple(
                        None if m in refs else float(mp.get("weight", 1.0)) for m, mp in zip(names, job.model_params)
                    )
                    pieces.append(
                        Piece(job.name, site.layer, site.group, job.shape, parts=parts, models=names, fixed=fixed)
                    )
                for x in job.all_inputs:
                    run.cks[x.model].release(x.name)
                if progress is not None:
                    progress(k + 1, total, f"reading {job.name}")
            donor = run.cks[plan.config_donor()] if plan.config_donor() in run.cks else next(iter(run.cks.values()))
            config = dict(donor.config or {})
            tok = donor.tokenizer_dir or getattr(donor, "root", None)
        return cls(pieces, config, tok, refs)

    @property
    def bytes(self) -> int:
        n = 0
        for p in self.pieces.values():
            for t in (p.const, *((p.parts.offset, p.parts.terms, p.parts.kept) if p.parts else ())):
                if t is not None and hasattr(t, "element_size"):
                    n += t.numel() * t.element_size()
        return n

    def weighted(self) -> Iterator[Piece]:
        return (p for p in self.pieces.values() if p.parts is not None)

    def tensors(self, weights_of: Callable[[Piece], object]) -> Mapping:
        """name -> tensor at the weights `weights_of(piece)` ([N] tensor, one per term) gives."""
        return _Merged(self, weights_of)


class _Merged(Mapping):
    def __init__(self, form: LinearForm, weights_of):
        self.form, self.weights_of = form, weights_of

    def __getitem__(self, name: str):
        p = self.form.pieces[name]
        if p.parts is None:
            return p.const
        return p.parts.merged(self.weights_of(p)).view(p.shape)

    def __iter__(self):
        return iter(self.form.pieces)

    def __len__(self) -> int:
        return len(self.form.pieces)
