"""The merge executor: run a `Plan` tensor by tensor into an atomic, sharded output directory.

    plan ──validate──▶ open checkpoints (headers) ──▶ tensor jobs (names, shapes, params: all checked
    before any tensor data is read) ──▶ writer.plan(every output name/dtype/shape: shard headers
    known up front) ──▶ per job: read inputs (mmap) → compute dtype on `device` →
    method.merge(base, tensors, model_params, params, ctx) → out dtype → writer (straight to disk)

Speed and memory: methods with a streaming CPU kernel (`MergeMethod.stream`: task_arithmetic and
TIES-style magnitude trims, see methods/gta_stream.py) get the stored, memory-mapped tensors and
work through them in cache-sized float32 chunks, releasing the inputs' pages behind them; those
jobs run on `threads` worker threads (one tensor each, torch's own intra-op threads set to 1 for the
duration of the merge so no op waits on a descheduled helper thread), up to threads + 1 tensors in
flight, results written in order. Other methods take float32 copies of the inputs and run one
tensor at a time. Either way each job's input pages are released when it is done, so peak memory
follows the largest tensor, not the model.

Numerics: inputs are converted to the plan's `dtype`, or float32 when it has none (mergekit would
compute in the inputs' promoted dtype, e.g. bfloat16; float32 differs from that only by rounding and
matches mergekit run with `dtype: float32`). The output dtype is `out_dtype`, else `dtype`, else the
inputs' stored (promoted) dtype, i.e. the base's dtype for ordinary fine-tunes: mergekit's rule.
Non-floating tensors (integer buffers) are copied when all inputs agree and refused otherwise.

Randomised methods (dare_*, della*) get `ctx.seed`; each tensor's draws then depend only on the seed
and the tensor name. Without a seed they use torch's global RNG, like mergekit.

No prints: progress goes to `progress(done_bytes, total_bytes, label)`; `should_stop()` is polled
between tensors and cancels with `MergeCancelled`, leaving no output.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .device import resolve_device
from .dtypes import plan_dtype
from .errors import InputError
from .output import DEFAULT_SHARD_SIZE, InputRecord, ModelWriter, check_output, model_card, provenance
from .plan import Plan, close_all


class MergeCancelled(Exception):
    """`should_stop()` returned true; nothing was written."""


class MergeError(RuntimeError):
    """A merge method failed on a tensor (not a user-input problem); nothing was written."""


@dataclass
class MergeResult:
    output_dir: Path
    files: list[str]
    shards: list[str]
    n_tensors: int
    total_bytes: int  # tensor bytes written
    seconds: float
    device: str
    out_dtypes: list[str] = field(default_factory=list)  # distinct output dtypes


def _check_not_overwriting_inputs(plan: Plan, out: Path) -> None:
    out_r = out.expanduser().resolve()
    for ref in plan.path_refs():
        for p in plan.ref_paths(ref):
            if p is None or not p.exists():
                continue
            p_r = p.resolve()
            if p_r == out_r or out_r in p_r.parents or p_r in out_r.parents:
                raise InputError(
                    f"{out}: the output overlaps the input model {ref}; choose an output directory outside the inputs"
                )


def run_merge(
    plan: Plan | str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    seed: int | None = None,
    force: bool = False,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    progress: Callable[[int, int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    hash_inputs: bool | None = None,
    threads: int | None = None,
    analysis=None,
) -> MergeResult:
    """Merge as the plan says into `output_dir`; returns what was written.

    Raises InputError for bad plans/paths/devices (before reading any tensor data), MergeCancelled
    when `should_stop()` turns true, MergeError when a method fails. In every failure case (and on
    KeyboardInterrupt) no output and no temporary directory is left behind.

    `analysis`: the merge-readiness Report of these inputs (TUI/CLI pass it when they have one): its
    findings and model summary go into the model card.

    `threads`: worker threads for methods with a streaming CPU kernel (default: the CPU count, at
    most 4; `MERGESCOPE_THREADS` overrides); other methods run one tensor at a time with torch's own
    intra-op threads."""
    import torch

    t0 = time.perf_counter()
    if not isinstance(plan, Plan):
        plan = Plan.load(plan)
    dev = resolve_device(device)
    plan.validate(check_paths=True)
    method = plan.method()
    out = check_output(output_dir, force)
    _check_not_overwriting_inputs(plan, out)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise InputError(f"--seed {seed!r}: expected an integer")
    compute = plan.compute_dtype() or torch.float32

    _trim_malloc()
    cks = plan.open_checkpoints()
    prev_threads = torch.get_num_threads()
    try:
        jobs = list(plan.tensor_jobs(cks))  # every name, shape and parameter is checked here
        tok_dir = _tokenizer_dir(plan, cks)
        total = sum(j.nbytes for j in jobs)
        n = len(jobs)
        done = 0
        if progress:
            progress(0, total, f"0/{n} tensors")
        out_dtypes: list[str] = []
        workers = _workers(threads, method, dev, compute)
        if workers > 1:
            torch.set_num_threads(1)  # parallel across tensors: each op runs in its worker, no barriers

        def compute_job(job):
            try:
                return _compute(job, cks, method, dev, compute, seed)
            finally:
                for x in job.all_inputs:  # drop the inputs' mapped pages (they stay in the page cache)
                    release = getattr(cks[x.model], "release", None)
                    if release is not None:
                        release(x.name)

        with ModelWriter(out, force=force, shard_size=shard_size) as writer:
            writer.plan([(j.name, j.out_dtype, j.shape) for j in jobs])
            for i, (job, result) in enumerate(_ordered_results(jobs, compute_job, workers, should_stop)):
                name = str(result.dtype).replace("torch.", "")
                if name not in out_dtypes:
                    out_dtypes.append(name)
                writer.add(job.name, result)
                del result
                done += job.nbytes
                if progress:
                    progress(done, total, f"{i + 1}/{n} {job.name}")
            if should_stop is not None and should_stop():
                raise MergeCancelled("merge cancelled; no output was written")
            if progress:
                progress(total, total, f"{n}/{n} writing metadata")
            plan_yaml = plan.to_yaml()
            config = _output_config(plan, cks, out_dtypes)
            rows = provenance(_records(plan, cks), hash_inputs)
            card = model_card(
                name=out.name,
                method=plan.merge_method,
                base=plan.base_model,
                models=plan.input_models(),
                plan_yaml=plan_yaml,
                provenance_rows=rows,
                out_dtype=", ".join(out_dtypes) or None,
                n_tensors=n,
                total_bytes=writer.total_bytes,
                description=method.description,
                analysis=analysis,
            )
            res = writer.finish(config=config, tokenizer_dir=tok_dir, plan_yaml=plan_yaml, card=card)
    finally:
        torch.set_num_threads(prev_threads)
        close_all(cks)
        try:
            from .methods._util import release_workspace

            release_workspace()
        except ImportError:
            pass
    return MergeResult(
        res.output_dir, res.files, res.shards, res.n_tensors, res.total_bytes, time.perf_counter() - t0, dev, out_dtypes
    )


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

    from .methods.base import MergeContext

    ins = [cks[x.model].get(x.name) for x in job.all_inputs]
    if not job.is_float:
        return _copy_buffer(job, ins)
    ctx = MergeContext(tensor_name=job.name, seed=seed, device=dev, release=_range_releaser(job, cks))
    try:
        result = None
        stream = getattr(method, "stream", None)
        if stream is not None and dev == "cpu" and compute == torch.float32 and job.base is not None:
            result = stream(ins[0], ins[1:], job.model_params, job.params, ctx, job.out_dtype)
        if result is None:
            ins = [x.to(device=dev, dtype=compute) for x in ins]
            base = ins[0] if job.base is not None else None
            tensors = ins[1:] if job.base is not None else ins
            result = method.merge(base, tensors, job.model_params, job.params, ctx)
            del base, tensors
    except (InputError, KeyboardInterrupt, MergeCancelled):
        raise
    except Exception as exc:
        raise MergeError(f"{method.name} failed on tensor {job.name}: {exc.__class__.__name__}: {exc}") from exc
    del ins
    if not isinstance(result, torch.Tensor) or tuple(result.shape) != job.shape:
        got = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        raise MergeError(f"{method.name} returned {got} for tensor {job.name}, expected shape {list(job.shape)}")
    return result.to(dtype=job.out_dtype).cpu()


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
    every tensor; cancelling waits for the tensors already running, then raises MergeCancelled."""
    if workers <= 1:
        for job in jobs:
            if should_stop is not None and should_stop():
                raise MergeCancelled("merge cancelled; no output was written")
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
                raise MergeCancelled("merge cancelled; no output was written")
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


