"""Merging models whose vocabularies differ (mergekit 0.1.5's tokenizer build + vocabulary permutation).

The plan's `tokenizer_source` / `tokenizer:` names the output vocabulary: the base's (its tokens above
the model's vocab_size stripped), one model's, or the union (the base's tokens first, then every other
model's missing tokens, then the added tokens of all, in model order). Every embedding and LM-head
tensor is re-indexed per model to that vocabulary, by token string, before the merge method sees it.
A token some models lack gets, in each model that lacks it: the row of the only model that has it; the
base's row when the base has it; else the average of the rows that exist; zeros when none has it. A
`tokenizer.tokens` entry picks the source itself (a model's row, another token's row, or zeros);
`force: true` uses it even where a model has the token. Rows added by `pad_to_multiple_of` get the mean
of the model's real rows. Only tokenizer.json (the `tokenizers` format) is read and written.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

from mergescope.io.bounded import load_json_object
from mergescope.io.errors import InputError
from mergescope.io.vocabulary import ModelVocab, model_vocab, vocab_of


@dataclass
class VocabPlan:
    """The output vocabulary and, per model, the row of each output token (-1: the model lacks it)."""

    tokens: dict[str, int]
    size: int  # with pad_to_multiple_of
    perms: dict[str, list[int]]
    tokenizer: dict  # the output tokenizer.json
    tokenizer_dir: Path  # where its other files (tokenizer_config.json, ...) come from
    base: str | None
    token_specs: dict = field(default_factory=dict)  # tokenizer.tokens
    vocabs: dict[str, ModelVocab] = field(default_factory=dict)

    def ids(self) -> list[str]:
        """Output tokens in id order."""
        return [t for t, _ in sorted(self.tokens.items(), key=lambda kv: kv[1])]


def build(plan, cks: dict) -> VocabPlan | None:
    """The plan's vocabulary, or None when it builds none (tokenizer files copied from the donor)."""
    spec = plan.vocab_spec()
    if spec is None:
        return None
    refs = plan.referenced_models()
    base = plan.base_model or refs[0]
    vocabs = {r: model_vocab(cks[r], r) for r in refs}
    if spec.source == "union":
        out, donor = _union(base, refs, vocabs), vocabs[base]
    elif spec.source == "base":
        out, donor = _stripped(vocabs[base]), vocabs[base]
    else:
        ck = cks.get(spec.source) or plan.open_ref(spec.source)
        donor = vocabs.get(spec.source) or model_vocab(ck, spec.source)
        out = copy.deepcopy(donor.tokenizer)
    for tok in spec.tokens:
        if tok not in vocab_of(out):
            _add(out, {"content": tok})
    tokens = vocab_of(out)
    size = len(tokens)
    pad = spec.pad_to_multiple_of
    if pad and size % pad:
        size = (size // pad + 1) * pad
    perms = {r: [vocabs[r].tokens.get(t, -1) for t in _in_order(tokens)] for r in refs}
    return VocabPlan(tokens, size, perms, out, donor.path.parent, base, dict(spec.tokens), vocabs)


def _in_order(tokens: dict[str, int]) -> list[str]:
    order = sorted(tokens.items(), key=lambda kv: kv[1])
    if [i for _, i in order] != list(range(len(order))):
        raise InputError("the output vocabulary's ids are not contiguous; the tokenizer.json looks damaged")
    return [t for t, _ in order]


def _stripped(v: ModelVocab) -> dict:
    """The tokenizer without tokens at or above the model's vocab_size (BPE merges that use them too)."""
    tok = copy.deepcopy(v.tokenizer)
    vocab = vocab_of(tok)
    drop = {t for t, i in vocab.items() if i >= v.rows}
    if not drop:
        return tok
    model = tok["model"]
    if model.get("type") != "BPE":
        raise InputError(f"{v.path}: has tokens beyond vocab_size and is not BPE; only BPE can be trimmed")
    tok["added_tokens"] = [e for e in tok.get("added_tokens") or [] if e["id"] < v.rows]
    model["vocab"] = {t: i for t, i in model["vocab"].items() if t not in drop}

    def keep(m):
        parts = m.split(" ") if isinstance(m, str) else list(m)
        return not any(p in drop for p in parts)

    model["merges"] = [m for m in model.get("merges") or [] if keep(m)]
    return tok


def _add(tok: dict, entry: dict) -> None:
    """Append an added token the way `add_tokens` does (next id, normal unless its flags say otherwise)."""
    ids = vocab_of(tok).values()
    new = {
        "id": max(ids, default=-1) + 1,
        "content": entry["content"],
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": True,
        "special": False,
    }
    for k in ("single_word", "lstrip", "rstrip", "normalized", "special"):
        if k in entry:
            new[k] = entry[k]
    tok.setdefault("added_tokens", []).append(new)


def _union(base: str, refs: list[str], vocabs: dict[str, ModelVocab]) -> dict:
    out = _stripped(vocabs[base])
    have = set(vocab_of(out))
    order = [base, *[r for r in refs if r != base]]
    plain: list[str] = []
    added: dict[str, dict] = {}
    for r in order:
        v = vocabs[r]
        for tok, _ in sorted(v.tokens.items(), key=lambda kv: kv[1]):
            if tok in v.added:
                added.setdefault(tok, v.added[tok])
            elif tok not in have and tok not in plain:
                plain.append(tok)
    for tok in plain:
        if tok not in added:
            _add(out, {"content": tok})
            have.add(tok)
    for tok, entry in added.items():
        if tok not in have:
            _add(out, entry)
            have.add(tok)
    return out


def align(vplan: VocabPlan, tensors: dict, models: list[str]) -> dict:
    """{model: tensor re-indexed to the output vocabulary} for one vocabulary tensor of the models
    (all in one dtype, token rows on axis 0). Rows a model lacks are filled by the rules above."""
    import torch

    order = vplan.ids()
    width = tuple(next(iter(tensors.values())).shape[1:])
    for m in models:
        if tuple(tensors[m].shape[1:]) != width:
            raise InputError(
                f"{m}: a vocabulary tensor is {list(tensors[m].shape)}, the others have rows of {list(width)}"
            )
    ref = tensors[models[0]]
    fills = _fill_rows(vplan, tensors, models, order, ref)
    out = {}
    for m in models:
        perm = vplan.perms[m]
        new = torch.zeros((vplan.size, *width), dtype=ref.dtype, device=ref.device)
        idx = torch.tensor([i for i, p in enumerate(perm) if p >= 0 and not _forced(vplan, order[i])], dtype=torch.long)
        if idx.numel():
            src = torch.tensor([perm[i] for i in idx.tolist()], dtype=torch.long)
            new[idx] = tensors[m][src]
        for i, row in fills.items():
            if perm[i] < 0 or _forced(vplan, order[i]):
                new[i] = row
        if vplan.size > len(order):  # padding rows: the mean of the model's real rows
            new[len(order) :] = new[: len(order)].mean(dim=0)
        out[m] = new
    return out


def _forced(vplan: VocabPlan, token: str) -> bool:
    spec = vplan.token_specs.get(token)
    return bool(spec and spec.force)


def _fill_rows(vplan: VocabPlan, tensors: dict, models: list[str], order: list[str], ref) -> dict:
    """Output row -> the row every model lacking that token (or forced to) gets."""
    fills = {}
    for i, token in enumerate(order):
        spec = vplan.token_specs.get(token)
        present = [m for m in models if vplan.perms[m][i] >= 0]
        if len(present) == len(models) and not (spec and spec.force):
            continue
        if spec is not None and spec.source is not None:
            fills[i] = _from_source(vplan, tensors, spec.source, token, i, ref)
        elif not present:
            fills[i] = ref.new_zeros(ref.shape[1:])
        elif len(present) == 1:
            fills[i] = tensors[present[0]][vplan.perms[present[0]][i]]
        elif vplan.base in present:
            fills[i] = tensors[vplan.base][vplan.perms[vplan.base][i]]
        else:
            acc = ref.new_zeros(ref.shape[1:])
            for m in present:
                acc = acc + tensors[m][vplan.perms[m][i]]
            fills[i] = acc / len(present)
    return fills


def _from_source(vplan: VocabPlan, tensors: dict, src, token: str, i: int, ref):
    if src.kind == "zero":
        return ref.new_zeros(ref.shape[1:])
    if src.model not in tensors:
        raise InputError(
            f"tokenizer.tokens[{token!r}]: takes its row from {src.model}, which is not an input of this tensor; "
            "name one of the merged models"
        )
    t = tensors[src.model]
    if src.kind == "model":
        row = vplan.perms[src.model][i]
        if row < 0:
            raise InputError(f"tokenizer.tokens[{token!r}]: {src.model} has no token {token!r}; pick another source")
        return t[row]
    row = src.token_id
    if row is None:
        row = vplan.vocabs[src.model].tokens.get(src.token)
        if row is None:
            raise InputError(f"tokenizer.tokens[{token!r}].source: {src.model} has no token {src.token!r}")
    if not 0 <= row < t.shape[0]:
        raise InputError(
            f"tokenizer.tokens[{token!r}].source: token_id {row} is outside {src.model}'s {t.shape[0]} rows"
        )
    return t[row]


def tokenizer_files(vplan: VocabPlan, out_dir: Path, chat_template: str | None) -> list[str]:
    """Write the output tokenizer: tokenizer.json, and the donor's other tokenizer files with the added
    tokens and the chat template brought up to date."""
    import shutil

    written = []
    (out_dir / "tokenizer.json").write_text(json.dumps(vplan.tokenizer, ensure_ascii=False, indent=2), encoding="utf-8")
    written.append("tokenizer.json")
    cfg_path = vplan.tokenizer_dir / "tokenizer_config.json"
    cfg = load_json_object(cfg_path, "tokenizer config") if cfg_path.is_file() else {}
    cfg["added_tokens_decoder"] = {
        str(e["id"]): {
            k: e[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special") if k in e
        }
        for e in vplan.tokenizer.get("added_tokens") or []
    }
    if chat_template:
        cfg["chat_template"] = chat_template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
    written.append("tokenizer_config.json")
    for f in ("special_tokens_map.json", "chat_template.jinja", "generation_config.json"):
        if (vplan.tokenizer_dir / f).is_file() and not (chat_template and f == "chat_template.jinja"):
            shutil.copyfile(vplan.tokenizer_dir / f, out_dir / f)
            written.append(f)
    return written


def chat_template(plan, cks: dict) -> str | None:
    """The plan's chat template as text: a named one, the most common among the models (`auto`), or the
    literal Jinja it gives."""
    from collections import Counter

    from mergescope.merge.chat_templates import TEMPLATES

    t = plan.chat_template
    if not t:
        return None
    if t in TEMPLATES:
        return TEMPLATES[t]
    if t != "auto":
        return t
    found = []
    for r in plan.referenced_models():
        root = cks[r].tokenizer_dir
        cfg = root / "tokenizer_config.json" if root is not None else None
        if cfg is not None and cfg.is_file():
            ct = load_json_object(cfg, "tokenizer config").get("chat_template")
            if isinstance(ct, str) and ct:
                found.append(ct)
    return Counter(found).most_common(1)[0][0] if found else None


def write_tokenizer(plan, cks: dict, vplan: VocabPlan | None, donor_dir: Path | None, out_dir: Path) -> list[str]:
    """The output's tokenizer files: the built vocabulary, or the donor's files; the chat template set."""
    import shutil

    from mergescope.io.checkpoint.files import TOKENIZER_FILES

    template = chat_template(plan, cks)
    if vplan is not None:
        return tokenizer_files(vplan, out_dir, template)
    written = []
    if donor_dir is not None:
        for f in TOKENIZER_FILES:
            if (donor_dir / f).is_file():
                shutil.copyfile(donor_dir / f, out_dir / f)
                written.append(f)
    if template:
        cfg_path = out_dir / "tokenizer_config.json"
        cfg = load_json_object(cfg_path, "tokenizer config") if cfg_path.is_file() else {}
        cfg["chat_template"] = template
        cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
        (out_dir / "chat_template.jinja").unlink(missing_ok=True)  # it would override tokenizer_config's
        written = [f for f in written if f != "chat_template.jinja"] + (
            [] if "tokenizer_config.json" in written else ["tokenizer_config.json"]
        )
    return written
