"""A merge's output in its reference model's layout.

A checkpoint that stores its experts fused reads as one tensor per expert (io/checkpoint/experts.py),
so every job merges one expert's projection, trimmed and drawn on its own as in the per-expert layout.
Where the job's reference input (the base, else the first model: whose names the output takes) was
read from a fused tensor, the merged expert slices are written back into that fused tensor, under its
name at the output layer; everything else is written as its job says.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from mergescope.merge.plan.resolve import layer_split


@dataclass
class Fused:
    """One fused output tensor and the jobs (with their slots) whose results fill it."""

    name: str
    out_dtype: object
    shape: tuple[int, ...] = ()
    nbytes: int = 0
    parts: list = field(default_factory=list)  # (job index, Slot)
    _buf: object = None
    _filled: int = 0

    def put(self, slot, tensor):
        """Copy one merged part in; the whole tensor once every part is in, else None."""
        import torch

        if slot.expert is None:
            return tensor
        if self._buf is None:
            self._buf = torch.empty(self.shape, dtype=self.out_dtype)
        dst = self._buf[slot.expert]
        dst = dst if slot.rows is None else dst[slot.rows[0] : slot.rows[1]]
        dst.copy_(tensor)
        self._filled += 1
        if self._filled < len(self.parts):
            return None
        out, self._buf = self._buf, None
        return out


def fused_outputs(jobs, cks) -> tuple[list, dict[int, tuple[Fused, object]]]:
    """(the tensors the merge writes, in writing order: a job, or a Fused where its last part is
    merged), {job index: (its Fused, its Slot)}."""
    groups: dict[str, Fused] = {}
    of_job: dict[int, tuple[Fused, object]] = {}
    for i, job in enumerate(jobs):
        ref = job.all_inputs[0] if job.all_inputs else None
        slot = cks[ref.model].slot(ref.name) if ref is not None and hasattr(cks[ref.model], "slot") else None
        if slot is None:
            continue
        name = _stored_out_name(job.name, slot.stored)
        f = groups.get(name)
        if f is None:
            f = groups[name] = Fused(name, job.out_dtype)
        f.parts.append((i, slot))
        f.nbytes += job.nbytes
        of_job[i] = (f, slot)
    for f in groups.values():
        f.shape = _stacked_shape(f.parts, jobs)
    last = {f.parts[-1][0]: f for f in groups.values()}
    outputs = [last[i] if i in last else job for i, job in enumerate(jobs) if i in last or i not in of_job]
    return outputs, of_job


def restack(results: Iterator, of_job: dict) -> Iterator:
    """(job, tensor) in job order -> (output, tensor) in writing order (fused_outputs)."""
    for i, (job, tensor) in enumerate(results):
        hit = of_job.get(i)
        if hit is None:
            yield job, tensor
            continue
        f, slot = hit
        whole = f.put(slot, tensor)
        del tensor
        if whole is not None:
            yield f, whole


def _stored_out_name(out_name: str, stored: str) -> str:
    """The stored tensor's name at the output's layer ('….layers.7.mlp.experts.down_proj')."""
    out, st = layer_split(out_name), layer_split(stored)
    if out is None or st is None:
        return stored
    return f"{out[0]}{out[1]}{st[2]}"


def _stacked_shape(parts, jobs) -> tuple[int, ...]:
    """[experts, rows, …] from the parts' expert indices, row ranges and shapes."""
    first = jobs[parts[0][0]].shape
    if parts[0][1].expert is None:
        return tuple(first)
    experts = 1 + max(s.expert for _, s in parts)
    rows = max(s.rows[1] if s.rows else jobs[i].shape[0] for i, s in parts)
    return (experts, rows, *first[1:])
