"""The cases of tests/test_mergekit_suite.py: one per mergekit test that builds a merge configuration
(its tests/test_basic_merges.py, test_tokenizer.py, test_chat_template.py), as YAML-ready dicts with the
checks that mergekit's test makes on its output and the explanation of any expected difference."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tests import suite_models as sm
from tests.mergekit_utils import load_dir

EMBEDS = ("model.embed_tokens.weight", "lm_head.weight")
LAYOUTS = ("legacy", "v5")


# ------------------------------------------------------------------------------------ mergekit's checks
def _vocab(d: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d)).get_vocab()


def check_tokenizer(size: int, added: int | None = None, must: tuple = (), must_not: tuple = ()) -> Callable:
    """mergekit's `check_tokenizer`: vocabulary size, added-token count, tokens present / absent."""

    def _check(d: Path, models=None) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(d))
        vocab = tok.get_vocab()
        assert len(vocab) == size, f"{d.name}: {len(vocab)} tokens, expected {size}"
        if added is not None:
            assert len(tok.added_tokens_decoder) == added, f"{d.name}: {dict(tok.added_tokens_decoder)}"
        assert all(t in vocab for t in must), [t for t in must if t not in vocab]
        assert not any(t in vocab for t in must_not), [t for t in must_not if t in vocab]

    return _check


def embedding(d: Path, token: str | None = None, index: int | None = None) -> torch.Tensor:
    """A token's embedding row (mergekit's `ModelEmbeddings.token_embedding`), by string or by id."""
    rows = load_dir(d)["model.embed_tokens.weight"]
    return rows[_vocab(d)[token] if token is not None else index]


@dataclass(frozen=True)
class Case:
    port: str  # the mergekit test it ports (file::class::test)
    config: dict  # the YAML; "@name" strings are the suite's models
    kind: str = "exact"  # exact | random | refused | tokens (vocabulary merged: compare by token)
    validate: tuple = ()  # mergekit's validation callables: f(output dir, models)
    copy_tokenizer: bool = False  # the test needs the tokenizer mergekit copies by default
    explain: str | None = None  # an understood difference allowed where the outputs differ (see EXPLAIN)
    refusal: tuple[str, str] = ("", "")  # kind "refused": how mergekit's and our errors start


@dataclass
class Outcome:
    case: Case
    plan: Path
    mk: Path
    ms: Path
    mk_error: str | None = None
    ms_error: str | None = None
    ms_refusal: str | None = None  # the readiness refusal before `force_incompatible`
    ms_warnings: list = field(default_factory=list)


# ------------------------------------------------------------------------------------ the cases
def two_models(a: str, b: str, method: str, base: str | None = None, params: dict | None = None) -> dict:
    """mergekit's `two_model_config`: weights 0.6 / 0.4 on every model, bfloat16."""
    cfg: dict = {"merge_method": method}
    if base:
        cfg["base_model"] = base
    cfg["models"] = [{"model": a, "parameters": {"weight": 0.6}}, {"model": b, "parameters": {"weight": 0.4}}]
    cfg["dtype"] = "bfloat16"
    if params is not None:
        cfg["parameters"] = params
    return cfg


def with_weights(cfg: dict, *weights: float) -> dict:
    cfg = copy.deepcopy(cfg)
    for m, w in zip(cfg["models"], weights):
        m["parameters"]["weight"] = w
    return cfg


def nuslerp_cases(a: str, b: str, c: str, port: str) -> dict[str, Case]:
    """mergekit's nuslerp loop (base none / c, row-wise, flatten) and its weights-summing-to-zero case."""
    out = {}
    for base in (None, c):
        for row_wise in (False, True):
            for flatten in (False, True):
                params = {"nuslerp_row_wise": row_wise, "nuslerp_flatten": flatten}
                key = f"base={'c' if base else 'none'},row_wise={row_wise},flatten={flatten}"
                explain = "flat_cosine" if flatten else None
                out[f"nuslerp[{key}]"] = Case(port, two_models(a, b, "nuslerp", base, params), explain=explain)
    zero = two_models(a, b, "nuslerp", c, {"nuslerp_row_wise": False, "nuslerp_flatten": False})
    out["nuslerp[weights_sum_to_zero]"] = Case(port, with_weights(zero, -0.5, 0.5))
    return out


