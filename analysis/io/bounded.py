"""Reading the small files users and model publishers write (configs, model cards, plans) in bounded
time and memory: a byte limit per kind of file, JSON that must be an object, and YAML whose anchors and
aliases cannot expand past a node budget (a YAML "billion laughs" is refused, not expanded)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from mergescope.io.errors import InputError

MAX_JSON_BYTES = 64 * 1000**2  # config.json, adapter_config.json, shard indexes (real ones: kilobytes)
MAX_CARD_BYTES = 64 * 1000  # the part of a model card (README.md) read for its front matter
MAX_PLAN_BYTES = 1000**2  # a plan lists models and parameters: real ones are a few kilobytes
MAX_YAML_NODES = 200_000  # values a YAML document may hold once its aliases are expanded


def _mb(n: int) -> str:
    return f"{n / 1000**2:.3g} MB" if n >= 1000**2 else f"{n / 1000:.3g} kB"


def read_limited(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The file's bytes; InputError when it is larger than `limit` (checked before reading)."""
    p = Path(path)
    size = p.stat().st_size
    if size > limit:
        raise InputError(
            f"{path}: {_mb(size)}, more than the {_mb(limit)} a {what} may have; check that this is the right file"
        )
    with open(p, "rb") as fh:
        return fh.read(limit + 1)[:limit]


def read_head(path: str | os.PathLike, limit: int) -> bytes:
    """At most the first `limit` bytes of the file."""
    with open(path, "rb") as fh:
        return fh.read(limit)


class YamlTooBig(yaml.YAMLError):
    """A YAML document past the node budget (usually an alias bomb), or with an alias where none may be."""


def _expanded_size(root, budget: int, aliases: bool = True) -> int:
    """Nodes `root` expands to, aliases expanded; each distinct node is sized once (memo), so this is
    linear in the document even when its expansion is exponential. A recursive alias is refused, and
    with `aliases=False` any node used twice (what an alias does)."""
    memo: dict[int, int] = {}
    entered: set[int] = set()  # entered and not yet sized: the path from the root to the current node
    used: set[int] = set()  # nodes seen as a child
    stack = [root]
    while stack:
        node = stack[-1]
        if id(node) in memo:
            stack.pop()
            continue
        if isinstance(node, yaml.SequenceNode):
            kids = node.value
        elif isinstance(node, yaml.MappingNode):
            kids = [x for kv in node.value for x in kv]
        else:
            kids = []
        if id(node) not in entered:
            entered.add(id(node))
            for k in kids:
                if id(k) in entered:
                    raise YamlTooBig("an alias refers to the node that holds it (a recursive anchor)")
                if not aliases and id(k) in used:
                    raise YamlTooBig("it uses a YAML alias (*name), which is not accepted here")
                used.add(id(k))
            pending = [k for k in kids if id(k) not in memo]
            if pending:
                stack.extend(pending)
                continue
        stack.pop()
        entered.discard(id(node))
        size = 1 + sum(memo[id(k)] for k in kids)
        if size > budget:
            raise YamlTooBig(f"it expands to more than {budget:,} values (YAML aliases?)")
        memo[id(node)] = size
    return memo.get(id(root), 0)


def load_yaml(text: str | bytes, *, aliases: bool = True, budget: int = MAX_YAML_NODES):
    """yaml.safe_load within a node budget: the document is composed (libyaml when present), its size
    with every alias expanded is counted, and only then is it built. `aliases=False` refuses any alias.
    Raises yaml.YAMLError."""
    loader = (getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, budget, aliases)
        return loader.construct_document(node)
    finally:
        loader.dispose()


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def load_json_object(path: str | os.PathLike, what: str, limit: int = MAX_JSON_BYTES, hook=None) -> dict:
    """A JSON file that must hold one object; InputError naming the file otherwise (parsing is linear,
    so only its size needs a limit)."""
    raw = read_limited(path, limit, what)
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=hook)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({str(exc)[:120]}); fix or remove the file") from None
    if not isinstance(data, dict):
        kind = _JSON_KINDS.get(type(data), type(data).__name__)
        raise InputError(
            f"{path}: holds a JSON {kind}, not an object; a {what} is an object of keys — fix or remove the file"
        )
    return data
