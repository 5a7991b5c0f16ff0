"""Who computes the logits (or the score): the built-in Llama forward, transformers, or a user command.

`score_models` is the one entry point: it picks a backend per model (`auto`: built-in where the config
is a Llama-family one, else transformers), encodes each text with the model's own tokenizer, and
returns {model: {text: Score}} with progress in tokens; every score keeps its per-unit losses (for
intervals). `command_scores` runs `--eval-cmd`, whose last line of output is the score.

Backends: `builtin`, the pure-torch Llama-family forward in llama.py (weights cast one at a time from the
memory-mapped files, so memory stays near the stored model); `transformers` (the `eval` extra) for every
other causal LM (transformers_backend.py). Both take the loss from the final hidden states a block of
logits at a time and, unless `context` says otherwise, windows whose activations fit a fixed budget
(windows.window_budget), so memory is the weights plus a fixed amount whatever the text or vocabulary.
Whether a backend can run a model is decided from its config before any text is tokenised.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from mergescope.io.errors import InputError
from mergescope.io.progress import Progress
from mergescope.score.command import check_command, command_argv, run_command
from mergescope.score.llama import LlamaShape, Unsupported, check_tensors, forward
from mergescope.score.model import Model, open_model
from mergescope.score.result import Score, bits_per_byte
from mergescope.score.texts import unit_index
from mergescope.score.tokens import tokenizer_for
from mergescope.score.transformers_backend import check_available
from mergescope.score.transformers_backend import prepare as prepare_transformers
from mergescope.score.windows import Prepared, token_nll, window_budget

BACKENDS = ("auto", "builtin", "transformers")


def _check_builtin(model: Model) -> None:
    check_tensors(model.tensors, LlamaShape.from_config(model.config))


def _builtin(model: Model, device: str) -> Prepared:
    """The built-in forward, or Unsupported with the reason."""
    import torch

    shape = LlamaShape.from_config(model.config)
    check_tensors(model.tensors, shape)
    tensors = model.tensors
    if device != "cpu":  # one upload, not one per batch
        tensors = {k: tensors[k].to(device=device, dtype=torch.float32) for k in _names(tensors)}

    def nll(x):
        return forward(tensors, shape, x[:, :-1], device=torch.device(device), targets=x[:, 1:])

    window, batch = window_budget(model.config, shape.max_positions)
    return Prepared(nll, shape.max_positions, window, batch, True)


def _names(tensors) -> list[str]:
    return tensors.names() if hasattr(tensors, "names") else list(tensors)


_MAKERS = (("builtin", _check_builtin, _builtin), ("transformers", check_available, prepare_transformers))


def check(model: Model, backend: str) -> None:
    """InputError unless some backend allowed by `backend` could run `model`, decided from its config and
    tensor names before anything is loaded or tokenised."""
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend}: unknown; use one of {', '.join(BACKENDS)}")
    reasons = []
    for name, can, _ in _MAKERS:
        if backend not in ("auto", name):
            continue
        try:
            can(model)
            return
        except Unsupported as exc:
            reasons.append(f"{name}: {exc}")
    raise InputError(f"{model.label}: no scoring backend runs this model ({'; '.join(reasons)}); try --eval-cmd")


def prepare(model: Model, backend: str, device: str) -> tuple[str, Prepared]:
    """(backend name, what it scores with) for `model`; InputError saying why none runs it."""
    check(model, backend)
    reasons = []
    for name, _, make in _MAKERS:
        if backend not in ("auto", name):
            continue
        try:
            return name, make(model, device)
        except Unsupported as exc:
            reasons.append(f"{name}: {exc}")
    raise InputError(f"{model.label}: no scoring backend runs this model ({'; '.join(reasons)}); try --eval-cmd")


def score_models(
    models: Sequence[Model | str],
    texts: Mapping[str, bytes],
    *,
    backend: str = "auto",
    device: str = "cpu",
    context: int | None = None,
    stride: int | None = None,
    progress: Progress | None = None,
    should_stop=None,
) -> dict[str, dict[str, Score]]:
    """Bits per byte of every model on every text (models given as paths are opened and closed here)."""
    from mergescope.io.device import resolve_device

    device = resolve_device(device)
    opened = []
    try:
        for m in models:
            opened.append(m if isinstance(m, Model) else open_model(m))
            check(opened[-1], backend)
        encoded = {}
        for m in opened:
            tok = tokenizer_for(m.tokenizer_dir, m.config, m.label)
            encoded[m.label] = (tok, {t: tok.encode(data) for t, data in texts.items()})
        total = sum(len(e.ids) - 1 for _, encs in encoded.values() for e in encs.values())
        done = [0]
        out: dict[str, dict[str, Score]] = {}
        for m in opened:
            _, run = prepare(m, backend, device)
            ctx = min(context, run.context) if context else run.window
            tok, encs = encoded[m.label]
            row = {}
            for t, enc in encs.items():
                if len(enc.ids) < 2:
                    raise InputError(f"text {t}: too short to score with {m.label}'s tokenizer; give more text")

                def tick(k, label=f"{m.label} / {t}"):
                    done[0] += k
                    if progress is not None:
                        progress(done[0], total, label)

                nats = token_nll(run.nll, enc.ids, ctx, stride or ctx, should_stop, tick, run.batch_tokens)
                score = bits_per_byte(nats, enc, tok.has_tokens, unit_index(texts[t])[0])
                used = min(stride or ctx, ctx - 1) if len(enc.ids) > ctx else ctx
                row[t] = dataclasses.replace(score, window=ctx, stride=used, context=run.context)
            out[m.label] = row
        return out
    finally:
        for m, src in zip(opened, models[: len(opened)]):
            if not isinstance(src, Model):
                m.close()


def command_scores(
    models: Sequence[Model | str],
    command: str,
    *,
    texts: Mapping[str, Path] | None = None,
    higher_is_better: bool = False,
    progress: Progress | None = None,
    timeout: float | None = None,
) -> dict[str, dict[str, Score]]:
    """Run `command` per model (`{model}` is the model directory; `{text}`, when present, each text file;
    no shell: command.py) and read the number on its last line of stdout. In-memory models are written
    to a temporary directory first."""
    check_command(command, bool(texts))
    per_text = "{text}" in command
    jobs = list((texts or {}).items()) if per_text else [("score", None)]
    total = len(models) * len(jobs)
    out: dict[str, dict[str, Score]] = {}
    done = 0
    for src in models:
        m = src if isinstance(src, Model) else None
        label = m.label if m else str(src)
        with tempfile.TemporaryDirectory(prefix="mergescope-eval-") as tmp:
            if m is None:
                path = Path(src)
            elif m.path is not None:
                path = m.path
            else:
                path = write_model(m, Path(tmp) / "model")
            row = {}
            for tname, tpath in jobs:
                argv = command_argv(command, str(path), None if tpath is None else str(tpath))
                row[tname] = Score(run_command(argv, label, timeout), higher_is_better)
                done += 1
                if progress is not None:
                    progress(done, total, f"{label} / {tname}")
            out[label] = row
    return out


def write_model(model: Model, out: Path) -> Path:
    """An in-memory model as a checkpoint directory (weights, config.json, tokenizer files)."""
    import json
    import shutil

    from mergescope.io.checkpoint.files import TOKENIZER_FILES
    from mergescope.merge.output import write_safetensors

    out.mkdir(parents=True, exist_ok=True)
    names = _names(model.tensors)
    write_safetensors(out / "model.safetensors", [(n, model.tensors[n].contiguous()) for n in names])
    (out / "config.json").write_text(json.dumps(model.config, indent=2))
    if model.tokenizer_dir is not None:
        for f in TOKENIZER_FILES:
            if (model.tokenizer_dir / f).is_file():
                shutil.copyfile(model.tokenizer_dir / f, out / f)
    return out