def _gpt2_layers(d: Path, models) -> None:
    n = json.loads((d / "config.json").read_text())["n_layer"]
    assert n == 2 * sm.GPT2_LAYERS, f"n_layer {n}"


def _o_proj_zeroed(d: Path, models) -> None:
    sd = load_dir(d)
    o = [k for k in sd if "o_proj" in k]
    assert o, "No o_proj parameters found"
    assert all((sd[k] == 0).all() for k in o)
    assert all(sd[k].count_nonzero() > 0 for k in sd if "lm_head" in k)


BASIC = "test_basic_merges.py::TestBasicMerges::"
GRANITE = "test_basic_merges.py::TestGraniteMerges::"


def basic_cases() -> dict[str, Case]:
    a, b, c = "@model_a", "@model_b", "@model_c"
    ga, gb = "@granite_a", "@granite_b"
    cases = {
        "granite_copy": Case(
            GRANITE + "test_granite_copy",
            {"merge_method": "passthrough", "models": [{"model": ga}], "dtype": "bfloat16"},
        ),
        "granite_linear": Case(
            GRANITE + "test_granite_linear_merge",
            {
                "merge_method": "linear",
                "models": [{"model": ga, "parameters": {"weight": 0.6}}, {"model": gb, "parameters": {"weight": 0.4}}],
                "dtype": "bfloat16",
            },
        ),
        "granite_slerp": Case(
            GRANITE + "test_granite_slerp",
            {
                "merge_method": "slerp",
                "base_model": ga,
                "models": [{"model": ga}, {"model": gb}],
                "parameters": {"t": 0.5},
                "dtype": "bfloat16",
            },
        ),
        "gpt2_copy": Case(
            BASIC + "test_gpt2_copy",
            {"merge_method": "passthrough", "models": [{"model": "@gpt2"}], "dtype": "bfloat16"},
        ),
        "gpt2_stack": Case(
            BASIC + "test_gpt2_stack",
            {
                "merge_method": "passthrough",
                "slices": [{"sources": [{"model": "@gpt2", "layer_range": [0, sm.GPT2_LAYERS]}]}] * 2,
                "dtype": "bfloat16",
            },
            validate=(_gpt2_layers,),
        ),
        "passthrough_scale": Case(
            BASIC + "test_passthrough_scale",
            {
                "merge_method": "passthrough",
                "models": [
                    {"model": a, "parameters": {"scale": [{"filter": "o_proj", "value": 0}, {"value": 1}]}},
                ],
            },
            validate=(_o_proj_zeroed,),
        ),
        "linear": Case(BASIC + "test_linear_merge", two_models(a, b, "linear")),
        "slerp": Case(BASIC + "test_slerp_merge", two_models(a, b, "slerp", a, {"t": 0.35})),
        **nuslerp_cases(a, b, c, BASIC + "test_nuslerp_merges"),
        "task_arithmetic": Case(BASIC + "test_task_arithmetic_merge", two_models(a, b, "task_arithmetic", c)),
        "breadcrumbs": Case(BASIC + "test_breadcrumbs_merge", two_models(a, b, "breadcrumbs", c)),
        "ties": Case(BASIC + "test_ties_merge", two_models(a, b, "ties", c, {"density": 0.3}), explain="trim_ties"),
        "sce": Case(BASIC + "test_sce_merge", two_models(a, b, "sce", c, {"select_topk": 0.5})),
        "ram": Case(BASIC + "test_ram_merge", two_models(a, b, "ram", c)),
        "ramplus_tl": Case(
            BASIC + "test_ramplus_tl_merge",
            two_models(a, b, "ramplus_tl", c, {"r": 0.05, "alpha": 1.0}),
            explain="float32_out",
        ),
        "multislerp": Case(BASIC + "test_multislerp_merge", two_models(a, b, "multislerp", c)),
        "dare_ties": Case(
            BASIC + "test_dare_ties_merge", two_models(a, b, "dare_ties", c, {"density": 0.66}), kind="random"
        ),
        "model_stock": Case(BASIC + "test_model_stock_merge", two_models(b, c, "model_stock", a), explain="stock_t"),
        "model_stock_filterwise": Case(
            BASIC + "test_model_stock_filterwise_merge", two_models(b, c, "model_stock", a, {"filter_wise": True})
        ),
        "arcee_fusion": Case(
            BASIC + "test_arcee_fusion_merge", two_models(a, b, "arcee_fusion", a), explain="float32_out"
        ),
        "nearswap": Case(BASIC + "test_nearswap_merge", two_models(a, b, "nearswap", a, {"t": 0.0001})),
        "della": Case(
            BASIC + "test_della_merge",
            two_models(a, b, "della", c, {"density": 0.66, "epsilon": 0.05, "lambda": 0.5}),
            kind="random",
        ),
        "della_invalid_epsilon": Case(
            BASIC + "test_della_invalid_epsilon",
            two_models(a, b, "della", c, {"density": 0.66, "epsilon": 1.35, "lambda": 0.5}),
            kind="refused",
            refusal=("ValueError", "InputError"),
        ),
        "karcher": Case(BASIC + "test_karcher_merge", two_models(a, b, "karcher", c, {"max_iter": 5, "tol": 1e-5})),
    }
    return cases


