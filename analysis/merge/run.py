"""Merging a `Plan`: into an atomic, sharded output directory (`run_merge`), or into memory
(`merge_in_memory`, what soups, sweeps and tuning score). Both stream the same per-tensor jobs
(executor.py); nothing is loaded whole.

No prints: progress goes to `progress(done_bytes, total_bytes, label)`; `should_stop()` is polled
between tensors and cancels with `Cancelled`, leaving no output.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mergescope.io.dtypes import plan_dtype
from mergescope.io.guard import Read, Write, check_io, model_reads
from mergescope.io.progress import Cancelled, Progress, ShouldStop
from mergescope.merge.executor import MergeError, MergeRun, open_merge
from mergescope.merge.output import DEFAULT_SHARD_SIZE, InputRecord, ModelWriter, model_card, provenance
from mergescope.merge.plan import Plan
from mergescope.merge.vocab import write_tokenizer

MergeCancelled = Cancelled  # the API's name for a cancelled merge

__all__ = ["Cancelled", "MergeCancelled", "MergeError", "MergeResult", "MergedModel", "merge_in_memory", "run_merge"]


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
    findings: list = field(default_factory=list)  # the readiness checks' warnings and overridden errors


def plan_reads(plan: Plan) -> list[Read]:
    """What merging `plan` reads, for io.guard.check_io: the plan file (when it is one) and every model,
    adapter and tokenizer source it names."""
    reads = []
    if plan.source and Path(plan.source).is_file():
        reads.append(Read(plan.source, "", plan=True))
    for ref in plan.path_refs():
        for p in plan.ref_paths(ref):
            if p is not None:
                reads += model_reads(p)
    return reads


def run_merge(
    plan: Plan | str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    seed: int | None = None,
    force: bool = False,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    hash_inputs: bool | None = None,
    threads: int | None = None,
    analysis=None,
    notes: str | None = None,
    allow_non_finite: bool = False,
    force_incompatible: bool = False,
) -> MergeResult:
    """Merge as the plan says into `output_dir`; returns what was written.

    Raises InputError for bad plans/paths/devices (before reading any tensor data), Cancelled
    when `should_stop()` turns true, MergeError when a method fails. In every failure case (and on
    KeyboardInterrupt) no output and no temporary directory is left behind.

    `analysis`: a merge-readiness Report that measured these inputs against the plan's base (TUI/CLI
    pass it when they have one; models it holds beyond the plan's are left out): the pre-merge checks
    use its findings, and they and its model summary go into the model card.

    `threads`: worker threads for methods with a streaming CPU kernel (default: the CPU count, at
    most 4; `MERGESCOPE_THREADS` overrides); other methods run one tensor at a time with torch's own
    intra-op threads."""
    t0 = time.perf_counter()
    if not isinstance(plan, Plan):
        plan = Plan.load(plan)
    plan.validate(check_paths=True)  # a bad plan is reported before the output directory
    check_io(plan_reads(plan), [Write(output_dir, "", folder=True)], force=force)
    out = Path(output_dir).expanduser()
    with open_merge(
        plan,
        device=device,
        seed=seed,
        threads=threads,
        analysis=analysis,
        allow_non_finite=allow_non_finite,
        force_incompatible=force_incompatible,
    ) as run:
        cks, jobs, method = run.cks, run.jobs, run.method
        notes = "\n\n".join(x for x in (_checks_section(run.checks), notes) if x) or None
        tok_dir = _tokenizer_dir(plan, cks)
        n = len(run.outputs)
        with ModelWriter(out, force=force, shard_size=shard_size) as writer:
            writer.plan([(o.name, o.out_dtype, o.shape) for o in run.outputs])
            out_dtypes = _drain(run, writer.add, progress, should_stop)
            if progress:
                progress(run.total_bytes, run.total_bytes, f"{n}/{n} writing metadata")
            plan_yaml = plan.to_yaml()
            config = _output_config(plan, cks, out_dtypes, _vocab_plan(jobs))
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
                analysis=run.checks.analysis,
                notes=notes,
                seed=seed,
            )
            vplan = _vocab_plan(jobs)
            res = writer.finish(
                config=config,
                tokenizer_writer=lambda d: write_tokenizer(plan, cks, vplan, tok_dir, d),
                plan_yaml=plan_yaml,
                card=card,
            )
    return MergeResult(
        res.output_dir,
        res.files,
        res.shards,
        res.n_tensors,
        res.total_bytes,
        time.perf_counter() - t0,
        run.device,
        out_dtypes,
        [f for f in run.checks.findings if f.severity in ("error", "warning")],
    )


def _drain(run: MergeRun, add, progress, should_stop) -> list[str]:
    """Hand every merged tensor to `add(name, tensor)`, in output order; the distinct output dtypes."""
    n, total, done = len(run.outputs), run.total_bytes, 0
    if progress:
        progress(0, total, f"0/{n} tensors")
    out_dtypes: list[str] = []
    for i, (output, result) in enumerate(run.tensors(should_stop)):
        name = str(result.dtype).replace("torch.", "")
        if name not in out_dtypes:
            out_dtypes.append(name)
        add(output.name, result)
        del result
        done += output.nbytes
        if progress:
            progress(done, total, f"{i + 1}/{n} {output.name}")
    if should_stop is not None and should_stop():
        raise Cancelled("merge cancelled; no output was written")
    return out_dtypes


@dataclass
class MergedModel:
    """A merge held in memory: the output tensors (their output dtypes), the output config.json and
    where the tokenizer comes from. Peak memory: the inputs' pages in flight plus this one copy."""

    tensors: dict
    config: dict
    tokenizer_dir: Path | None
    out_dtypes: list[str]
    seconds: float
    _tokenizer_tmp: object = None  # keeps a built tokenizer's temporary directory alive


