"""The plan's vocabulary keys: `tokenizer_source`, mergekit's `tokenizer:` block, and `chat_template`.

tokenizer_source: base | union | MODEL
tokenizer:
  source: union | base | MODEL            # default union
  tokens:                                 # embeddings of chosen tokens (added when missing)
    "<|im_start|>": {source: MODEL}       # or {source: {kind: model_token, model: M, token: "..."}}
    "<pad>": {source: {kind: zero}, force: true}
  pad_to_multiple_of: 64
chat_template: chatml | llama3 | alpaca | mistral | auto | "{% for m in messages %}..."
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mergescope.merge.chat_templates import TEMPLATE_NAMES

TOKENIZER_KEYS = ("source", "tokens", "pad_to_multiple_of")
TOKEN_KEYS = ("source", "force")
SOURCE_KINDS = ("model_token", "zero")


@dataclass
class TokenSource:
    """Where a token's embedding row comes from: a model's row for the same token (`model`), a model's
    row for another token (`model` + `token` or `token_id`), or zeros (`zero`)."""

    kind: str  # "model" | "model_token" | "zero"
    model: str | None = None
    token: str | None = None
    token_id: int | None = None

    def to_value(self):
        if self.kind == "model":
            return self.model
        if self.kind == "zero":
            return {"kind": "zero"}
        d = {"kind": "model_token", "model": self.model}
        if self.token is not None:
            d["token"] = self.token
        else:
            d["token_id"] = self.token_id
        return d


@dataclass
class TokenSpec:
    source: TokenSource | None = None
    force: bool = False


@dataclass
class TokenizerSpec:
    source: str = "union"  # "union" | "base" | a model reference
    tokens: dict[str, TokenSpec] = field(default_factory=dict)
    pad_to_multiple_of: int | None = None

    def to_dict(self) -> dict:
        d: dict = {"source": self.source}
        if self.tokens:
            d["tokens"] = {}
            for tok, spec in self.tokens.items():
                e: dict = {}
                if spec.source is not None:
                    e["source"] = spec.source.to_value()
                if spec.force:
                    e["force"] = True
                d["tokens"][tok] = e
        if self.pad_to_multiple_of:
            d["pad_to_multiple_of"] = self.pad_to_multiple_of
        return d


def parse_tokenizer(v, fail, ref, check_keys) -> TokenizerSpec:
    """The `tokenizer:` block; `fail(path, msg)` raises, `ref(v, path)` checks a model reference."""
    if not isinstance(v, dict):
        fail("tokenizer", f"expected a mapping with `source`, `tokens`, `pad_to_multiple_of`, got {v!r}")
    check_keys(v, TOKENIZER_KEYS, "tokenizer", fail)
    src = v.get("source", "union")
    src = src if src in ("union", "base") else ref(src, "tokenizer.source")
    pad = v.get("pad_to_multiple_of")
    if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad <= 0):
        fail("tokenizer.pad_to_multiple_of", f"expected a positive integer (e.g. 64), got {pad!r}")
    tokens = {}
    raw = v.get("tokens") or {}
    if not isinstance(raw, dict):
        fail("tokenizer.tokens", f"expected a mapping of token strings to {{source, force}}, got {raw!r}")
    for tok, cfg in raw.items():
        p = f"tokenizer.tokens[{tok!r}]"
        if not isinstance(tok, str) or not tok:
            fail("tokenizer.tokens", f"token keys are non-empty strings, got {tok!r}")
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, dict):
            fail(p, f"expected a mapping with `source` and/or `force`, got {cfg!r}")
        check_keys(cfg, TOKEN_KEYS, p, fail)
        force = cfg.get("force", False)
        if not isinstance(force, bool):
            fail(f"{p}.force", f"expected true or false, got {force!r}")
        tokens[tok] = TokenSpec(_source(cfg.get("source"), f"{p}.source", fail, ref, check_keys), force)
    return TokenizerSpec(src, tokens, pad)


def _source(v, path, fail, ref, check_keys) -> TokenSource | None:
    if v is None:
        return None
    if isinstance(v, str):
        return TokenSource("model", ref(v, path))
    if not isinstance(v, dict):
        fail(path, f"expected a model path or {{kind: model_token | zero, ...}}, got {v!r}")
    kind = v.get("kind")
    if kind == "zero":
        check_keys(v, ("kind",), path, fail)
        return TokenSource("zero")
    if kind != "model_token":
        fail(f"{path}.kind", f"expected one of {', '.join(SOURCE_KINDS)}, got {kind!r}")
    check_keys(v, ("kind", "model", "token", "token_id"), path, fail)
    if "model" not in v:
        fail(f"{path}.model", "missing; name the model whose row is copied")
    token, token_id = v.get("token"), v.get("token_id")
    if (token is None) == (token_id is None):
        fail(path, "give exactly one of `token` or `token_id`")
    if token_id is not None and (not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0):
        fail(f"{path}.token_id", f"expected a non-negative integer, got {token_id!r}")
    return TokenSource("model_token", ref(v["model"], f"{path}.model"), token, token_id)


def check_chat_template(v, fail) -> str:
    if not isinstance(v, str) or not v.strip():
        fail("chat_template", f"expected a template name ({', '.join(TEMPLATE_NAMES)}, auto) or Jinja text, got {v!r}")
    if v in TEMPLATE_NAMES or v == "auto" or ("{" in v and len(v) >= 20):
        return v
    fail("chat_template", f"{v!r} is neither a known template ({', '.join(TEMPLATE_NAMES)}, auto) nor Jinja text")