def vlm_cases(layout: str) -> dict[str, Case]:
    """mergekit's *_VLM_merge tests, on LLaVA checkpoints saved in `layout`."""
    a, b, c = (f"@vlm_{x}_{layout}" for x in "abc")
    cases = {
        "linear": Case(BASIC + "test_linear_VLM_merge", two_models(a, b, "linear")),
        "slerp": Case(BASIC + "test_slerp_VLM_merge", two_models(a, b, "slerp", a, {"t": 0.35})),
        **nuslerp_cases(a, b, c, BASIC + "test_nuslerp_VLM_merges"),
        "task_arithmetic": Case(BASIC + "test_task_arithmetic_VLM_merge", two_models(a, b, "task_arithmetic", c)),
        "breadcrumbs": Case(BASIC + "test_breadcrumbs_VLM_merge", two_models(a, b, "breadcrumbs", c)),
        "ties": Case(BASIC + "test_ties_VLM_merge", two_models(a, b, "ties", c, {"density": 0.3}), explain="trim_ties"),
        "dare_ties": Case(
            BASIC + "test_dare_ties_VLM_merge", two_models(a, b, "dare_ties", c, {"density": 0.66}), kind="random"
        ),
        "model_stock": Case(
            BASIC + "test_model_stock_VLM_merge", two_models(b, c, "model_stock", a), explain="stock_t"
        ),
        "model_stock_filterwise": Case(
            BASIC + "test_model_stock_filterwise_VLM_merge", two_models(b, c, "model_stock", a, {"filter_wise": True})
        ),
    }
    return {f"vlm_{layout}_{k}": v for k, v in cases.items()}


def tokenizer_config(models: list[str], base: str, method: str = "linear", t=None, **extra) -> dict:
    """mergekit's `TestTokenizerMerges.make_config`: weight 1.0 on every model, float32."""
    cfg: dict = {"merge_method": method, "base_model": base}
    cfg["models"] = [{"model": m, "parameters": {"weight": 1.0}} for m in models]
    cfg["dtype"] = "float32"
    cfg.update(extra)
    if t is not None:
        cfg["parameters"] = {"t": t}
    return cfg


def _union_rows(d: Path, models) -> None:
    check_tokenizer(66, 5, ("<|im_start|>", "<|im_end|>"), tuple(f"<UNUSED_{i}>" for i in range(4)))(d)
    for tok, tol in (("<|im_start|>", {}), ("<|im_end|>", {"atol": 1e-3, "rtol": 1e-4})):
        assert torch.allclose(embedding(d, tok), embedding(models["tok_chatml"], tok), **tol), tok


def _forced_rows(d: Path, models) -> None:
    check_tokenizer(66, must=("<|im_start|>", "<|im_end|>"))(d)
    assert torch.allclose(embedding(d, "_tok_10"), embedding(models["tok_chatml"], "_tok_10"))
    assert torch.allclose(embedding(d, "_tok_11"), embedding(models["tok_base"], "_tok_11"))


def _model_token_rows(d: Path, models) -> None:
    check_tokenizer(64, must=("_tok_10",))(d)
    assert torch.allclose(embedding(d, "_tok_20"), embedding(models["tok_chatml"], index=64))
    assert torch.allclose(embedding(d, "_tok_21"), embedding(models["tok_base"], "<s>"))


