"""Text to token ids for scoring: the checkpoint's tokenizer.json (the `tokenizers` library), or bytes.

Bits per byte divide by the UTF-8 bytes the *predicted* tokens cover, so each encoding also says how
many bytes its first token spans when it is text (nothing precedes it, so it is not predicted). A
tokenizer that prepends BOS predicts every text token. A tokenizer.json that maps the 256 bytes to
themselves (the demo models') is read natively, as is a model with no tokenizer files and 256 tokens.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mergescope.io.errors import InputError


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    n_bytes: int  # UTF-8 bytes of the text
    ends: list[int]  # the byte where each token ends (0 for a special token before the text)

    @property
    def unscored_bytes(self) -> int:
        """Bytes of the first token when it is text (it is never predicted)."""
        return self.ends[0] if self.ends else 0

    @property
    def scored_bytes(self) -> int:
        return self.n_bytes - self.unscored_bytes


class ByteTokenizer:
    """Token id = byte value (vocab 256, no special tokens)."""

    name = "bytes"
    has_tokens = False  # tokens are bytes: a per-token perplexity says nothing new

    def encode(self, text: bytes) -> Encoded:
        return Encoded(list(text), len(text), list(range(1, len(text) + 1)))


class JsonTokenizer:
    """A Hugging Face tokenizer.json, with the special tokens its post-processor adds (e.g. BOS)."""

    has_tokens = True

    def __init__(self, path: Path):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no warnings when a merge forks later
        from tokenizers import Tokenizer

        self.name = str(path)
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exceptions for bad files
            raise InputError(f"{path}: not a readable tokenizer.json ({str(exc)[:120]}); re-download it") from None

    def encode(self, text: bytes) -> Encoded:
        s = text.decode("utf-8")
        enc = self.tok.encode(s, add_special_tokens=True)
        import numpy as np

        b = np.frombuffer(text, dtype=np.uint8)
        char_at = np.append(np.flatnonzero((b & 0xC0) != 0x80), len(text)).tolist()  # byte of each character
        ends, last = [], 0
        for (_, e), special in zip(enc.offsets, enc.special_tokens_mask):
            if not special:
                last = max(last, char_at[min(e, len(char_at) - 1)])
            ends.append(last)
        return Encoded(list(enc.ids), len(text), ends)


def _is_identity_bytes(path: Path) -> bool:
    """tokenizer.json is BPE over the 256 byte-level characters with no merges and no added tokens."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    model = d.get("model") or {}
    vocab = model.get("vocab")
    pre = d.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or model.get("merges") or d.get("added_tokens") or not isinstance(vocab, dict):
        return False
    if pre.get("type") != "ByteLevel" or d.get("normalizer") or d.get("post_processor"):
        return False
    b2u = bytes_to_unicode()
    return vocab == {b2u[b]: b for b in range(256)}


def tokenizer_for(root: Path | None, config: dict, where: str):
    """The tokenizer of a model whose files sit in `root`; `where` names the model in errors."""
    tj = root / "tokenizer.json" if root is not None else None
    if tj is not None and tj.is_file():
        if _is_identity_bytes(tj):
            return ByteTokenizer()
        return JsonTokenizer(tj)
    others = [
        f for f in ("tokenizer.model", "vocab.json", "vocab.txt", "spiece.model") if root and (root / f).is_file()
    ]
    if others:
        raise InputError(
            f"{where}: has {others[0]} but no tokenizer.json, which scoring reads; save one with transformers "
            "(AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)) or use --eval-cmd"
        )
    if config.get("vocab_size") == 256:
        return ByteTokenizer()
    raise InputError(
        f"{where}: no tokenizer files (tokenizer.json) and vocab_size {config.get('vocab_size')} is not byte-level "
        "(256); copy its tokenizer files (e.g. from its base model) next to the weights"
    )


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the one `tokenizers`' ByteLevel uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}
