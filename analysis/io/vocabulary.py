"""A checkpoint's vocabulary as its tokenizer.json states it (token -> embedding row), and which tensors
are indexed by token. Read by the analysis (comparing embeddings on shared tokens) and by merges that
align vocabularies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mergescope.io.errors import InputError
from mergescope.io.naming import site_of

VOCAB_MODULES = ("embed_tokens", "lm_head")  # tensors whose rows are tokens (axis 0)


def is_vocab_tensor(name: str) -> bool:
    return site_of(name).module in VOCAB_MODULES


@dataclass
class ModelVocab:
    tokens: dict[str, int]  # token -> row, rows < `rows`
    added: dict[str, dict]  # added token -> its tokenizer.json entry (flags)
    rows: int
    tokenizer: dict  # the parsed tokenizer.json
    path: Path


def model_vocab(ck, where: str) -> ModelVocab:
    """A checkpoint's vocabulary from its tokenizer.json, limited to its embedding rows."""
    root = ck.tokenizer_dir
    path = root / "tokenizer.json" if root is not None else None
    if path is None or not path.is_file():
        raise InputError(
            f"{where}: has no tokenizer.json, which aligning vocabularies needs; copy its tokenizer files next "
            "to the weights, or remove tokenizer_source/tokenizer from the plan"
        )
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
        vocab = vocab_of(tok)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a readable tokenizer.json ({exc}); re-download it") from None
    rows = ck.vocab_size or _embed_rows(ck) or len(vocab)
    added = {e["content"]: dict(e) for e in tok.get("added_tokens") or [] if e.get("id", rows) < rows}
    return ModelVocab({t: i for t, i in vocab.items() if i < rows}, added, rows, tok, path)


def vocab_of(tok: dict) -> dict[str, int]:
    model = tok["model"]
    v = model.get("vocab")
    if isinstance(v, dict):
        out = dict(v)
    elif isinstance(v, list):  # Unigram: [[piece, score], ...]
        out = {piece: i for i, (piece, _) in enumerate(v)}
    else:
        raise ValueError(f"model type {model.get('type')!r} has no vocab")
    for e in tok.get("added_tokens") or []:
        out[e["content"]] = int(e["id"])
    return out


def _embed_rows(ck) -> int | None:
    for n in ck.names():
        if site_of(n).module == "embed_tokens":
            return ck.info(n).shape[0]
    return None
