"""Scores on held-out text: bits per byte for any causal LM checkpoint, LoRA adapter or in-memory merge.

**bits per byte** = Σ negative log-likelihood (bits) of the predicted tokens ÷ the UTF-8 bytes those
tokens cover. It does not depend on the tokenizer, so models with different vocabularies compare; lower
is better. Windows: `context` tokens (the model's context length unless told), starting every `stride`
tokens (at most context − 1, so every token after the first is predicted); each token is scored
once, by the first window that holds it with the most left context (the strided-perplexity recipe); the first token has no context and is not scored (a BOS the tokenizer
prepends is; it covers no bytes). All windows of a text have one length, so they run in fixed batches
and results are deterministic. Perplexity per token (e^(nats / tokens)) is reported beside it when the
model has a tokenizer.

Backends (`auto` picks the first that runs the model): `builtin`, the pure-torch Llama-family forward in
llama.py (weights cast one at a time from the memory-mapped files, so memory stays near the stored
model); `transformers` (the `eval` extra) for every other causal LM; `command`, a user command whose
last line on stdout is the score (scorers.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mergescope.io.errors import InputError
from mergescope.io.progress import Cancelled
from mergescope.score.tokens import Encoded

BATCH_TOKENS = 16384  # tokens per forward batch (windows x context), fewer for wide models
ACTIVATIONS = 1 << 27  # float32 activations a batch may hold at its widest (the MLP): 512 MB
BACKENDS = ("auto", "builtin", "transformers")


@dataclass(frozen=True)
class Score:
    """One model on one text. `value` is what is compared: bits per byte, or a command's number."""

    value: float
    higher_is_better: bool = False
    nll_nats: float | None = None
    tokens: int | None = None
    n_bytes: int | None = None
    token_perplexity: float | None = None

    def better(self, other: Score) -> bool:
        """Strictly better than `other`."""
        return self.value > other.value if self.higher_is_better else self.value < other.value

    def to_dict(self) -> dict:
        if self.nll_nats is None:
            return {"score": self.value, "higher_is_better": self.higher_is_better}
        return {
            "bits_per_byte": self.value,
            "token_perplexity": self.token_perplexity,
            "tokens": self.tokens,
            "bytes": self.n_bytes,
            "nll_bits": self.nll_nats / math.log(2),
        }


def bits_per_byte(nll_nats: float, tokens: int, enc: Encoded, has_tokens: bool) -> Score:
    n_bytes = enc.scored_bytes
    if n_bytes <= 0 or tokens <= 0:
        raise InputError("the text is too short to score (it needs at least two tokens)")
    bpb = nll_nats / math.log(2) / n_bytes
    ppl = math.exp(nll_nats / tokens) if has_tokens else None
    return Score(bpb, False, nll_nats, tokens, n_bytes, ppl)


# ---------------------------------------------------------------------------------------------- texts
def read_text(path: str | os.PathLike, max_bytes: int | None = None, what: str = "--text") -> bytes:
    """A held-out text file as UTF-8 bytes (cut at a character boundary to `max_bytes`)."""
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file; give a text file of held-out text") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path}: is a directory; give the text files in it") from None
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot read ({exc.strerror}); check the permissions") from None
    if not data.strip():
        raise InputError(f"{what} {path}: is empty; give a file with held-out text")
    if max_bytes is not None and max_bytes < 1:
        raise InputError(f"--max-bytes {max_bytes}: must be a positive number of bytes")
    if max_bytes is not None and len(data) > max_bytes:
        cut = max(0, int(max_bytes))
        while 0 < cut < len(data) and (data[cut] & 0xC0) == 0x80:  # not inside a UTF-8 character
            cut -= 1
        data = data[:cut]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path}: not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
    return data


def read_texts(paths: Sequence[str | os.PathLike], max_bytes: int | None = None, what: str = "--text") -> dict:
    """{name: bytes} for the files (names are the file stems, made unique)."""
    out: dict[str, bytes] = {}
    for p in paths:
        name = Path(p).stem or str(p)
        k, i = name, 2
        while k in out:
            k, i = f"{name}-{i}", i + 1
        out[k] = read_text(p, max_bytes, what)
    if not out:
        raise InputError(f"{what}: give at least one text file")
    return out


