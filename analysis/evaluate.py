"""Held-out perplexity of small Llama checkpoints (the demo family and merges of it), on CPU.

`perplexity()` scores a text with sliding windows: windows of `context` tokens start every `stride`
tokens and each token is scored once, by the first window that covers it with the most left context
(HF's "strided perplexity" recipe; the very first token, having no context, is not scored). All
windows have the same length, so they run as a few fixed-size batches; results are deterministic.
Tokens are bytes (see `analysis.tinylm`), so this is perplexity per byte.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from .tinylm import LlamaLM, encode, load_model

DEFAULT_CONTEXT = 128
DEFAULT_STRIDE = 128  # = context: each byte scored once, no overlap (fast; fine for comparisons)
BATCH = 64  # windows per forward pass


def _windows(n: int, context: int, stride: int) -> list[tuple[int, int]]:
    """(start, first scored target index) per window; targets scored are [first, start + len)."""
    if n <= context:
        return [(0, 1)]
    starts = list(range(0, n - context + 1, stride))
    if starts[-1] + context < n:
        starts.append(n - context)
    out, covered = [], 1
    for s in starts:
        out.append((s, max(covered, s + 1)))
        covered = s + context
    return out


def _as_model(model_or_path) -> LlamaLM:
    if isinstance(model_or_path, LlamaLM):
        return model_or_path
    return load_model(model_or_path)


@torch.no_grad()
def nll(
    model_or_path: LlamaLM | str | os.PathLike,
    text: bytes | str,
    context: int = DEFAULT_CONTEXT,
    stride: int = DEFAULT_STRIDE,
    batch_size: int = BATCH,
) -> tuple[float, int]:
    """(summed negative log-likelihood in nats, number of scored tokens) of `text`."""
    model = _as_model(model_or_path)
    if not 0 < stride <= context:
        raise ValueError(f"stride must be in 1..context ({context}), got {stride}")
    limit = model.config.max_position_embeddings
    if context > limit:
        raise ValueError(f"context {context} exceeds the model's max_position_embeddings ({limit})")
    ids = encode(text)
    n = ids.numel()
    if n < 2:
        raise ValueError("text must have at least 2 bytes to score")
    wins = _windows(n, context, stride)
    length = min(context, n)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    try:
        for b0 in range(0, len(wins), batch_size):
            chunk = wins[b0 : b0 + batch_size]
            x = torch.stack([ids[s : s + length] for s, _ in chunk])
            logits = model(x)[:, :-1].float()
            tok_nll = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none"
            ).view(len(chunk), length - 1)
            # Position p of the window predicts target s + p + 1; keep targets >= first.
            pos = torch.arange(length - 1)
            first = torch.tensor([f - s - 1 for s, f in chunk])
            mask = pos[None, :] >= first[:, None]
            total += tok_nll.masked_select(mask).double().sum()
            count += int(mask.sum())
    finally:
        model.train(was_training)
    return float(total), count


def perplexity(
    model_or_path: LlamaLM | str | os.PathLike,
    text: bytes | str,
    context: int = DEFAULT_CONTEXT,
    stride: int = DEFAULT_STRIDE,
    batch_size: int = BATCH,
) -> float:
    """Per-byte perplexity of `text` under a model (or a checkpoint path, loaded in float32)."""
    total, count = nll(model_or_path, text, context=context, stride=stride, batch_size=batch_size)
    return math.exp(total / count)


def load_texts(directory: str | os.PathLike) -> dict[str, bytes]:
    """`{domain: bytes}` from the `*.txt` files of a directory (e.g. `analysis/demo/heldout`)."""
    return {p.stem: p.read_bytes() for p in sorted(Path(directory).glob("*.txt"))}


def evaluate_models(
    paths: Mapping[str, LlamaLM | str | os.PathLike],
    texts: Mapping[str, bytes | str],
    progress: Callable[[int, int, str], None] | None = None,
    *,
    context: int = DEFAULT_CONTEXT,
    stride: int = DEFAULT_STRIDE,
) -> dict[str, dict[str, float]]:
    """`{label: {domain: perplexity}}` for each model (path or loaded model) on each text.

    `progress(done, total, label)` is called after each (model, domain) pair, `label` naming both.
    """
    total = len(paths) * len(texts)
    done = 0
    out: dict[str, dict[str, float]] = {}
    for label, p in paths.items():
        model = _as_model(p)
        row = {}
        for domain, text in texts.items():
            row[domain] = perplexity(model, text, context=context, stride=stride)
            done += 1
            if progress is not None:
                progress(done, total, f"{label} / {domain}")
        out[label] = row
    return out