def _output_config(plan: Plan, cks, out_dtypes: list[str]) -> dict | None:
    """The donor's config.json (mergekit: base_model, else the first model), with torch_dtype set to
    out_dtype/dtype when the plan names one and the layer count set for `slices:` plans."""
    import copy

    donor = cks[plan.config_donor()]
    if not donor.config:
        return None
    cfg = copy.deepcopy(donor.config)
    want = plan.out_dtype or plan.dtype
    if want:
        name = plan_dtype(want)
        cfg["torch_dtype"] = name
        if "dtype" in cfg:
            cfg["dtype"] = name
    if plan.slices is not None:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(cfg.get(key), int):
                cfg[key] = plan.num_layers()
                break
    return cfg


def _tokenizer_dir(plan: Plan, cks) -> Path | None:
    """Directory whose tokenizer files are copied (tokenizer_source, else base_model, else first model).

    mergekit rebuilds embeddings when `tokenizer_source` names a model with another vocabulary; we do
    not, so that case is refused."""
    ref = plan.tokenizer_donor()
    opened = None
    if ref in cks:
        ck = cks[ref]
    else:
        ck = opened = plan.open_ref(ref)
    try:
        root = ck.tokenizer_dir
        if plan.tokenizer_source and plan.tokenizer_source != "base":
            other = cks[plan.config_donor()]
            a, b = ck.tokenizer_fingerprint(), other.tokenizer_fingerprint()
            if a and b and a != b:
                raise InputError(
                    f"{plan.where}tokenizer_source: {ref} has a different "
                    f"vocabulary than {plan.config_donor()}; mergekit would rebuild the embeddings for it, "
                    f"mergescope does not; use `tokenizer_source: base` or merge with mergekit"
                )
        return root
    finally:
        if opened is not None:
            opened.close()


def _records(plan: Plan, cks) -> list[InputRecord]:
    recs = []
    for ref in plan.referenced_models():
        role = "base" if ref == plan.base_model else "model"
        recs.append(InputRecord(role, ref, [Path(f) for f in dict.fromkeys(cks[ref].weight_files)]))
    return recs