def load_texts(directory: str | os.PathLike) -> dict[str, bytes]:
    """`{domain: bytes}` from the `*.txt` files of a directory (e.g. the demo's held-out texts)."""
    return {p.stem: p.read_bytes() for p in sorted(Path(directory).glob("*.txt"))}


# ---------------------------------------------------------------------------------------------- models
@dataclass
class Model:
    """What a backend scores: tensors by name, the config, where the tokenizer lives, and (for backends
    that read files) a directory holding the model."""

    label: str
    tensors: Mapping
    config: dict
    tokenizer_dir: Path | None
    path: Path | None = None
    closer: Callable[[], None] | None = None

    def close(self) -> None:
        if self.closer is not None:
            self.closer()
            self.closer = None


def open_model(ref: str | os.PathLike, label: str | None = None) -> Model:
    """A checkpoint path, `BASE+ADAPTER`, or a LoRA adapter whose base_model_name_or_path is local."""
    from mergescope.io.checkpoint import LoraCheckpoint, open_checkpoint

    ref = str(ref)
    label = label or ref
    base_path = None
    if not Path(ref).expanduser().exists() and "+" in ref:
        base_path, ref = ref.rsplit("+", 1)
    ck = open_checkpoint(ref, label)
    if isinstance(ck, LoraCheckpoint):
        base_path = base_path or ck.declared_base
        if not base_path or not Path(base_path).expanduser().exists():
            ck.close()
            raise InputError(
                f"{ref}: is a LoRA adapter and its base {base_path!r} is not a local path; score it as BASE+{ref}"
            )
        ck = ck.with_base(open_checkpoint(base_path))
    elif base_path is not None:
        ck.close()
        raise InputError(f"{label}: `A+B` means base A with LoRA adapter B, and {ref} is not an adapter")
    root = ck.tokenizer_dir or getattr(ck, "root", None)
    path = ck.root if getattr(ck, "lora", None) is None and ck.root is not None else None
    return Model(label, ck, dict(ck.config or {}), root, path, closer=_close_all(ck))


def _close_all(ck):
    def close():
        for c in (ck, getattr(ck, "base", None), getattr(ck, "lora", None)):
            if c is not None:
                c.close()

    return close


# ---------------------------------------------------------------------------------------------- windows
def nll_from_logits(logits_fn):
    """An nll_fn for window_nll from `logits_fn(x [B, T]) -> logits [B, T, V]`."""

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


def window_nll(
    nll_fn, ids: list[int], context: int, stride: int, should_stop=None, tick=None, batch_tokens: int = BATCH_TOKENS
) -> tuple[float, int]:
    """(Σ nats, tokens scored) of `ids`; `nll_fn(x [B, T]) -> [B, T-1]` gives the negative log-likelihood
    of each next token (nll_from_logits turns a logits function into one)."""
    import torch

    if context < 2:
        raise InputError(f"--context {context}: a window needs at least 2 tokens (one to predict the next)")
    if not 0 < stride <= context:
        raise InputError(f"--stride {stride}: must be between 1 and the context length ({context})")
    x_all = torch.tensor(ids, dtype=torch.long)
    n = x_all.numel()
    if n < 2:
        raise InputError("the text is too short to score (it needs at least two tokens)")
    wins = windows(n, context, stride)
    length = min(context, n)
    per_batch = max(1, batch_tokens // length)
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for b0 in range(0, len(wins), per_batch):
            if should_stop is not None and should_stop():
                raise Cancelled()
            chunk = wins[b0 : b0 + per_batch]
            x = torch.stack([x_all[s : s + length] for s, _ in chunk])
            tok = nll_fn(x).float().cpu()
            pos = torch.arange(length - 1)
            first = torch.tensor([f - s - 1 for s, f in chunk])
            mask = pos[None, :] >= first[:, None]  # position p predicts target s + p + 1
            total += tok.masked_select(mask).double().sum()
            count += int(mask.sum())
            if tick is not None:
                tick(int(mask.sum()))
    return float(total), count