def merge_in_memory(
    plan: Plan | str | os.PathLike,
    *,
    device: str = "cpu",
    seed: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    allow_non_finite: bool = False,
    force_incompatible: bool = False,
) -> MergedModel:
    """The plan's output tensors, streamed from the same jobs as `run_merge`; nothing is written."""
    t0 = time.perf_counter()
    if not isinstance(plan, Plan):
        plan = Plan.load(plan)
    tensors: dict = {}
    with open_merge(
        plan,
        device=device,
        seed=seed,
        threads=threads,
        allow_non_finite=allow_non_finite,
        force_incompatible=force_incompatible,
    ) as run:
        out_dtypes = _drain(run, tensors.__setitem__, progress, should_stop)
        config = _output_config(plan, run.cks, out_dtypes, _vocab_plan(run.jobs)) or {}
        tok_dir = _tokenizer_dir(plan, run.cks)
        vplan = _vocab_plan(run.jobs)
        if vplan is not None or plan.chat_template:  # the tokenizer the output would get, in a temp dir
            holder = tempfile.TemporaryDirectory(prefix="mergescope-tokenizer-")
            write_tokenizer(plan, run.cks, vplan, tok_dir, Path(holder.name))
            tok_dir, keep = Path(holder.name), holder
        else:
            keep = None
    return MergedModel(tensors, config, tok_dir, out_dtypes, time.perf_counter() - t0, keep)


def _checks_section(checks) -> str | None:
    """The pre-merge checks' warnings (and errors merged anyway) for the model card."""
    noted = [f for f in checks.findings if f.severity in ("error", "warning")]
    if not noted or checks.source == "analysis":  # the analysis section lists its own findings
        return None
    lines = ["## Pre-merge checks", ""]
    lines += [f"- **{f.severity}** `{f.code}`" + (f" ({f.model})" if f.model else "") + f": {f.message}" for f in noted]
    return "\n".join(lines)


def _vocab_plan(jobs):
    return next((j.vocab for j in jobs if j.vocab is not None), None)


def _output_config(plan: Plan, cks, out_dtypes: list[str], vplan=None) -> dict | None:
    """The donor's config.json (mergekit: base_model, else the first model), with torch_dtype set to
    out_dtype/dtype when the plan names one, the layer count set for `slices:` plans, and vocab_size
    set to a built vocabulary's size."""
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
    if plan.modules is not None:
        from mergescope.merge.plan.modules import set_layer_counts

        set_layer_counts(plan, cfg)
    if vplan is not None:
        cfg["vocab_size"] = vplan.size
    return cfg


def _tokenizer_dir(plan: Plan, cks) -> Path | None:
    """Directory whose tokenizer files are copied when the plan builds no vocabulary (base_model, else
    the first model, as mergekit)."""
    return cks[plan.tokenizer_donor()].tokenizer_dir


def _records(plan: Plan, cks) -> list[InputRecord]:
    recs = []
    for ref in plan.referenced_models():
        role = "base" if ref == plan.base_model else "model"
        recs.append(InputRecord(role, ref, [Path(f) for f in dict.fromkeys(cks[ref].weight_files)]))
    return recs
