"""Per-token losses over strided windows: how every backend turns a text into the loss of each token.

Windows: `context` tokens (the model's context length unless told), starting every `stride` tokens (at
most context − 1, so every token after the first is predicted); each token is scored once, by the first
window that holds it with the most left context (the strided-perplexity recipe). The first token has no
context and is not scored (a BOS the tokenizer prepends is; it covers no bytes). All windows of a text
have one length, so they run in fixed batches and results are deterministic.

Memory: a window's activations grow with its length (per token: the MLP and attention rows; per pair of
tokens: the attention mask transformers builds, or every head's scores with eager attention), so the
default window is the model's context or the longest one whose activations fit `ACTIVATIONS`, whichever
is shorter (`window_budget`), and the loss is computed from the final hidden states `LOSS_BLOCK` logits at
a time (`head_nll`), never from a window's whole [tokens, vocab] logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mergescope.io.errors import InputError
from mergescope.io.progress import Cancelled

BATCH_TOKENS = 16384  # tokens per forward batch (windows x context), fewer for wide models
ACTIVATIONS = 1 << 29  # bytes of activations a batch of windows may hold (512 MB)
LOSS_BLOCK = 1 << 25  # logits computed at once when scoring (128 MB in float32)


@dataclass
class Prepared:
    """What a backend scores a model with."""

    nll: Callable  # nll_fn for token_nll
    context: int  # the model's context length
    window: int  # the default window: the context, or the longest whose activations fit ACTIVATIONS
    batch_tokens: int
    blocked: bool  # the loss comes from the hidden states a block of logits at a time (head_nll)


def nll_from_logits(logits_fn):
    """An nll_fn for token_nll from `logits_fn(x [B, T]) -> logits [B, T, V]`."""

    def nll(x):
        import torch.nn.functional as F

        logits = logits_fn(x)[:, :-1].float()
        tgt = x[:, 1:].reshape(-1).to(logits.device)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt, reduction="none").view(x.shape[0], -1)

    return nll


def _dims(config: Mapping) -> tuple[int, int, int, int, int]:
    """(hidden, intermediate, heads, kv heads, head dim) from a config (or its text_config)."""
    c = config.get("text_config") or config
    hidden = int(c.get("hidden_size") or c.get("n_embd") or c.get("d_model") or 1024)
    inter = int(c.get("intermediate_size") or c.get("n_inner") or c.get("ffn_dim") or 4 * hidden)
    heads = int(c.get("num_attention_heads") or c.get("n_head") or 1)
    kv = int(c.get("num_key_value_heads") or heads)
    return hidden, inter, heads, kv, int(c.get("head_dim") or hidden // heads)


def window_budget(config: Mapping, context: int, eager: bool = False) -> tuple[int, int]:
    """(default window, tokens per batch): the longest window up to `context` whose activations fit
    ACTIVATIONS, and as many such windows per batch as fit it together (at most BATCH_TOKENS tokens).
    Per token: a few float32 rows of the MLP, the attention projections and the residual stream; per
    pair of tokens: 8 bytes for the masks transformers builds (sliding windows, padding), plus every
    head's scores and their softmax with eager attention."""
    import math

    hidden, inter, heads, kv, hd = _dims(config)
    per_token = 4 * (3 * inter + 8 * hidden + 2 * (heads + 2 * kv) * hd)
    per_pair = 8 + (8 * heads + 4 if eager else 0)
    longest = int((-per_token + math.sqrt(per_token**2 + 4 * per_pair * ACTIVATIONS)) / (2 * per_pair))
    if longest >= 128:
        longest -= longest % 64
    window = max(2, min(int(context), longest))
    fit = ACTIVATIONS // (per_token * window + per_pair * window * window)
    return window, max(window, min(BATCH_TOKENS, int(fit) * window))


def head_nll(hidden, targets, project, vocab: int):
    """The loss of each target ([B, T], float32) from final hidden states [B, T, H]: `project(rows)` gives
    the float32 logits [rows, vocab] of a block of rows, LOSS_BLOCK logits at a time, so a window's whole
    logits never exist."""
    import torch
    import torch.nn.functional as F

    flat, tgt = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1).to(hidden.device)
    rows = max(1, LOSS_BLOCK // max(1, int(vocab)))
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=hidden.device)
    for r in range(0, flat.shape[0], rows):
        out[r : r + rows] = F.cross_entropy(project(flat[r : r + rows]), tgt[r : r + rows], reduction="none")
    return out.view(targets.shape)


def windows(n: int, context: int, stride: int) -> list[tuple[int, int]]:
    """(start, first scored target) per window of length min(context, n); targets [first, start + len)."""
    if n <= context:
        return [(0, 1)]
    stride = min(stride, context - 1)  # a window's first token has no context: the next one re-reads it
    starts = list(range(0, n - context + 1, stride))
    if starts[-1] + context < n:
        starts.append(n - context)
    out, covered = [], 1
    for s in starts:
        out.append((s, max(covered, s + 1)))
        covered = s + context
    return out


def token_nll(
    nll_fn, ids: list[int], context: int, stride: int, should_stop=None, tick=None, batch_tokens: int = BATCH_TOKENS
):
    """The loss (nats, float64 numpy) of every token of `ids` given the ones before it in its window; NaN
    for token 0. `nll_fn(x [B, T]) -> [B, T-1]` gives the negative log-likelihood of each next token
    (nll_from_logits turns a logits function into one)."""
    import numpy as np
    import torch

    if not 0 < stride <= context:
        raise InputError(f"--stride {stride}: must be between 1 and the context length ({context})")
    if context < 2:
        raise InputError(f"--context {context}: must be at least 2 tokens (one to predict from, one predicted)")
    x_all = torch.tensor(ids, dtype=torch.long)
    n = x_all.numel()
    if n < 2:
        raise InputError("the text is too short to score (it needs at least two tokens)")
    wins = windows(n, context, stride)
    length = min(context, n)
    per_batch = max(1, batch_tokens // length)
    out = np.full(n, np.nan, dtype=np.float64)
    pos = torch.arange(length - 1)
    with torch.no_grad():
        for b0 in range(0, len(wins), per_batch):
            if should_stop is not None and should_stop():
                raise Cancelled()
            chunk = wins[b0 : b0 + per_batch]
            x = torch.stack([x_all[s : s + length] for s, _ in chunk])
            tok = nll_fn(x).float().cpu()
            first = torch.tensor([f - s - 1 for s, f in chunk])
            mask = pos[None, :] >= first[:, None]  # position p predicts target s + p + 1
            target = (torch.tensor([s for s, _ in chunk])[:, None] + pos[None, :] + 1).masked_select(mask)
            out[target.numpy()] = tok.masked_select(mask).double().numpy()
            if tick is not None:
                tick(int(mask.sum()))
    return out
