"""Per-token losses over strided windows: how every backend turns a text into the loss of each token.

Windows: `context` tokens (the model's context length unless told), starting every `stride` tokens (at
most context − 1, so every token after the first is predicted); each token is scored once, by the first
window that holds it with the most left context (the strided-perplexity recipe). The first token has no
context and is not scored (a BOS the tokenizer prepends is; it covers no bytes). All windows of a text
have one length, so they run in fixed batches and results are deterministic.
"""

from __future__ import annotations

from mergescope.io.errors import InputError
from mergescope.io.progress import Cancelled

BATCH_TOKENS = 16384  # tokens per forward batch (windows x context), fewer for wide models
ACTIVATIONS = 1 << 27  # float32 activations a batch may hold at its widest (the MLP): 512 MB


def nll_from_logits(logits_fn):
    """An nll_fn for token_nll from `logits_fn(x [B, T]) -> logits [B, T, V]`."""

    def nll(x):
        import torch.nn.functional as F

        logits = logits_fn(x)[:, :-1].float()
        tgt = x[:, 1:].reshape(-1).to(logits.device)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt, reduction="none").view(x.shape[0], -1)

    return nll


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
