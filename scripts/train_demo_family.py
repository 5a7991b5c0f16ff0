#!/usr/bin/env python
"""Train the tiny demo model family shipped in `analysis/demo/` (deterministic, CPU, a few minutes).

    python scripts/train_demo_family.py [--out analysis/demo] [--threads 1] [--only NAME ...] [--no-report]
    python scripts/train_demo_family.py --family second --out DIR      # another family, not shipped

Writes `<out>/family/{base,code,prose,dialog,overtrained,other_base,other_ft,code_b,code_c,sibling_base,
sib_code,sib_prose,sib_dialog}/` (HF Llama layout: config.json, model.safetensors in bf16, tokenizer.json,
README.md) and `<out>/heldout/<domain>.txt`, then prints held-out bits per byte (`mergescope.score.backends`, the
model's context, no overlap), task-vector metrics, a few inline task-arithmetic / TIES merges, the uniform
soup of the `code` runs and merges of the sibling base's fine-tunes against both bases.
`--only sibling_base sib_code` trains just those (their parents are loaded from `<out>`); every member has
its own seeds, so the others' bytes do not depend on which members are trained, or in which order.

Data (all from the Python installation running the script, so it exists on any machine):
- code:   top-level `.py` files of the standard library, in sorted order. Held out: `textwrap.py`
          (excluded from training).
- prose:  English paragraphs of `pydoc_data.topics` (indented code/grammar blocks and heading rules
          dropped, paragraphs re-wrapped at 72 columns). Held out: topics `execmodel` and
          `formatstrings`; any training paragraph that also occurs in them is dropped (topics overlap).
- dialog: two-person conversations generated from templates below with a seeded RNG (train seed
          1001, held-out seed 2002). They share templates, but held-out conversations that occur
          verbatim in the training stream are dropped.
The held-out files are written only when missing or when `--write-heldout` is given, so evaluation
does not depend on the Python version; training text does (different Python => different bytes).

Recipe (see RECIPE; AdamW betas (0.9, 0.95), eps 1e-5, grad clip 1.0, sequences of 128 bytes):
- base, other_base: from scratch (init seeds 0 and 1, normal(0, 0.02)), uniform mixture of the three
  domains, 600 steps x 32 sequences, LR 3e-3 cosine to 3e-4, weight decay 0.05.
- code, prose, dialog: fine-tunes of `base`, 300 steps x 16 sequences, LR 1e-3 decaying linearly to 0,
  no weight decay; 75 % of rows from the domain, 25 % replayed from the mixture (without replay a
  tiny model forgets the other domains so badly that no merge can help).
- overtrained: `base` on pure code, 900 steps at a constant 3e-3: drifted far from its base.
- other_ft: the `code` recipe applied to `other_base`.
- sibling_base: a "v2" of `base`: `base` trained 300 more steps x 32 sequences on the mixture, LR 5e-4
  cosine to 5e-5, weight decay 0.05: ||sibling_base - base|| / ||base|| = 0.05 (a fine-tune's is 0.08).
- sib_code, sib_prose, sib_dialog: the code / prose / dialog recipes applied to `sibling_base` (seeds 30-32).
  Analysed against `base` (the wrong base), their task vectors share the base offset sibling_base - base.
- code_b, code_c: soup ingredients, i.e. the `code` recipe (same data, steps, schedule, replay) with other
  seeds (26, 25: the data order) and a modestly different peak LR (8.5e-4, 1.2e-3): same base,
  same task, different hyperparameters, the model-soup setting. The uniform soup (equal-weight average)
  of `code`, `code_b` and `code_c` scores better on held-out code than the best of them alone (checked
  below). Tried first: LR 7e-4 / 1.4e-3 with seeds 25 / 26, where the high-LR run alone beat the soup.
Fine-tunes start from the bf16 weights as saved, so task vectors are exact differences of stored values.

`--family second` (written to `--out`, never shipped): an independent family for evidence that is not
calibrated on the demo: 6 layers, hidden 96, MLP 256, 6 heads / 2 KV heads (640 k parameters), trained on
other data: the code of standard-library packages (sub-directories; held out: json, zoneinfo) and their
docstrings (the pre-training mixture), and a generated server log (a domain new to the base). Members:
base (400 steps), sibling_base (200 steps at 5e-4), fine-tunes pkg / docs / logs (200 steps), soup
ingredients pkg_b / pkg_c (the pkg recipe, other seeds) and sib_pkg / sib_docs / sib_logs (fine-tunes of
sibling_base). About 9 minutes on one CPU thread.

Determinism: fixed seeds, `torch.use_deterministic_algorithms(True)`, a fixed thread count. Same
Python, torch build, CPU type and `--threads` => same bytes.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import inspect
import json
import math
import random
import re
import sys
import sysconfig
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinylm import LlamaConfig, LlamaLM, encode, load_model, save_model  # noqa: E402

from mergescope.io.checkpoint import open_checkpoint  # noqa: E402
from mergescope.score.backends import score_models  # noqa: E402
from mergescope.score.model import Model  # noqa: E402
from mergescope.score.texts import load_texts  # noqa: E402

DOMAINS = ("code", "prose", "dialog")
NAMESPACE = "mergescope-demo"

CONFIG = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    initializer_range=0.02,
)
SEQ = 128
# Adam's eps: with 1e-8 Adam turns the tiny, consistent "push down" gradient on the lm_head rows of
# bytes that never occur into full-size steps, and those rows then dominate every task vector (70 %
# of its norm, shared by all fine-tunes). 1e-5 leaves ordinary gradients alone and damps that drift.
ADAM_EPS = 1e-5

# Order = submission order when training in parallel (longest fine-tune first).
RECIPE = {
    "base": dict(parent=None, init_seed=0, data="mix", steps=600, batch=32, lr=3e-3, sched="cosine", seed=10),
    "other_base": dict(parent=None, init_seed=1, data="mix", steps=600, batch=32, lr=3e-3, sched="cosine", seed=11),
    "overtrained": dict(parent="base", data="code", steps=900, batch=16, lr=3e-3, sched="constant", seed=23),
    "code": dict(parent="base", data="code", steps=300, batch=16, lr=1e-3, sched="linear", replay=0.25, seed=20),
    "prose": dict(parent="base", data="prose", steps=300, batch=16, lr=1e-3, sched="linear", replay=0.25, seed=21),
    "dialog": dict(parent="base", data="dialog", steps=300, batch=16, lr=1e-3, sched="linear", replay=0.25, seed=22),
    "other_ft": dict(
        parent="other_base", data="code", steps=300, batch=16, lr=1e-3, sched="linear", replay=0.25, seed=24
    ),
    # Soup ingredients: the `code` recipe with another data-order seed and peak LR.
    "code_b": dict(parent="base", data="code", steps=300, batch=16, lr=8.5e-4, sched="linear", replay=0.25, seed=26),
    "code_c": dict(parent="base", data="code", steps=300, batch=16, lr=1.2e-3, sched="linear", replay=0.25, seed=25),
    # A sibling base ("v2" of `base`: pre-training continued on the mixture) and fine-tunes of it.
    "sibling_base": dict(parent="base", data="mix", steps=300, batch=32, lr=5e-4, sched="cosine", seed=12),
    "sib_code": dict(
        parent="sibling_base", data="code", steps=300, batch=16, lr=1e-3, sched="linear", replay=0.25, seed=30
    ),
    "sib_prose": dict(
        parent="sibling_base", data="prose", steps=300, batch=16, lr=1e-3, sched="linear", replay=0.25, seed=31
    ),
    "sib_dialog": dict(
        parent="sibling_base", data="dialog", steps=300, batch=16, lr=1e-3, sched="linear", replay=0.25, seed=32
    ),
}
# Display order.
MEMBERS = ["base", "code", "prose", "dialog", "overtrained", "other_base", "other_ft", "code_b", "code_c"]
MEMBERS += ["sibling_base", "sib_code", "sib_prose", "sib_dialog"]
SOUP = ("code", "code_b", "code_c")  # same base, same task, other seeds / LR: averaged in the soup report
# The sibling base and its fine-tunes (reported apart: merged against `base`, the wrong base, and their own).
SIBLING_BASE = "sibling_base"
SIBLINGS = ("sib_code", "sib_prose", "sib_dialog")
DESCRIPTIONS = {
    "base": "A base model trained from scratch (init seed 0) on a uniform mixture of Python standard-library "
    "source code, English prose from the Python docs, and templated two-person dialogues.",
    "other_base": "A second base model trained exactly like `base` but from init seed 1: same data and "
    "recipe, unrelated weights.",
    "code": "A moderate fine-tune of `base` on Python standard-library source code.",
    "prose": "A moderate fine-tune of `base` on English prose from the Python documentation.",
    "dialog": "A moderate fine-tune of `base` on templated two-person dialogues.",
    "overtrained": "A fine-tune of `base` on Python source trained far too long and too hot (3x the steps of "
    "`code`, 3x its peak LR held constant, no replay), so it has drifted far from its base.",
    "other_ft": "A fine-tune of `other_base` (not `base`!) on Python source, with the same recipe as `code`.",
    "code_b": "A soup ingredient: a second fine-tune of `base` on Python standard-library source code, with the "
    "recipe of `code` but another data-order seed and a lower peak LR.",
    "code_c": "A soup ingredient: a third fine-tune of `base` on Python standard-library source code, with the "
    "recipe of `code` but another data-order seed and a higher peak LR.",
    "sibling_base": "A sibling of `base` (a 'v2'): `base` with its pre-training continued on the same uniform "
    "mixture for 300 more steps at a low LR. Same architecture and tokenizer, weights a few percent away "
    "from `base` (relative norm of the difference about 0.05).",
    "sib_code": "A fine-tune of `sibling_base` (not `base`!) on Python standard-library source code, with the "
    "recipe of `code`.",
    "sib_prose": "A fine-tune of `sibling_base` (not `base`!) on English prose from the Python documentation, "
    "with the recipe of `prose`.",
    "sib_dialog": "A fine-tune of `sibling_base` (not `base`!) on templated two-person dialogues, with the "
    "recipe of `dialog`.",
}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

CODE_HELDOUT = ("shlex.py", "textwrap.py")
PROSE_HELDOUT = ("execmodel", "formatstrings")


def _stdlib_files() -> list[Path]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in lib.glob("*.py") if not p.name.startswith("_sysconfigdata"))


def split_docstrings(source: str) -> tuple[str, list[str]]:
    """(source without its docstrings, the docstrings). A body left empty gets `pass`."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return source, []
    lines = source.splitlines(keepends=True)
    drop: dict[int, str | None] = {}  # first line -> replacement, for each docstring's line range
    docs = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = node.body
        if not (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            continue
        ds = body[0]
        docs.append(inspect.cleandoc(ds.value.value))
        first = lines[ds.lineno - 1]
        if first[: ds.col_offset].strip():  # docstring shares its line with other code: keep it
            continue
        indent = first[: ds.col_offset]
        for i in range(ds.lineno - 1, ds.end_lineno):
            drop[i] = None
        if len(body) == 1:
            drop[ds.lineno - 1] = indent + "pass\n"
    out = [drop[i] if i in drop else line for i, line in enumerate(lines)]
    return "".join(x for x in out if x is not None), docs


def code_corpus() -> tuple[bytes, bytes, list[str]]:
    """(training code, held-out code, docstrings of the training files). Docstrings go to prose."""
    train, held, docs = [], [], []
    for p in _stdlib_files():
        src, ds = split_docstrings(p.read_text(encoding="utf-8", errors="replace"))
        if p.name in CODE_HELDOUT:
            held.append(src)
        else:
            train.append(src + "\n")
            docs.extend(ds)
    return "".join(train).encode(), "".join(held).encode(), docs


def _paragraphs(text: str) -> list[str]:
    """Plain paragraphs of a text: indented blocks (code, grammar) and heading rules are dropped."""
    out, para = [], []
    for line in text.splitlines() + [""]:
        s = line.strip()
        if not s or line.startswith(" ") or re.fullmatch(r"[*=\-~^]+", s):
            if para:
                out.append(" ".join(para))
                para = []
            continue
        para.append(s)
    return [p for p in out if len(p) > 60]


def prose_corpus(docstrings: list[str]) -> tuple[bytes, bytes]:
    from pydoc_data.topics import topics

    held = [p for k in PROSE_HELDOUT for p in _paragraphs(topics[k])]
    seen = set(held)
    train = []
    sources = [topics[k] for k in sorted(topics) if k not in PROSE_HELDOUT] + docstrings
    for text in sources:
        for p in _paragraphs(text):
            if p not in seen and ">>>" not in p:
                seen.add(p)
                train.append(p)
    wrap = lambda ps: "".join(textwrap.fill(p, 72) + "\n\n" for p in ps).encode("utf-8")  # noqa: E731
    return wrap(train), wrap(held)


NAMES = [
    "Alice",
    "Bob",
    "Carol",
    "Dave",
    "Erin",
    "Frank",
    "Grace",
    "Heidi",
    "Ivan",
    "Judy",
    "Mallory",
    "Nina",
    "Oscar",
    "Peggy",
    "Rupert",
    "Sybil",
    "Trent",
    "Uma",
    "Victor",
    "Wendy",
]
FOODS = ["pasta", "soup", "a sandwich", "pizza", "curry", "salad", "tacos", "noodles", "rice and beans", "dumplings"]
PLACES = [
    "the park",
    "the library",
    "the market",
    "the museum",
    "the beach",
    "the station",
    "the cafe",
    "the cinema",
    "the gym",
    "the office",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TIMES = ["nine", "ten", "eleven", "noon", "two", "three", "four", "five", "six", "seven"]
THINGS = [
    "my laptop",
    "the printer",
    "my phone",
    "the car",
    "the washing machine",
    "my bike",
    "the router",
    "the heater",
    "my camera",
    "the fridge",
]
PROBLEMS = [
    "won't turn on",
    "keeps making a strange noise",
    "is really slow",
    "stopped working yesterday",
    "shows an error message",
    "keeps restarting",
    "is stuck on a blank screen",
]
WEATHER = ["sunny", "rainy", "cold", "windy", "warm", "cloudy", "foggy", "snowy"]
FEELINGS = ["great", "pretty good", "a bit tired", "fine", "really busy", "excited", "not bad", "a little stressed"]
HOBBIES = ["reading", "running", "painting", "cooking", "gardening", "playing chess", "hiking", "learning guitar"]
BOOKS = ["a mystery novel", "a book about space", "a history of Rome", "a cookbook", "a travel guide", "a biography"]


def _dialogue(r: random.Random) -> str:
    a, b = r.sample(NAMES, 2)
    c = r.choice
    kind = r.randrange(6)
    lines: list[tuple[str, str]] = []
    if kind == 0:  # greeting and plans
        lines += [
            (a, c([f"Hi {b}, how are you?", f"Hey {b}! How's it going?", f"Good morning, {b}."])),
            (b, c([f"I'm {c(FEELINGS)}, thanks. And you?", f"Oh, {c(FEELINGS)}. How about you?"])),
            (
                a,
                c(
                    [
                        f"I'm {c(FEELINGS)}. Are you free on {c(DAYS)}?",
                        f"{c(FEELINGS).capitalize()}. Do you want to go to {c(PLACES)} later?",
                    ]
                ),
            ),
            (
                b,
                c(
                    [
                        f"Sure, let's meet at {c(TIMES)}.",
                        f"I can't on {c(DAYS)}, but {c(DAYS)} works.",
                        "Sounds good to me!",
                    ]
                ),
            ),
            (a, c(["Great, see you then!", "Perfect. I'll text you.", "Okay, see you soon."])),
        ]
    elif kind == 1:  # restaurant
        f1, f2 = r.sample(FOODS, 2)
        lines += [
            (a, c(["What would you like to order?", "Are you ready to order?", "What can I get for you today?"])),
            (b, c([f"I'd like {f1}, please.", f"Could I have {f1}?", f"I'll have {f1} and some water."])),
            (
                a,
                c(
                    [
                        f"Sorry, we're out of {f1}. How about {f2}?",
                        "Good choice. Anything else?",
                        f"Would you like {f2} with that?",
                    ]
                ),
            ),
            (b, c([f"Then {f2} is fine.", "No, that's all, thank you.", f"Yes, {f2} sounds nice."])),
            (a, c(["Coming right up.", f"It will be ready in {r.randint(5, 20)} minutes.", "Thank you!"])),
        ]
    elif kind == 2:  # support
        t, p = c(THINGS), c(PROBLEMS)
        lines += [
            (
                a,
                c(
                    [
                        f"Hello, {t} {p}.",
                        f"Hi, I need help. {t.capitalize()} {p}.",
                        f"Can you help me? {t.capitalize()} {p}.",
                    ]
                ),
            ),
            (
                b,
                c(
                    [
                        "I'm sorry to hear that. Have you tried turning it off and on again?",
                        "When did this start?",
                        "Is it plugged in?",
                    ]
                ),
            ),
            (a, c(["Yes, I tried that already.", f"It started on {c(DAYS)}.", "I think so, yes."])),
            (
                b,
                c(
                    [
                        f"Okay. Bring it to {c(PLACES)} on {c(DAYS)} and we'll take a look.",
                        "Let me check a few things. Please hold on.",
                        "Try unplugging it for a minute.",
                    ]
                ),
            ),
            (a, c(["Thank you so much.", "Okay, I'll do that.", "Thanks, that worked!"])),
        ]
    elif kind == 3:  # weather
        w1, w2 = r.sample(WEATHER, 2)
        lines += [
            (a, c([f"It's so {w1} today.", f"Did you see how {w1} it is outside?", f"What a {w1} day!"])),
            (
                b,
                c(
                    [
                        f"I know! Yesterday it was {w2}.",
                        f"I heard it will be {w2} on {c(DAYS)}.",
                        f"I prefer it when it's {w2}.",
                    ]
                ),
            ),
            (
                a,
                c(
                    [
                        f"Maybe we should go to {c(PLACES)} instead.",
                        "Let's stay inside and have tea.",
                        "I'll bring an umbrella just in case.",
                    ]
                ),
            ),
            (b, c(["Good idea.", "Yes, let's do that.", "Fine by me."])),
        ]
    elif kind == 4:  # hobbies
        h1, h2 = r.sample(HOBBIES, 2)
        lines += [
            (a, c(["What do you do in your free time?", "Do you have any hobbies?", "What did you do last weekend?"])),
            (
                b,
                c([f"I like {h1}. What about you?", f"Mostly {h1}, and sometimes {h2}.", f"I spent the weekend {h1}."]),
            ),
            (a, c([f"I've been {h2} a lot lately.", f"I'm reading {c(BOOKS)} right now.", f"I want to try {h1} too."])),
            (b, c(["That sounds fun!", "You should show me sometime.", "Nice, tell me how it goes."])),
            (a, c(["I will!", "Maybe next week.", "Sure thing."])),
        ]
    else:  # appointment
        d, tm = c(DAYS), c(TIMES)
        lines += [
            (
                a,
                c(
                    [
                        "I'd like to book an appointment.",
                        "Can I change my appointment?",
                        "Do you have any openings this week?",
                    ]
                ),
            ),
            (b, c([f"We have a slot on {d} at {tm}.", f"How about {d} at {tm}?", "What day works best for you?"])),
            (
                a,
                c(
                    [
                        f"{d} at {tm} is perfect.",
                        f"Do you have anything later on {d}?",
                        f"Could we do {c(DAYS)} instead?",
                    ]
                ),
            ),
            (b, c(["You're all set.", f"Yes, {c(TIMES)} is also free.", "Let me check. Yes, that works."])),
            (a, c(["Thanks, see you then.", "Great, thank you.", "Perfect, goodbye!"])),
        ]
    return "".join(f"{who}: {say}\n" for who, say in lines) + "\n"


def dialog_corpus(train_bytes: int = 400_000, held_bytes: int = 20_000) -> tuple[bytes, bytes]:
    r = random.Random(1001)
    train, seen, size = [], set(), 0
    while size < train_bytes:
        d = _dialogue(r)
        train.append(d)
        seen.add(d)
        size += len(d)
    r = random.Random(2002)
    held, size = [], 0
    while size < held_bytes:
        d = _dialogue(r)
        if d not in seen:
            held.append(d)
            size += len(d)
    return "".join(train).encode(), "".join(held).encode()


def corpora() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """({domain: training bytes}, {domain: held-out bytes}) built from this Python installation."""
    code_train, code_held, docs = code_corpus()
    prose_train, prose_held = prose_corpus(docs)
    dialog_train, dialog_held = dialog_corpus()
    return (
        {"code": code_train, "prose": prose_train, "dialog": dialog_train},
        {"code": code_held, "prose": prose_held, "dialog": dialog_held},
    )


# --------------------------------------------------------------------------------------------
# A second, independent family (`--family second`): another size and other data, so that evidence
# need not be calibrated on the demo itself. Not shipped: it is written where `--out` says.
# --------------------------------------------------------------------------------------------

SECOND_DOMAINS = ("pkg", "docs", "logs")
# Source of these standard-library packages (sub-directories, which the demo never reads); `tests` dropped.
SECOND_PKGS = (
    "asyncio",
    "collections",
    "concurrent",
    "ctypes",
    "curses",
    "dbm",
    "email",
    "http",
    "importlib",
    "json",
    "logging",
    "multiprocessing",
    "re",
    "sqlite3",
    "tomllib",
    "unittest",
    "urllib",
    "wsgiref",
    "xmlrpc",
    "zoneinfo",
)
SECOND_HELDOUT = ("json", "zoneinfo")  # held out: their code (pkg) and their docstrings (docs)
SECOND_HELD_BYTES = 30_000


def _cap(text: bytes, n: int = SECOND_HELD_BYTES) -> bytes:
    """At most `n` bytes, cut after a line."""
    return text if len(text) <= n else text[: text.rfind(b"\n", 0, n) + 1]


SERVICES = ["auth", "db", "cache", "api", "worker", "scheduler", "mailer", "billing", "search", "gateway"]
USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
ROUTES = ["users", "orders", "items", "sessions", "reports", "invoices", "search", "health"]
ERRORS = ["timeout", "connection reset", "broken pipe", "too many connections", "deadlock detected"]


def _log_lines(r: random.Random, n_bytes: int) -> str:
    """A server log: one stream, timestamps ascending, a handful of line templates with random fields."""
    t, out, size = r.randrange(10**8), [], 0
    while size < n_bytes:
        t += r.randrange(1, 4000)
        ts = f"2024-{1 + t // 2_600_000 % 12:02d}-{1 + t // 86400 % 28:02d} {t // 3600 % 24:02d}:{t // 60 % 60:02d}:{t % 60:02d}"
        svc, k = r.choice(SERVICES), r.randrange(6)
        if k == 0:
            msg = f"INFO {svc}: {r.choice(['GET', 'POST', 'PUT', 'DELETE'])} /{r.choice(ROUTES)}/{r.randrange(1, 5000)} -> "
            msg += f"{r.choice([200, 200, 200, 201, 204, 404, 500])} in {r.randrange(1, 900)} ms"
        elif k == 1:
            msg = f"INFO {svc}: user {r.choice(USERS)} logged in from 10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(256)}"
        elif k == 2:
            msg = f"WARNING {svc}: retry {r.randrange(1, 6)}/5 after {r.choice(ERRORS)}"
        elif k == 3:
            msg = f"ERROR {svc}: {r.choice(ERRORS)} while talking to {r.choice(SERVICES)}:{r.choice([5432, 6379, 8080, 9200])}"
        elif k == 4:
            msg = f"DEBUG {svc}: cache hit ratio {r.random():.2f}, {r.randrange(10, 100000)} keys"
        else:
            msg = f"INFO {svc}: job {r.randrange(10**5, 10**6)} finished in {r.randrange(1, 600) / 10:.1f} s"
        line = f"{ts} {msg}\n"
        out.append(line)
        size += len(line)
    return "".join(out)


def second_corpora() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The second family's data: pkg = code of the standard library's packages (docstrings removed),
    docs = those docstrings as re-wrapped paragraphs, logs = a generated server log (train seed 3001,
    held-out seed 4002; its timestamps make every line unique)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    code = {True: [], False: []}
    docs = {True: [], False: []}
    for pkg in SECOND_PKGS:
        held = pkg in SECOND_HELDOUT
        for p in sorted((lib / pkg).rglob("*.py")) if (lib / pkg).is_dir() else []:
            if {"test", "tests", "__pycache__"} & set(p.relative_to(lib).parts):
                continue
            src, ds = split_docstrings(p.read_text(encoding="utf-8", errors="replace"))
            code[held].append(src + "\n")
            docs[held].extend(ds)
    held_paras = [q for d in docs[True] for q in _paragraphs(d)]
    seen = set(held_paras)
    train_paras = []
    for d in docs[False]:
        for q in _paragraphs(d):
            if q not in seen and ">>>" not in q:
                seen.add(q)
                train_paras.append(q)
    wrap = lambda ps: "".join(textwrap.fill(q, 72) + "\n\n" for q in ps).encode("utf-8")  # noqa: E731
    return (
        {
            "pkg": "".join(code[False]).encode(),
            "docs": wrap(train_paras),
            "logs": _log_lines(random.Random(3001), 400_000).encode(),
        },
        {
            "pkg": _cap("".join(code[True]).encode()),
            "docs": _cap(wrap(dict.fromkeys(held_paras))),
            "logs": _log_lines(random.Random(4002), 20_000).encode(),
        },
    )


SECOND_CONFIG = dict(
    CONFIG, hidden_size=96, intermediate_size=256, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2
)
_FT2 = dict(parent="base", steps=200, batch=16, lr=1e-3, sched="linear", replay=0.25)
SECOND_RECIPE = {
    "base": dict(parent=None, init_seed=100, data="mix", steps=400, batch=32, lr=3e-3, sched="cosine", seed=110),
    "sibling_base": dict(parent="base", data="mix", steps=200, batch=32, lr=5e-4, sched="cosine", seed=112),
    "pkg": dict(_FT2, data="pkg", seed=120),
    "docs": dict(_FT2, data="docs", seed=121),
    "logs": dict(_FT2, data="logs", seed=122),
    # Soup ingredients: the `pkg` recipe with other data-order seeds only (the demo's vary the LR too).
    "pkg_b": dict(_FT2, data="pkg", seed=126),
    "pkg_c": dict(_FT2, data="pkg", seed=125),
    "sib_pkg": dict(_FT2, parent="sibling_base", data="pkg", seed=130),
    "sib_docs": dict(_FT2, parent="sibling_base", data="docs", seed=131),
    "sib_logs": dict(_FT2, parent="sibling_base", data="logs", seed=132),
}
SECOND_DESCRIPTIONS = {
    "base": "The second family's base, trained from scratch (init seed 100) on a uniform mixture of the code of "
    "standard-library packages and their docstrings (not on the third domain, a generated server log).",
    "sibling_base": "A sibling of `base` (a 'v2'): its pre-training continued on the same mixture at a low LR.",
    "pkg": "A fine-tune of `base` on the code of standard-library packages.",
    "docs": "A fine-tune of `base` on docstrings of standard-library packages.",
    "logs": "A fine-tune of `base` on a generated server log.",
    "pkg_b": "A soup ingredient: the `pkg` recipe with another data-order seed.",
    "pkg_c": "A soup ingredient: the `pkg` recipe with a third data-order seed.",
    "sib_pkg": "A fine-tune of `sibling_base` (not `base`!) with the recipe of `pkg`.",
    "sib_docs": "A fine-tune of `sibling_base` (not `base`!) with the recipe of `docs`.",
    "sib_logs": "A fine-tune of `sibling_base` (not `base`!) with the recipe of `logs`.",
}


@dataclass(frozen=True)
class Family:
    """What `--family` selects: architecture, recipes, data and the roles the report needs."""

    namespace: str
    config: dict
    recipe: dict
    descriptions: dict
    domains: tuple
    corpora: Callable[[], tuple[dict[str, bytes], dict[str, bytes]]]
    members: list  # display order
    soup: tuple  # same base, same task, other seeds / LR
    siblings: tuple  # fine-tunes of `sibling_base`
    mix: tuple | None = None  # the pre-training mixture's domains (default: all)


FAMILIES = {
    "demo": Family(NAMESPACE, CONFIG, RECIPE, DESCRIPTIONS, DOMAINS, corpora, MEMBERS, SOUP, SIBLINGS),
    "second": Family(
        "mergescope-demo2",
        SECOND_CONFIG,
        SECOND_RECIPE,
        SECOND_DESCRIPTIONS,
        SECOND_DOMAINS,
        second_corpora,
        list(SECOND_RECIPE),
        ("pkg", "pkg_b", "pkg_c"),
        ("sib_pkg", "sib_docs", "sib_logs"),
        mix=("pkg", "docs"),  # logs: a domain new to the base
    ),
}


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


class Sampler:
    """Random windows of SEQ+1 bytes. data "mix": each row picks a domain of the mixture (`mix`, default all
    domains) uniformly; data "<domain>": each row is from that domain, except that with probability `replay`
    it picks a mixture domain uniformly (a little replay of the base's mixture keeps a fine-tune from
    forgetting everything else)."""

    def __init__(self, train: dict[str, bytes], data: str, seed: int, replay: float = 0.0, domains=DOMAINS, mix=None):
        self.domains = list(domains)
        self.mix = list(mix or domains)
        self.ids = {d: encode(train[d]) for d in self.domains}
        self.target = None if data == "mix" else data
        self.replay = 1.0 if data == "mix" else replay
        self.g = torch.Generator().manual_seed(seed)

    def batch(self, b: int) -> torch.Tensor:
        rows = []
        mixed = (torch.rand(b, generator=self.g) < self.replay).tolist()
        dom = torch.randint(len(self.mix), (b,), generator=self.g).tolist()
        for mix, k in zip(mixed, dom):
            ids = self.ids[self.mix[k] if mix else self.target]
            s = int(torch.randint(ids.numel() - SEQ - 1, (1,), generator=self.g))
            rows.append(ids[s : s + SEQ + 1])
        return torch.stack(rows)


def train(model: LlamaLM, sampler: Sampler, steps: int, batch: int, lr: float, sched: str) -> float:
    params = [p for p in model.parameters()]
    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    wd = 0.05 if sched == "cosine" else 0.0
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=ADAM_EPS,
    )
    warmup = max(1, min(50, steps // 10))
    model.train()
    ema = None
    for step in range(steps):
        if step < warmup:
            f = (step + 1) / warmup
        elif sched == "cosine":  # to 10 % of the peak
            f = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        elif sched == "linear":  # to 0
            f = 1.0 - (step - warmup) / max(1, steps - warmup)
        else:
            f = 1.0
        for gr in opt.param_groups:
            gr["lr"] = lr * f
        x = sampler.batch(batch)
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
    model.eval()
    return ema


def train_one(
    out: str, name: str, threads: int, train_text: dict[str, bytes], family: str = "demo"
) -> tuple[str, float, float]:
    """Train and save one family member (its parent must already be saved). Runs in a worker process."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    fs = FAMILIES[family]
    fam = Path(out) / "family"
    r = fs.recipe[name]
    if r["parent"] is None:
        model = LlamaLM(LlamaConfig(**fs.config)).init_weights(r["init_seed"])
        base_model = None
    else:
        model = load_model(fam / r["parent"])  # bf16 as stored -> float32
        base_model = f"{fs.namespace}/{r['parent']}"
    torch.manual_seed(r["seed"])
    loss = train(
        model,
        Sampler(train_text, r["data"], r["seed"], r.get("replay", 0.0), fs.domains, fs.mix),
        r["steps"],
        r["batch"],
        r["lr"],
        r["sched"],
    )
    data = f"uniform mixture of {' / '.join(fs.mix or fs.domains)}" if r["data"] == "mix" else r["data"]
    if r.get("replay"):
        data += f", with {r['replay']:.0%} of rows replayed from the uniform mixture"
    how = (
        f"Trained with `scripts/train_demo_family.py`: {r['steps']} steps of AdamW, batch "
        f"{r['batch']} x {SEQ} bytes, peak LR {r['lr']:g} ({r['sched']} schedule), data: {data}."
    )
    save_model(
        model,
        fam / name,
        name=f"{fs.namespace}/{name}",
        base_model=base_model,
        description=fs.descriptions[name] + "\n\n" + how,
    )
    return name, loss, time.perf_counter() - t0


def build_family(
    out: Path, names: list[str], jobs: int, threads: int, train_text: dict[str, bytes], log=print, family: str = "demo"
) -> None:
    """Train `names` in dependency order, up to `jobs` models at a time (one process each)."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    RECIPE = FAMILIES[family].recipe  # noqa: N806
    todo = [n for n in RECIPE if n in names]
    done = {n for n in RECIPE if n not in names}
    running = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        while todo or running:
            for n in list(todo):
                parent = RECIPE[n]["parent"]
                if len(running) < jobs and (parent is None or parent in done):
                    running[pool.submit(train_one, str(out), n, threads, train_text, family)] = n
                    todo.remove(n)
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in finished:
                n = running.pop(f)
                name, loss, secs = f.result()
                done.add(n)
                r = RECIPE[n]
                log(f"  {name:12s} {r['steps']:5d} steps  final loss {loss:.3f}  {secs:6.1f}s")


# --------------------------------------------------------------------------------------------
# Metrics and inline merges (a self-contained check, independent of analysis/metrics.py)
# --------------------------------------------------------------------------------------------


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    ck = open_checkpoint(path)
    try:
        return {n: ck.get(n).float().clone() for n in ck.names()}
    finally:
        ck.close()


def in_memory(label: str, tensors: dict[str, torch.Tensor], like: Path) -> Model:
    """A merge held in memory, stored as bf16 like every family member (config and tokenizer of `like`)."""
    config = json.loads((like / "config.json").read_text())
    return Model(label, {n: v.to(torch.bfloat16) for n, v in tensors.items()}, config, like)


def heldout_bpb(
    models: dict[str, Path | Model], held: dict[str, bytes], domains=DOMAINS
) -> dict[str, dict[str, float]]:
    """`{label: {domain: bits per byte}}` on the held-out texts (lower is better)."""
    refs = [m if isinstance(m, Model) else str(m) for m in models.values()]
    res = score_models(refs, {d: held[d] for d in domains})
    keys = [m.label if isinstance(m, Model) else str(m) for m in models.values()]
    return {label: {d: res[k][d].value for d in domains} for label, k in zip(models, keys)}


def uniform_soup(fam: Path, names) -> dict[str, torch.Tensor]:
    """The plain weight average of the stored (bf16) weights of `names`, in float32."""
    ts = [load_tensors(fam / n) for n in names]
    return {k: sum(t[k] for t in ts) / len(ts) for k in ts[0]}


def _dot(a: dict, b: dict) -> float:
    return sum(float((a[n].double() * b[n].double()).sum()) for n in a)


def model_metrics(fam: Path, names: list[str]) -> tuple[dict, dict]:
    base = load_tensors(fam / "base")
    bn = math.sqrt(_dot(base, base))
    taus, summary = {}, {}
    for m in names:
        th = load_tensors(fam / m)
        tau = {n: th[n] - base[n] for n in base}
        tn = math.sqrt(_dot(tau, tau))
        summary[m] = {"relative_norm": tn / bn, "cosine_to_base": _dot(th, base) / (math.sqrt(_dot(th, th)) * bn)}
        taus[m] = (tau, tn)
    pair = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            (ta, na), (tb, nb) = taus[a], taus[b]
            pair[(a, b)] = _dot(ta, tb) / (na * nb) if na and nb else 0.0
    return summary, pair


def task_arithmetic(base: dict, fts: list[dict], weights: list[float]) -> dict:
    return {n: base[n] + sum(w * (ft[n] - base[n]) for ft, w in zip(fts, weights)) for n in base}


def ties(base: dict, fts: list[dict], weights: list[float], density: float = 0.2) -> dict:
    """TIES (mergekit semantics: trim to int(density*n) magnitudes, elect sign by weighted sum, normalize)."""
    out = {}
    for n in base:
        deltas = []
        for ft, w in zip(fts, weights):
            d = (ft[n] - base[n]).flatten()
            k = int(density * d.numel())
            keep = torch.zeros_like(d, dtype=torch.bool)
            if k > 0:
                keep[d.abs().topk(k).indices] = True
            deltas.append(torch.where(keep, d, torch.zeros_like(d)) * w)
        st = torch.stack(deltas)
        sign = torch.where(st.sum(0) >= 0, 1.0, -1.0)
        agree = (torch.sign(st) == sign) & (st != 0)
        wsum = (torch.tensor(weights)[:, None] * agree).sum(0)
        merged = (st * agree).sum(0) / torch.where(wsum == 0, torch.ones_like(wsum), wsum)
        out[n] = base[n] + merged.view(base[n].shape)
    return out


def merge_report(fam: Path, held: dict[str, bytes], log=print) -> dict:
    base = load_tensors(fam / "base")
    fts = {d: load_tensors(fam / d) for d in DOMAINS}
    merges = {
        "TA code+prose 1.0/1.0": task_arithmetic(base, [fts["code"], fts["prose"]], [1.0, 1.0]),
        "TA code+prose 0.5/0.5": task_arithmetic(base, [fts["code"], fts["prose"]], [0.5, 0.5]),
        "TA code+prose 0.7/0.7": task_arithmetic(base, [fts["code"], fts["prose"]], [0.7, 0.7]),
        "TIES code+prose d0.5 w1": ties(base, [fts["code"], fts["prose"]], [1.0, 1.0], 0.5),
        "TA all three 0.5 each": task_arithmetic(base, [fts[d] for d in DOMAINS], [0.5] * 3),
        "TA all three 1.0 each": task_arithmetic(base, [fts[d] for d in DOMAINS], [1.0] * 3),
        "TIES all three d0.5 w1": ties(base, [fts[d] for d in DOMAINS], [1.0] * 3, 0.5),
    }
    return heldout_bpb({label: in_memory(label, t, fam / "base") for label, t in merges.items()}, held)


def fmt_table(rows: dict[str, dict[str, float]], cols, width=8, prec=3) -> str:
    first = max(len(r) for r in rows) + 2
    lines = [" " * first + "".join(f"{c:>{width}s}" for c in cols)]
    for r, vals in rows.items():
        lines.append(f"{r:<{first}s}" + "".join(f"{vals[c]:>{width}.{prec}f}" for c in cols))
    return "\n".join(lines)


def sibling_report(fs: Family, fam: Path, held: dict[str, bytes], bpb: dict, summary: dict, check) -> None:
    """Two fine-tunes of `sibling_base` merged against `base` (the wrong base: their task vectors carry the
    base offset) and against `sibling_base` (theirs), and linearly (weights sum to 1: no base involved)."""
    a, b = fs.siblings[:2]
    da, db = fs.recipe[a]["data"], fs.recipe[b]["data"]
    base, sib = load_tensors(fam / "base"), load_tensors(fam / "sibling_base")
    fts = [load_tensors(fam / a), load_tensors(fam / b)]
    merges = {}
    for w in (1.0, 0.7):
        merges[f"TA {a}+{b} {w}/{w} vs base"] = task_arithmetic(base, fts, [w, w])
        merges[f"TA {a}+{b} {w}/{w} vs sibling_base"] = task_arithmetic(sib, fts, [w, w])
    merges[f"linear {a}+{b} 0.5/0.5"] = {n: 0.5 * (fts[0][n] + fts[1][n]) for n in base}
    res = heldout_bpb({k: in_memory(k, v, fam / "base") for k, v in merges.items()}, held, fs.domains)
    print("\nfine-tunes of sibling_base merged against base (wrong) and sibling_base (theirs) (bits per byte):")
    print(fmt_table({**{n: bpb[n] for n in ("base", "sibling_base", *fs.siblings)}, **res}, fs.domains))

    rel = summary["sibling_base"]["relative_norm"]
    check(0.02 <= rel <= 0.08, f"sibling_base is a few percent away from base: relative norm {rel:.4f}")
    for n in fs.siblings:
        d = fs.recipe[n]["data"]
        check(
            bpb[n][d] < bpb["sibling_base"][d] - 0.04,
            f"{n} beats sibling_base on {d}: {bpb[n][d]:.3f} vs {bpb['sibling_base'][d]:.3f} bits per byte",
        )
    wrong, right = res[f"TA {a}+{b} 1.0/1.0 vs base"], res[f"TA {a}+{b} 1.0/1.0 vs sibling_base"]
    check(
        wrong[da] > right[da] + 0.05 and wrong[db] > right[db] + 0.05,
        f"TA {a}+{b} 1.0/1.0 suffers from the wrong base: {da} {wrong[da]:.3f} vs {right[da]:.3f}, "
        f"{db} {wrong[db]:.3f} vs {right[db]:.3f} bits per byte against base vs sibling_base",
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--family",
        choices=list(FAMILIES),
        default="demo",
        help="demo: the family shipped in analysis/demo; second: another size and data (needs --out)",
    )
    ap.add_argument("--out", type=Path, default=None, help="default: analysis/demo (the demo family only)")
    ap.add_argument("--jobs", type=int, default=2, help="models trained in parallel (one process each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per job (fixed, for reproducibility)")
    ap.add_argument(
        "--models",
        "--only",
        nargs="+",
        default=None,
        help="train only these (default: all of the family); members not named, parents included, are "
        "loaded from --out",
    )
    ap.add_argument("--write-heldout", action="store_true", help="(re)write heldout/*.txt from this Python")
    ap.add_argument("--report-only", action="store_true", help="skip training; report on an existing family")
    ap.add_argument("--no-report", action="store_true", help="train, then stop (no held-out scores or checks)")
    args = ap.parse_args(argv)
    fs = FAMILIES[args.family]
    if args.out is None:
        if args.family != "demo":
            ap.error(f"--family {args.family} is not shipped: give --out DIR")
        args.out = ROOT / "analysis" / "demo"
    models = args.models or list(fs.recipe)
    unknown = [m for m in models if m not in fs.recipe]
    if unknown:
        ap.error(f"--models: {', '.join(unknown)} not in the {args.family} family ({', '.join(fs.recipe)})")
    domains = fs.domains

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    random.seed(0)
    torch.manual_seed(0)

    train_text, held_new = fs.corpora()
    hdir = args.out / "heldout"
    hdir.mkdir(parents=True, exist_ok=True)
    for d in domains:
        if args.write_heldout or not (hdir / f"{d}.txt").is_file():
            (hdir / f"{d}.txt").write_bytes(held_new[d])
    held = load_texts(hdir)
    # Guard against train/held-out overlap (e.g. a held-out file from another Python version).
    for d in domains:
        h = held[d]
        probes = [h[i : i + 200] for i in range(0, max(1, len(h) - 200), 997)]
        hits = sum(1 for p in probes if p in train_text[d])
        if hits:
            print(
                f"warning: {hits}/{len(probes)} 200-byte held-out {d} probes occur in the training text",
                file=sys.stderr,
            )
    print(
        "training text:",
        ", ".join(f"{d} {len(train_text[d]) / 1e3:.0f} KB" for d in domains),
        "| held-out:",
        ", ".join(f"{d} {len(held[d]) / 1e3:.1f} KB" for d in domains),
    )

    fam = args.out / "family"
    t0 = time.perf_counter()
    if not args.report_only:
        print(f"training ({args.jobs} jobs x {args.threads} thread):")
        build_family(args.out, models, args.jobs, args.threads, train_text, family=args.family)
    train_s = time.perf_counter() - t0
    if args.no_report:
        print(f"\ntraining {train_s:.0f}s")
        return 0

    names = list(fs.members)
    t1 = time.perf_counter()
    bpb = heldout_bpb({n: fam / n for n in names}, held, domains)
    eval_s = time.perf_counter() - t1
    print(f"\nheld-out bits per byte (context {fs.config['max_position_embeddings']}, no overlap; eval {eval_s:.1f}s):")
    print(fmt_table(bpb, domains))

    summary, pair = model_metrics(fam, [n for n in names if n != "base"])
    print("\ntask vectors vs base (whole model, from the stored bf16 values):")
    print(fmt_table(summary, ["relative_norm", "cosine_to_base"], width=16, prec=4))
    print("\npairwise task-vector cosines:")
    for (a, b), v in pair.items():
        print(f"  {a:>12s} . {b:<12s} {v:+.4f}")

    task_ft = [n for n in names if fs.recipe[n]["parent"] == "base" and fs.recipe[n]["data"] in domains]
    if args.family == "demo":
        merges_bpb = merge_report(fam, held)
        print("\ninline merges of the domain fine-tunes (held-out bits per byte):")
        print(fmt_table({**{d: bpb[d] for d in ("base",) + DOMAINS}, **merges_bpb}, DOMAINS))
        task_ft = list(DOMAINS)

    soup_d = fs.recipe[fs.soup[0]]["data"]
    soup_label = "uniform soup " + "+".join(fs.soup)
    soup_model = in_memory(soup_label, uniform_soup(fam, fs.soup), fam / "base")
    soup = heldout_bpb({soup_label: soup_model}, held, domains)[soup_label]
    print("\nsoup ingredients (same base, same task, other seeds / LR) and their uniform soup (bits per byte):")
    print(fmt_table({**{n: bpb[n] for n in ("base", *fs.soup)}, soup_label: soup}, domains))

    # The checks below were set on perplexity per byte (= 2 ** bits per byte): keep them as they were.
    ppl = {m: {d: 2**v for d, v in row.items()} for m, row in bpb.items()}

    print("\nchecks:")
    ok = True

    def check(cond: bool, msg: str) -> None:
        nonlocal ok
        ok &= cond
        print(f"  [{'ok' if cond else 'FAIL'}] {msg}")

    for n in task_ft:
        d = fs.recipe[n]["data"]
        check(
            ppl[n][d] < 0.97 * ppl["base"][d],
            f"{n} fine-tune beats base on {d}: {ppl[n][d]:.3f} vs {ppl['base'][d]:.3f}",
        )
    if args.family == "demo":
        merges = {m: {d: 2**v for d, v in row.items()} for m, row in merges_bpb.items()}
        for label in ("TA code+prose 0.7/0.7", "TIES code+prose d0.5 w1"):
            m = merges[label]
            check(
                m["code"] < ppl["prose"]["code"] and m["prose"] < ppl["code"]["prose"],
                f"{label} beats each fine-tune on the other domain: code {m['code']:.3f} < "
                f"{ppl['prose']['code']:.3f}, prose {m['prose']:.3f} < {ppl['code']['prose']:.3f}",
            )
            check(
                m["code"] < 1.08 * ppl["code"]["code"] and m["prose"] < 1.08 * ppl["prose"]["prose"],
                f"{label} stays close on its own domains: code {m['code'] / ppl['code']['code'] - 1:+.1%}, "
                f"prose {m['prose'] / ppl['prose']['prose'] - 1:+.1%}",
            )
    lead = fs.soup[0]
    for n in fs.soup[1:]:
        check(
            ppl[n][soup_d] < 0.97 * ppl["base"][soup_d] and bpb[n][soup_d] < bpb[lead][soup_d] + 0.05,
            f"soup ingredient {n} beats base on {soup_d} and is close to `{lead}`: {bpb[n][soup_d]:.4f} vs base "
            f"{bpb['base'][soup_d]:.4f}, {lead} {bpb[lead][soup_d]:.4f} bits per byte",
        )
    best = min(fs.soup, key=lambda n: bpb[n][soup_d])
    check(
        soup[soup_d] <= bpb[best][soup_d],
        f"the uniform soup of {', '.join(fs.soup)} scores at least as well on {soup_d} as the best single one "
        f"({best}): {soup[soup_d]:.4f} vs {bpb[best][soup_d]:.4f} bits per byte",
    )
    if args.family == "demo":
        true_ft = [summary[d] for d in DOMAINS]
        check(
            summary["other_ft"]["cosine_to_base"] < min(t["cosine_to_base"] for t in true_ft) - 0.3,
            f"other_ft cosine to base {summary['other_ft']['cosine_to_base']:.3f} far below the fine-tunes' "
            f"(min {min(t['cosine_to_base'] for t in true_ft):.4f})",
        )
        check(
            summary["overtrained"]["relative_norm"] > 4 * max(t["relative_norm"] for t in true_ft),
            f"overtrained relative norm {summary['overtrained']['relative_norm']:.3f} >> fine-tunes' "
            f"(max {max(t['relative_norm'] for t in true_ft):.3f})",
        )
    sibling_report(fs, fam, held, bpb, summary, check)

    digest = hashlib.sha256()
    for n in names:
        digest.update((fam / n / "model.safetensors").read_bytes())
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"\ntraining {train_s:.0f}s, family weights sha256 {digest.hexdigest()[:16]}, {args.out} {size / 1e6:.2f} MB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
