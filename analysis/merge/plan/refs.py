"""Model references: where a plan's model strings point on disk, and opening them (headers only).

A reference is a path as written in the plan: relative to the working directory (like mergekit),
else to the plan file's directory, else a Hugging Face repo id (`org/name@revision`, from the local
cache; `fetch_models` downloads the missing ones); `BASE+ADAPTER` is mergekit's LoRA syntax. Every error names the
key path of the reference, so the user sees which line of the plan to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mergescope.io import hub_ref
from mergescope.io.checkpoint.model import read_json
from mergescope.io.errors import InputError


def model_path(plan, ref: str) -> Path:
    """Local path of a model reference: as given (relative to the working directory, like mergekit),
    else relative to the plan file's directory, else a Hugging Face repo id's snapshot in the cache."""
    return on_disk(plan, ref) or hub_ref.local_dir(ref) or Path(ref).expanduser()


def on_disk(plan, ref: str) -> Path | None:
    """The reference's files as a path: as given, else relative to the plan file's directory; None when
    neither exists."""
    p = Path(ref).expanduser()
    if p.exists():
        return p
    alt = Path(plan.source).parent / ref if plan.source and not p.is_absolute() else p
    return alt if alt.exists() else None


def ref_paths(plan, ref: str) -> tuple[Path, Path | None]:
    """`BASE+ADAPTER` (mergekit's LoRA syntax) -> (base path, adapter path); else (path, None)."""
    p = model_path(plan, ref)
    if not p.exists() and "+" in ref:
        a, b = ref.rsplit("+", 1)
        pa, pb = model_path(plan, a), model_path(plan, b)
        if pa.exists() and pb.exists():
            return pa, pb
    return p, None


def identity(plan, ref: str):
    """What makes two references one model: the files they point at (resolved, by st_dev/st_ino), so
    `ckpt/code` and `ckpt/code/../code/` (or a symlink to it) are the same model."""
    from mergescope.io.guard import file_key

    p, adapter = ref_paths(plan, ref)
    return file_key(p), None if adapter is None else file_key(adapter)


def key_of(plan, ref: str) -> str:
    """The key path where the plan names `ref` first (for messages)."""
    if ref == plan.base_model:
        return "base_model"
    for i, m in enumerate(plan.models or []):
        if m.model == ref:
            return f"models[{i}].model"
    for i, s in enumerate(plan.slices or []):
        for j, src in enumerate(s.sources):
            if src.model == ref:
                return f"slices[{i}].sources[{j}].model"
    if ref == plan.tokenizer_source:
        return "tokenizer_source"
    if plan.tokenizer is not None and ref == plan.tokenizer.source:
        return "tokenizer.source"
    return "tokenizer.tokens" if ref in vocab_refs(plan) else "model"


def vocab_refs(plan) -> list[str]:
    """Models the vocabulary keys name: a tokenizer source, and token embedding sources."""
    spec = plan.vocab_spec()
    if spec is None:
        return []
    out = [spec.source] if spec.source not in ("union", "base") else []
    out += [t.source.model for t in spec.tokens.values() if t.source is not None and t.source.model]
    return list(dict.fromkeys(out))


def path_refs(plan) -> list[str]:
    """Every reference that names files: the models, and those the vocabulary keys name."""
    refs = plan.referenced_models()
    return refs + [r for r in vocab_refs(plan) if r not in refs]


def check_paths(plan) -> None:
    """InputError (key path, what was tried, the fix) for the first reference with no files."""
    for ref in path_refs(plan):
        p, adapter = ref_paths(plan, ref)
        if not p.exists():
            hint = ""
            if hub_ref.parse(ref) is not None:
                hint = ", nor a complete download of that Hugging Face repo in the cache (the mergescope commands download it when online)"
            tried = (
                f" (also tried {Path(plan.source).parent / ref})" if plan.source and not Path(ref).is_absolute() else ""
            )
            plan.fail(key_of(plan, ref), f"{ref}: no such file or directory{tried}{hint}; fix the path")


def fetch_models(plan, say=print) -> None:
    """Download the plan's Hugging Face repo ids that are not in the cache, after checking their headers
    against the base's (`mergescope.io.hub.fetch`); local references are left as they are."""
    from mergescope.io import hub

    base = plan.base_model or next(iter(plan.input_models()), None)
    try:
        hub.fetch(path_refs(plan), base=base, say=say, local=lambda ref: on_disk(plan, ref))
    except InputError as exc:
        raise InputError(f"{plan.where}{key_of(plan, _culprit(plan, str(exc)))}: {exc}") from None


def _culprit(plan, message: str) -> str:
    """The reference an error message starts with (for its key path)."""
    return next((r for r in path_refs(plan) if message.startswith(r)), "model")


def open_ref(plan, ref: str, path: Path | None = None):
    """Open the checkpoint at `path` (default: the reference's own path) labelled `ref`; errors name
    the reference's key path."""
    from mergescope.io.checkpoint import open_checkpoint

    if path is None:
        path = ref_paths(plan, ref)[0]
    try:
        return open_checkpoint(path, label=ref)
    except InputError as exc:
        raise InputError(f"{plan.where}{key_of(plan, ref)}: {exc}") from None


def open_checkpoints(plan) -> dict:
    """Open every referenced model (headers only). LoRA adapters become base+delta views, on the
    `BASE+ADAPTER` base or else on base_model. Returns {model reference: Checkpoint}."""
    from mergescope.io.checkpoint import LoraCheckpoint

    check_paths(plan)
    opened: dict[str, Any] = {}
    try:
        base = None
        if plan.base_model:
            p, adapter = ref_paths(plan, plan.base_model)
            base = open_ref(plan, plan.base_model, p)
            if adapter is not None:
                base = open_ref(plan, plan.base_model, adapter).with_base(base)
            elif isinstance(base, LoraCheckpoint):
                plan.fail(
                    "base_model",
                    f"{plan.base_model} is a LoRA adapter; base_model must be a full model "
                    f"(write `BASE_PATH+{plan.base_model}` to use the adapted model)",
                )
            opened[plan.base_model] = base
        for ref in plan.referenced_models():
            if ref in opened:
                continue
            p, adapter = ref_paths(plan, ref)
            if adapter is not None:
                ck = open_ref(plan, ref, adapter)
                if not isinstance(ck, LoraCheckpoint):
                    plan.fail(key_of(plan, ref), f"{adapter} is not a LoRA adapter; `A+B` means base A with adapter B")
                ck = ck.with_base(open_ref(plan, ref, p))
            else:
                ck = open_ref(plan, ref, p)
                if isinstance(ck, LoraCheckpoint):
                    if base is None:
                        plan.fail(
                            key_of(plan, ref),
                            f"{ref} is a LoRA adapter; set base_model (or write `BASE_PATH+{ref}`) so it can be applied",
                        )
                    ck = ck.with_base(base)
            opened[ref] = ck
    except BaseException:
        close_all(opened)
        raise
    return opened


def close_all(cks: Mapping) -> None:
    """Close every checkpoint of {reference: Checkpoint}, and the base and adapter of LoRA views, once each."""
    seen = set()
    for ck in cks.values():
        for c in (ck, getattr(ck, "base", None), getattr(ck, "lora", None)):
            if c is not None and id(c) not in seen:
                seen.add(id(c))
                try:
                    c.close()
                except Exception:  # closing is best effort
                    pass


# ---------------------------------------------------------------------- layer counts
def num_layers(plan, checkpoints: Mapping | None = None) -> int:
    """Number of output layers: the sum of slice lengths, or the models' layer count."""
    if plan.modules is not None:
        from mergescope.merge.plan import modules

        return modules.num_layers(plan, checkpoints)
    if plan.slices is not None:
        return sum(s.sources[0].layer_range[1] - s.sources[0].layer_range[0] for s in plan.slices)
    refs = [m.model for m in plan.models]
    return plan.layers_of(refs[0] if not plan.base_model else plan.base_model, checkpoints)


def layers_of(plan, ref: str, checkpoints: Mapping | None, cache: dict[str, int]) -> int:
    """Layer count of one reference: from its open checkpoint, `cache`, its config.json, else its
    tensor names (an adapter counts as base_model)."""
    if checkpoints and ref in checkpoints:
        n = checkpoints[ref].num_layers
        if n:
            return int(n)
    if ref in cache:
        return cache[ref]
    p, adapter = ref_paths(plan, ref)
    cfg_dir = p if p.is_dir() else p.parent
    n = None
    module = plan.module_name if plan.module_name not in (None, "default") else None
    cfg = cfg_dir / "config.json"
    if cfg.is_file():
        try:
            c = read_json(cfg, what="model config") or {}
            if module:
                from mergescope.io.model_parts import layer_count_from_config

                n = layer_count_from_config(c, module)
            else:
                keys = ("num_hidden_layers", "n_layer", "num_layers")
                n = next((c[k] for k in keys if isinstance(c.get(k), int)), None)
        except (OSError, ValueError, TypeError):
            n = None
    if n is None:
        from mergescope.io.naming import layer_count

        if (p / "adapter_config.json").is_file() and plan.base_model and ref != plan.base_model:
            return layers_of(plan, plan.base_model, checkpoints, cache)
        ck = open_ref(plan, ref, p)
        try:
            names = ck.names()
            if module:
                from mergescope.io.model_parts import split

                names = split(names).get(module, [])
            n = layer_count(names)
        finally:
            ck.close()
    cache[ref] = int(n)
    return int(n)
