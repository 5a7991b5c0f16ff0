"""The merge's per-tensor pipeline, shared by every sink (shards on disk, tensors in memory):

    plan ──validate──▶ open checkpoints (headers) ──▶ tensor jobs (names, shapes, params: all checked
    before any tensor data is read) ──▶ per job: read inputs (mmap) → compute dtype on `device` →
    method.merge(base, tensors, model_params, params, ctx) → out dtype → the sink, in job order

Speed and memory: methods with a streaming CPU kernel (`MergeMethod.stream`: task_arithmetic and
TIES-style magnitude trims, see methods/gta_stream.py) get the stored, memory-mapped tensors and
work through them in cache-sized float32 chunks, releasing the inputs' pages behind them; those
jobs run on `threads` worker threads (one tensor each, torch's own intra-op threads set to 1 for the
duration of the merge so no op waits on a descheduled helper thread), up to threads + 1 tensors in
flight, results yielded in order. Other methods take float32 copies of the inputs and run one
tensor at a time. Either way each job's input pages are released when it is done, so peak memory
follows the largest tensor, not the model.

Numerics: inputs are converted to the plan's `dtype`, or float32 when it has none (mergekit would
compute in the inputs' promoted dtype, e.g. bfloat16; float32 differs from that only by rounding and
matches mergekit run with `dtype: float32`). The output dtype is `out_dtype`, else `dtype`, else the
inputs' stored (promoted) dtype, i.e. the base's dtype for ordinary fine-tunes: mergekit's rule.
Non-floating tensors (integer buffers) are copied when all inputs agree and refused otherwise.

Randomised methods (dare_*, della*) get `ctx.seed`; each tensor's draws then depend only on the seed
and the tensor name. Without a seed they use torch's global RNG, like mergekit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from mergescope.io.device import resolve_device
from mergescope.io.errors import InputError
from mergescope.io.progress import Cancelled, ShouldStop
from mergescope.merge.plan import Plan, close_all
from mergescope.merge.preflight import flag_for, run_checks


class MergeError(RuntimeError):
    """A merge method failed on a tensor (not a user-input problem); nothing was kept."""


@dataclass
class MergeRun:
    """An opened merge: its checkpoints, every job (checked), and the generator of merged tensors."""

    plan: Plan
    cks: dict
    jobs: list
    method: object
    device: str
    compute: object  # torch dtype
    seed: int | None
    workers: int
    checks: object = None  # preflight.Checks
    allow_non_finite: bool = False
    outputs: list = field(default_factory=list)  # what is written, in order: jobs, and experts.Fused
    _fused: dict = field(default_factory=dict)  # job index -> (experts.Fused, Slot)

    def __post_init__(self):
        from mergescope.merge.experts import fused_outputs

        self.outputs, self._fused = fused_outputs(self.jobs, self.cks)

    @property
    def total_bytes(self) -> int:
        return sum(j.nbytes for j in self.jobs)

    def tensors(self, should_stop: ShouldStop | None = None) -> Iterator[tuple[object, object]]:
        """(output, merged tensor in its output dtype, on CPU), in `outputs` order: an output is a job,
        or an experts.Fused (name, out_dtype, shape, nbytes) stacking per-expert jobs back together."""
        from mergescope.merge.experts import restack

        def compute_job(job):
            try:
                out = _compute(job, self.cks, self.method, self.device, self.compute, self.seed)
                if job.is_float and not self.allow_non_finite:
                    _check_finite(job, out, self.cks)
                return out
            finally:
                for x in job.all_inputs:  # drop the inputs' mapped pages (they stay in the page cache)
                    self.cks[x.model].release(x.name)

        yield from restack(_ordered_results(self.jobs, compute_job, self.workers, should_stop), self._fused)


@contextmanager
def open_merge(
    plan: Plan,
    *,
    device: str = "cpu",
    seed: int | None = None,
    threads: int | None = None,
    analysis=None,
    allow_non_finite: bool = False,
    force_incompatible: bool = False,
):
    """Validate the plan, open its checkpoints, build every job (headers only) and run the readiness
    checks (preflight.py; `analysis`: the inputs' cached Report); yields a MergeRun and closes
    everything (and frees the methods' scratch memory) afterwards. An `error` finding refuses the merge
    unless its flag says otherwise (`allow_non_finite`, `force_incompatible`)."""
    import torch

    from mergescope.merge.methods._util import release_workspace

    dev = resolve_device(device)
    plan.validate(check_paths=True)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise InputError(f"--seed {seed!r}: expected an integer")
    method = plan.method()
    compute = plan.compute_dtype() or torch.float32
    _trim_malloc()
    cks = plan.open_checkpoints()
    prev_threads = torch.get_num_threads()
    try:
        jobs = list(plan.tensor_jobs(cks))  # every name, shape and parameter is checked here
        checks = run_checks(plan, cks, jobs, analysis)
        for f in checks.errors:
            allowed = allow_non_finite if f.code == "non-finite" else force_incompatible
            if not allowed:
                raise InputError(
                    f"{f.model or plan.base_model}: {f.code}: {f.message}. Refusing to merge; pass {flag_for(f)} to merge anyway"
                )
        workers = _workers(threads, method, dev, compute)
        if workers > 1:
            torch.set_num_threads(1)  # parallel across tensors: each op runs in its worker, no barriers
        yield MergeRun(plan, cks, jobs, method, dev, compute, seed, workers, checks, allow_non_finite)
    finally:
        torch.set_num_threads(prev_threads)
        close_all(cks)
        release_workspace()


def _trim_malloc(nbytes: int = 0) -> None:
    """Make glibc return freed heap memory at the top of its heaps (M_TRIM_THRESHOLD = 0; by
    default it grows with the mmap threshold, up to 64 MB, after large frees, and 1 MB was not
    enough here). Tensor-sized temporaries freed by the worker threads were otherwise kept: on the
    3B benchmark set peak RSS was 1.9 GB instead of 1.1 GB for TIES, at no measurable cost in time.
    Process-wide; a no-op off glibc."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-1, int(nbytes))  # M_TRIM_THRESHOLD
    except (OSError, AttributeError, TypeError):
        pass


def _check_finite(job, out, cks) -> None:
    """A NaN/Inf in a merged tensor comes from an input: name it (only then are the inputs re-read)."""
    import torch

    if out.numel() == 0:
        return
    lo, hi = torch.aminmax(out.reshape(-1))  # NaN propagates; no tensor-sized temporary
    if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
        return
    for x in job.all_inputs:
        t = cks[x.model].get(x.name)
        bad = int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0
        if bad:
            raise InputError(
                f"{x.model}: non-finite: tensor {x.name} holds {bad} NaN/Inf values; the merge would spread them — "
                "re-export the checkpoint, or pass --allow-non-finite to merge anyway"
            )
    raise MergeError(f"the merge of tensor {job.name} overflowed to NaN/Inf (the inputs are finite); check the weights")


def _workers(threads: int | None, method, dev: str, compute) -> int:
    """Tensors merged concurrently: >1 only for streaming kernels on CPU (their memory is a few chunk
    buffers per tensor; the general path holds float32 copies of every input)."""
    import torch

    if getattr(method, "stream", None) is None or dev != "cpu" or compute != torch.float32:
        return 1
    if threads is None:
        env = os.environ.get("MERGESCOPE_THREADS", "").strip()
        threads = int(env) if env.isdigit() else min(4, os.cpu_count() or 1)
    return max(1, int(threads))


def _compute(job, cks, method, dev, compute, seed):
    """One output tensor, in the job's output dtype, on CPU."""
    import torch

    from mergescope.merge.methods.base import MergeContext

    ins = [cks[x.model].get(x.name) for x in job.all_inputs]
    if not job.is_float:
        return _copy_buffer(job, ins)
    ctx = MergeContext(tensor_name=job.name, seed=seed, device=dev, release=_range_releaser(job, cks))
    try:
        result = None
        stream = getattr(method, "stream", None) if job.vocab is None else None
        if stream is not None and dev == "cpu" and compute == torch.float32 and job.base is not None:
            result = stream(ins[0], ins[1:], job.model_params, job.params, ctx, job.out_dtype)
        if result is None:
            base, tensors = job_inputs(job, ins, dev, compute)
            result = method.merge(base, tensors, job.model_params, job.params, ctx)
            del base, tensors
    except (InputError, KeyboardInterrupt, Cancelled):
        raise
    except Exception as exc:
        raise MergeError(f"{method.name} failed on tensor {job.name}: {exc.__class__.__name__}: {exc}") from exc
    del ins
    if not isinstance(result, torch.Tensor) or tuple(result.shape) != job.shape:
        got = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        raise MergeError(f"{method.name} returned {got} for tensor {job.name}, expected shape {list(job.shape)}")
    return result.to(dtype=job.out_dtype).cpu()


def job_inputs(job, ins: list, dev, compute) -> tuple:
    """(base or None, the other inputs) of a job as its method gets them: in the compute dtype on the
    device, rows re-indexed by token where the output vocabulary differs."""
    ins = [x.to(device=dev, dtype=compute) for x in ins]
    if job.vocab is not None:  # rows re-indexed by token to the output vocabulary
        from mergescope.merge.vocab import align

        models = [x.model for x in job.all_inputs]
        aligned = align(job.vocab, dict(zip(models, ins)), models)
        ins = [aligned[m] for m in models]
    return (ins[0], ins[1:]) if job.base is not None else (None, ins)


def _range_releaser(job, cks):
    """release(start, stop) for every input of the job (elements of the flattened tensors)."""
    fns = [(getattr(cks[x.model], "release_range", None), x.name) for x in job.all_inputs]
    fns = [(f, name) for f, name in fns if f is not None]
    if not fns:
        return None

    def release(start: int, stop: int) -> None:
        for f, name in fns:
            f(name, start, stop)

    return release


def _ordered_results(jobs, compute_job, workers: int, should_stop):
    """Yield (job, result) in job order; with workers > 1, up to workers + 1 tensors are in flight
    (reading the next inputs overlaps merging the current ones). `should_stop` is polled before
    every tensor; cancelling waits for the tensors already running, then raises Cancelled."""
    if workers <= 1:
        for job in jobs:
            if should_stop is not None and should_stop():
                raise Cancelled("merge cancelled; no output was written")
            yield job, compute_job(job)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mergescope-merge")
    pending: deque = deque()
    it = iter(jobs)
    try:

        def fill():
            while len(pending) < workers + 1:
                job = next(it, None)
                if job is None:
                    return
                pending.append((job, pool.submit(compute_job, job)))

        fill()
        while pending:
            if should_stop is not None and should_stop():
                raise Cancelled("merge cancelled; no output was written")
            job, fut = pending.popleft()
            result = fut.result()
            fill()
            yield job, result
            del result
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _copy_buffer(job, ins):
    import torch

    first = ins[0]
    for x, src in zip(ins[1:], job.all_inputs[1:]):
        if x.dtype != first.dtype or not torch.equal(x, first):
            raise InputError(
                f"tensor {job.name}: non-floating buffer differs between {job.all_inputs[0].model} and "
                f"{src.model}; it cannot be merged; make the inputs agree on it"
            )
    return first.clone()
