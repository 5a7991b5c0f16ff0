"""Bits per byte as a differentiable function of a model's tensors: the scorer's own windows and
targets (windows.py) through the built-in forward, so that a loss computed here equals `eval`'s score
on the same text and its gradient reaches whatever the tensors were computed from.

Backward passes run window batch by window batch: each batch's loss is differentiated with respect to
detached copies of the tensors (`Leaves`), whose gradients add up; one last backward then carries the
sum to the weights the tensors came from. Memory: the activations of one batch, one copy of the model
and its gradient, whatever the text's length.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from mergescope.io.errors import InputError
from mergescope.io.progress import ShouldStop, check
from mergescope.score.windows import windows

BACKWARD_TOKENS = 4096  # tokens per batch in a backward pass (all activations of a batch are kept)
FORWARD_TOKENS = 16384


@dataclass
class TextWindows:
    """A text as the scorer cuts it: windows of token ids, which targets each window scores, and the
    bytes those targets cover."""

    name: str
    ids: object  # torch.LongTensor [windows, length]
    scored: object  # torch.BoolTensor [windows, length - 1]: target p + 1 of the window is scored
    n_bytes: int

    @property
    def tokens(self) -> int:
        return int(self.scored.sum())


def text_windows(name: str, text: bytes, tokenizer, context: int) -> TextWindows:
    """Windows of `context` tokens starting every context − 1 tokens (every token after the first scored
    once, with the most left context), as `eval` scores by default."""
    import torch

    enc = tokenizer.encode(bytes(text))
    n = len(enc.ids)
    if n < 2:
        raise InputError(f"text {name}: too short to score (it needs at least two tokens); give more text")
    wins = windows(n, context, context)
    length = min(context, n)
    ids = torch.tensor(enc.ids, dtype=torch.long)
    x = torch.stack([ids[s : s + length] for s, _ in wins])
    pos = torch.arange(length - 1)
    first = torch.tensor([f - s - 1 for s, f in wins])
    return TextWindows(name, x, pos[None, :] >= first[:, None], enc.scored_bytes)


def _batches(tw: TextWindows, tokens: int):
    per = max(1, tokens // tw.ids.shape[1])
    for b in range(0, tw.ids.shape[0], per):
        yield slice(b, b + per)


def _nats(tensors: Mapping, shape, tw: TextWindows, rows: slice, device):
    from mergescope.score.llama import forward

    x = tw.ids[rows].to(device)
    tok = forward(tensors, shape, x[:, :-1], device=device, targets=x[:, 1:])
    return tok.masked_select(tw.scored[rows].to(device)).sum()


def bits_per_byte(tensors: Mapping, shape, tw: TextWindows, *, device="cpu", should_stop: ShouldStop = None) -> float:
    """The text's bits per byte (no gradient)."""
    import torch

    total = 0.0
    with torch.no_grad():
        for rows in _batches(tw, FORWARD_TOKENS):
            check(should_stop)
            total += float(_nats(tensors, shape, tw, rows, device))
    return total / math.log(2) / tw.n_bytes


class Leaves:
    """Detached copies of computed tensors that collect gradients batch by batch (see the module
    docstring); `backward()` hands them on to what the tensors were computed from."""

    def __init__(self, tensors: Mapping, names):
        self.computed = {n: tensors[n] for n in names}
        self.leaves = {n: (t.detach().requires_grad_(True) if t.requires_grad else t) for n, t in self.computed.items()}

    def backward(self) -> None:
        import torch

        outs, grads = [], []
        for n, t in self.computed.items():
            g = self.leaves[n].grad if t.requires_grad else None
            if g is not None:
                outs.append(t)
                grads.append(g)
        if outs:
            torch.autograd.backward(outs, grads)


def accumulate(
    leaves: Leaves, shape, tw: TextWindows, coef: float, *, device="cpu", should_stop: ShouldStop = None
) -> float:
    """Add coef × the gradient of the text's bits per byte into the leaves; returns its bits per byte."""
    total = 0.0
    scale = coef / math.log(2) / tw.n_bytes
    for rows in _batches(tw, BACKWARD_TOKENS):
        check(should_stop)
        nats = _nats(leaves.leaves, shape, tw, rows, device)
        (nats * scale).backward()
        total += float(nats.detach())
    return total / math.log(2) / tw.n_bytes