PADDED = (66 // 16 + 1) * 16


def _padded(d: Path, models) -> None:
    assert json.loads((d / "config.json").read_text())["vocab_size"] == PADDED
    check_tokenizer(66, must=("<|im_start|>", "<|im_end|>"))(d)
    assert load_dir(d)["model.embed_tokens.weight"].shape[0] == PADDED


TOK = "test_tokenizer.py::TestTokenizerMerges::"
CHAT = "test_chat_template.py::TestChatTemplate::"


def tokenizer_cases() -> dict[str, Case]:
    base, padded, chatml = "@tok_base", "@tok_padded", "@tok_chatml"
    three = [base, padded, chatml]
    legacy_size = check_tokenizer(64, 3)

    def case(test, cfg, *validate, **kw) -> Case:
        return Case(TOK + test, cfg, kind=kw.pop("kind", "tokens"), validate=validate, copy_tokenizer=True, **kw)

    return {
        # mergekit 0.1.5 no longer merges differing vocabularies without a tokenizer setting (its own test
        # expects the base's 64 tokens); we refuse too, naming the fix
        "tokenizer_legacy_mode": case(
            "test_legacy_mode",
            tokenizer_config(three, base),
            legacy_size,
            kind="refused",
            refusal=("ValueError: Tensor size mismatch for lm_head.weight", "InputError"),
        ),
        "tokenizer_source_base": case(
            "test_source_base", tokenizer_config(three, base, tokenizer_source="base"), legacy_size
        ),
        "tokenizer_source_union": case(
            "test_source_union", tokenizer_config(three, base, tokenizer_source="union"), _union_rows
        ),
        "tokenizer_source_model": case(
            "test_source_model",
            tokenizer_config(three, base, tokenizer_source=chatml),
            check_tokenizer(66, must=("<|im_start|>", "<|im_end|>")),
        ),
        "tokenizer_slerp_union": case(
            "test_slerp_union",
            tokenizer_config([base, chatml], base, "slerp", t=0.5, tokenizer_source="union"),
            check_tokenizer(66, must=("<|im_start|>", "<|im_end|>")),
        ),
        "tokenizer_force_token": case(
            "test_force_token",
            tokenizer_config(
                [base, chatml],
                base,
                tokenizer={
                    "source": "union",
                    "tokens": {
                        "_tok_10": {"source": chatml, "force": True},
                        "_tok_11": {"source": base, "force": True},
                    },
                },
            ),
            _forced_rows,
        ),
        "tokenizer_model_token_id": case(
            "test_model_token_id",
            tokenizer_config(
                [base, chatml],
                base,
                tokenizer={
                    "source": "base",
                    "tokens": {
                        "_tok_20": {"source": {"kind": "model_token", "model": chatml, "token_id": 64}, "force": True},
                        "_tok_21": {"source": {"kind": "model_token", "model": base, "token": "<s>"}, "force": True},
                    },
                },
            ),
            _model_token_rows,
        ),
        "tokenizer_pad_to_multiple_of": case(
            "test_pad_to_multiple_of",
            tokenizer_config([chatml], chatml, tokenizer={"source": "base", "pad_to_multiple_of": 16}),
            _padded,
        ),
    }


def _chat_template(needle: str) -> Callable:
    def _check(d: Path, models) -> None:
        from transformers import AutoTokenizer

        tmpl = AutoTokenizer.from_pretrained(str(d)).chat_template
        assert tmpl and needle in tmpl, f"chat template {tmpl!r} lacks {needle!r}"

    return _check


def chat_cases() -> dict[str, Case]:
    def cfg(template: str) -> dict:
        return {
            "merge_method": "linear",
            "models": [
                {"model": "@tok_base", "parameters": {"weight": 0.5}},
                {"model": "@model_b", "parameters": {"weight": 0.5}},
            ],
            "base_model": "@tok_base",
            "dtype": "bfloat16",
            "chat_template": template,
        }

    literal = "{{messages[0]['content']}}"
    return {
        "chat_template_chatml": Case(
            CHAT + "test_template_chatml",
            cfg("chatml"),
            validate=(_chat_template("<|im_start|>"),),
            copy_tokenizer=True,
            explain="template_text",
        ),
        "chat_template_literal_jinja": Case(
            CHAT + "test_template_literal_jinja", cfg(literal), validate=(_chat_template(literal),), copy_tokenizer=True
        ),
    }


CASES: dict[str, Case] = {
    **basic_cases(),
    **vlm_cases("legacy"),
    **vlm_cases("v5"),
    **tokenizer_cases(),
    **chat_cases(),
}
