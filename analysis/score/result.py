"""A score: one model on one text, with what its uncertainty is computed from.

`value` is what is compared: bits per byte (lower is better), or a command's or task's number. A score
computed here also keeps, per resampling unit of the text (texts.units: passages, long ones in pieces),
the numerator and denominator of its value (bits and bytes), so that every score gets an interval and
every two scores of one text a paired one (stats.py). A task's score may carry its own standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mergescope.io.errors import InputError


@dataclass(frozen=True)
class Score:
    value: float
    higher_is_better: bool = False
    nll_nats: float | None = None
    tokens: int | None = None
    n_bytes: int | None = None
    token_perplexity: float | None = None
    unit_num: tuple[float, ...] = ()  # per unit: bits of the tokens ending in it (or correct answers)
    unit_den: tuple[float, ...] = ()  # per unit: the bytes those tokens cover (or questions)
    unit_starts: tuple[int, ...] = ()  # where each unit starts in the text, in bytes
    stderr: float | None = None  # the scorer's own standard error (tasks)
    window: int | None = None  # tokens per window the text was scored in
    stride: int | None = None  # tokens between window starts
    context: int | None = None  # the model's context length (the window may be shorter: a memory budget)

    @property
    def is_bits(self) -> bool:
        return self.nll_nats is not None

    def to_dict(self, units: bool = False) -> dict:
        from mergescope.score.stats import interval

        iv = interval(self)
        out = (
            {"score": self.value, "higher_is_better": self.higher_is_better}
            if not self.is_bits
            else {
                "bits_per_byte": self.value,
                "token_perplexity": self.token_perplexity,
                "tokens": self.tokens,
                "bytes": self.n_bytes,
                "nll_bits": self.nll_nats / math.log(2),
            }
        )
        if self.stderr is not None:
            out["stderr"] = self.stderr
        if self.window is not None:
            out.update(window=self.window, stride=self.stride, context=self.context)
        if iv is not None:
            out["interval95"] = [iv.lo, iv.hi]
        if units and self.unit_num:
            out["units"] = [
                {"start": s, "bits" if self.is_bits else "num": n, "bytes" if self.is_bits else "den": d}
                for s, n, d in zip(self.unit_starts, self.unit_num, self.unit_den)
            ]
        return out


def bits_per_byte(token_nats, enc, has_tokens: bool, starts: list[int] | None = None) -> Score:
    """The score of per-token losses: `token_nats[t]` is the loss of token t given the ones before it
    (NaN for t = 0, never predicted); `enc.ends[t]` is the byte where token t ends. Each predicted token
    covers the bytes since the previous token's end (the last one also the rest of the text) and counts
    in the unit holding its last byte."""
    import numpy as np

    nats = np.asarray(token_nats, dtype=np.float64)
    n_tok = len(enc.ids)
    if n_tok < 2:
        raise InputError("the text is too short to score (it needs at least two tokens)")
    ends = np.maximum.accumulate(np.asarray(enc.ends, dtype=np.int64))
    ends[-1] = enc.n_bytes
    ends = np.maximum.accumulate(ends)
    covered = np.diff(ends)  # bytes of tokens 1..n-1
    loss = nats[1:]
    n_bytes = int(covered.sum())
    if n_bytes <= 0:
        raise InputError("the text is too short to score (it needs at least two tokens)")
    total = float(loss.sum())
    starts = list(starts or [0])
    last = np.maximum(ends[1:] - 1, ends[:-1])  # a token's last byte (its start, when it covers none)
    unit = np.searchsorted(np.asarray(starts), np.minimum(last, max(enc.n_bytes - 1, 0)), side="right") - 1
    unit = np.clip(unit, 0, len(starts) - 1)
    num = np.bincount(unit, weights=loss / math.log(2), minlength=len(starts))
    den = np.bincount(unit, weights=covered.astype(np.float64), minlength=len(starts))
    ppl = math.exp(total / (n_tok - 1)) if has_tokens else None
    return Score(
        total / math.log(2) / n_bytes,
        False,
        total,
        n_tok - 1,
        n_bytes,
        ppl,
        tuple(float(x) for x in num),
        tuple(float(x) for x in den),
        tuple(int(s) for s in starts),
    )
