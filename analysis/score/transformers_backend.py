"""The transformers backend: any causal LM transformers can build, scored in bounded memory.

The model is built from the checkpoint's directory, or from the tensors in memory (a merge) with no
write to disk. Losses come from the model's base (`hf.base_model`: the decoder up to its final norm)
and its output head applied to a block of rows at a time (windows.head_nll), with what the model's own
forward does after the head (Gemma's `final_logit_softcapping`, Cohere's `logit_scale`, Granite's
`logits_scaling`); a short probe checks that this equals the model's own logits, and a model whose
forward does something else is scored from its own logits, in windows short enough that they fit the
activation budget. The KV cache is off: scoring never reuses it.
"""

from __future__ import annotations

from mergescope.score.llama import Unsupported
from mergescope.score.model import Model
from mergescope.score.windows import (
    ACTIVATIONS,
    BATCH_TOKENS,
    Prepared,
    head_nll,
    nll_from_logits,
    window_budget,
)

PROBE = 16  # tokens of the probe that checks the blocked head against the model's own logits


def _names(tensors) -> list[str]:
    return tensors.names() if hasattr(tensors, "names") else list(tensors)


def load_causal_lm(model: Model, device: str):
    """A transformers causal LM in float32 on `device`, from the model's directory or its tensors in
    memory; Unsupported (with the reason) when transformers is missing or cannot build it."""
    import torch

    try:
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    except ImportError:
        from mergescope.io.extras import install_hint

        raise Unsupported(f"the transformers backend needs transformers: {install_hint('eval')}") from None
    try:
        if model.path is not None and (model.path / "config.json").is_file():
            hf = AutoModelForCausalLM.from_pretrained(str(model.path), dtype=torch.float32)
        else:  # the tensors as they are (float32 ones shared, not copied); buffers and tying by transformers
            cfg = AutoConfig.for_model(**model.config)
            state = {k: model.tensors[k].to(torch.float32) for k in _names(model.tensors)}
            cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(cfg)]
            hf = cls.from_pretrained(None, config=cfg, state_dict=state, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise Unsupported(f"transformers cannot load it ({str(exc).splitlines()[0][:160]})") from None
    return hf.to(device).eval()


def check_available(model: Model) -> None:
    """Unsupported when transformers is not installed or does not know the model's type (checked before
    any text is tokenised)."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        from mergescope.io.extras import install_hint

        raise Unsupported(f"the transformers backend needs transformers: {install_hint('eval')}")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    kind = model.config.get("model_type")
    if kind not in CONFIG_MAPPING:
        raise Unsupported(f"transformers has no model_type {kind!r} (a newer transformers may)")


def _after_head(config):
    """What the model's forward does to the head's logits (float32 rows -> rows)."""
    import torch

    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)
    div = getattr(cfg, "logits_scaling", None)

    def post(logits):
        if isinstance(scale, (int, float)) and scale != 1:
            logits = logits * scale
        if isinstance(div, (int, float)) and div != 1:
            logits = logits / div
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return post


def prepare(model: Model, device: str) -> Prepared:
    import torch

    hf = load_causal_lm(model, device)
    cfg = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    ctx = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048)
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    eager = getattr(hf.config, "_attn_implementation", "sdpa") == "eager"
    base, head, post = getattr(hf, "base_model", None), hf.get_output_embeddings(), _after_head(hf.config)

    def project(rows):
        return post(head(rows).float())

    def hidden(ids):
        return base(input_ids=ids.to(device), use_cache=False)[0]

    def blocked(x):
        return head_nll(hidden(x[:, :-1]), x[:, 1:], project, vocab)

    def logits(ids):
        return hf(input_ids=ids.to(device), use_cache=False).logits

    with torch.no_grad():
        probe = (torch.arange(min(PROBE, ctx)) % max(vocab, 1))[None]
        want = logits(probe).float()
        try:
            got = project(hidden(probe)) if base is not None and base is not hf and head is not None else None
        except (TypeError, ValueError, RuntimeError):
            got = None
    same = got is not None and got.shape == want.shape
    same = same and bool(torch.allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(want.abs().max()))))
    window, batch = window_budget(model.config or cfg.to_dict(), ctx, eager)
    if same:
        return Prepared(blocked, ctx, window, batch, True)
    # the model's own logits: a window's [tokens, vocab] float32 logits and their log-softmax fit the budget
    longest = max(2, ACTIVATIONS // (8 * max(vocab, 1)))
    window = min(window, longest)
    return Prepared(nll_from_logits(logits), ctx, window, max(window, min(BATCH_TOKENS, longest)), False)
