"""The demo family's trainable model: a tiny Llama `nn.Module` whose forward is the built-in one
(llama.py), plus a byte tokenizer and save/load helpers.

Used to train the bundled demo family (`mergescope.demo`). Module and parameter names mirror HF Llama
exactly, so `state_dict()` keys are `model.embed_tokens.weight`,
`model.layers.{i}.self_attn.{q,k,v,o}_proj.weight`, `model.layers.{i}.mlp.{gate,up,down}_proj.weight`,
`model.layers.{i}.{input,post_attention}_layernorm.weight`, `model.norm.weight`, `lm_head.weight`, and
the saved checkpoints load in `transformers.LlamaForCausalLM`. No biases, plain RoPE.

The tokenizer is byte-level: token id == byte value (0..255), no special tokens, vocab_size 256.
`tokenizer_json()` describes the same mapping as a HF `tokenizers` BPE model with a ByteLevel
pre-tokenizer/decoder and no merges.

Importing this module imports torch only (never textual, never transformers).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

from mergescope.score.llama import LlamaShape, forward
from mergescope.score.tokens import bytes_to_unicode

__all__ = [
    "LlamaConfig",
    "LlamaLM",
    "ByteTokenizer",
    "encode",
    "decode",
    "tokenizer_json",
    "bytes_to_unicode",
    "load_model",
    "model_from_tensors",
    "save_model",
    "generate",
]


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass
class LlamaConfig:
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 176
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    torch_dtype: str = "bfloat16"
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    initializer_range: float = 0.02
    # Extra keys from config.json that we carry through untouched (e.g. `_name_or_path`).
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: Mapping) -> LlamaConfig:
        mt = d.get("model_type")
        if mt not in (None, "llama", "mistral"):
            raise ValueError(f"config.json has model_type {mt!r}; the built-in forward supports Llama only")
        if d.get("rope_scaling"):
            raise ValueError("config.json sets rope_scaling; the built-in forward supports plain RoPE only")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(
                f"config.json sets hidden_act {d.get('hidden_act')!r}; the built-in forward supports silu only"
            )
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise ValueError("config.json enables biases; the built-in forward supports bias-free Llama only")
        names = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: d[k] for k in names if k in d}
        if "torch_dtype" not in kw and isinstance(d.get("dtype"), str):
            kw["torch_dtype"] = d["dtype"]
        if kw.get("num_key_value_heads") is None:
            kw["num_key_value_heads"] = kw.get("num_attention_heads", cls.num_attention_heads)
        if d.get("head_dim") not in (
            None,
            kw.get("hidden_size", cls.hidden_size) // kw.get("num_attention_heads", cls.num_attention_heads),
        ):
            raise ValueError("config.json sets a head_dim other than hidden_size / num_attention_heads; unsupported")
        skip = names | {
            "model_type",
            "architectures",
            "dtype",
            "head_dim",
            "rope_scaling",
            "attention_bias",
            "mlp_bias",
            "transformers_version",
        }
        kw["extra"] = {k: v for k, v in d.items() if k not in skip}
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> LlamaConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        out = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
        out.update(self.extra)
        out.update(d)
        out.update(
            {
                "hidden_act": "silu",
                "attention_bias": False,
                "attention_dropout": 0.0,
                "mlp_bias": False,
                "head_dim": self.head_dim,
                "rope_scaling": None,
                "pretraining_tp": 1,
                "use_cache": True,
            }
        )
        return dict(sorted(out.items(), key=lambda kv: (kv[0] not in ("architectures", "model_type"), kv[0])))

    def to_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Model (module tree mirrors HF so parameter names match)
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        n_heads, n_kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        if n_heads % n_kv:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, n_heads * hd, bias=False)
        self.k_proj = nn.Linear(h, n_kv * hd, bias=False)
        self.v_proj = nn.Linear(h, n_kv * hd, bias=False)
        self.o_proj = nn.Linear(n_heads * hd, h, bias=False)


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class _Backbone(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaLM(nn.Module):
    """Llama causal LM: `forward(input_ids [B, T] long) -> logits [B, T, vocab] (float32)`."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = _Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.shape = LlamaShape.from_config(config.to_dict())

    def init_weights(self, seed: int, std: float | None = None) -> LlamaLM:
        """HF-style init (normal(0, std) for linears/embeddings, ones for norms) from a fixed seed."""
        std = self.config.initializer_range if std is None else std
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("layernorm.weight") or name == "model.norm.weight":
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * std)
        return self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab] (float32): the built-in forward (llama.py) on this module's parameters."""
        return forward(dict(self.named_parameters()), self.shape, input_ids, dtype=self.model.norm.weight.dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        """HF-named tensors (lm_head omitted when tied)."""
        sd = self.state_dict()
        if self.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
        return dict(sd)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# --------------------------------------------------------------------------------------------
# Byte tokenizer
# --------------------------------------------------------------------------------------------


def encode(text: str | bytes) -> torch.Tensor:
    """Token ids (int64) of `text`: its UTF-8 bytes, id == byte value."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long() if data else torch.zeros(0, dtype=torch.long)


def decode(ids) -> str:
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text: str | bytes) -> torch.Tensor:
        return encode(text)

    def decode(self, ids) -> str:
        return decode(ids)


def tokenizer_json() -> dict:
    """HF `tokenizer.json` for the byte tokenizer: BPE over the 256 byte-level characters, no merges.

    ByteLevel pre-tokenization maps byte b to `bytes_to_unicode()[b]`, and the vocab maps that
    character back to id b, so `Tokenizer.encode(s).ids == list(s.encode("utf-8"))`.
    """
    b2u = bytes_to_unicode()
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {b2u[b]: b for b in range(256)},
            "merges": [],
        },
    }


# --------------------------------------------------------------------------------------------
# Loading and saving
# --------------------------------------------------------------------------------------------


def model_from_tensors(
    config: LlamaConfig | Mapping, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> LlamaLM:
    """Build a model from HF-named tensors (e.g. a merge computed in memory); missing names raise."""
    cfg = config if isinstance(config, LlamaConfig) else LlamaConfig.from_dict(config)
    model = LlamaLM(cfg)
    expected = dict(model.named_parameters())  # a tied lm_head is not listed separately
    if "lm_head.weight" in expected and "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors:
        # Checkpoints that tie embeddings often omit lm_head; HF falls back to the embedding too.
        tensors = {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]}
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} tensor(s) the model needs, e.g. {missing[0]!r}")
    with torch.no_grad():
        for name, p in expected.items():
            src = tensors[name]
            if tuple(src.shape) != tuple(p.shape):
                raise ValueError(f"{name}: checkpoint shape {list(src.shape)} but config implies {list(p.shape)}")
            p.copy_(src.to(torch.float32))
    return model.to(dtype).eval()


def load_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> LlamaLM:
    """Load a (small) HF Llama checkpoint directory or file through `open_checkpoint`, in eval mode."""
    from mergescope.io.checkpoint import CheckpointError, open_checkpoint

    ck = open_checkpoint(path)
    try:
        if not ck.config:
            raise CheckpointError(f"{path}: no config.json next to the weights; cannot build the model")
        cfg = LlamaConfig.from_dict(ck.config)
        needed = set(ck.names())
        return model_from_tensors(cfg, {n: ck.get(n) for n in needed}, dtype=dtype)
    finally:
        ck.close()


_CARD = """---
{front}---

# {name}

{description}

Architecture: Llama ({layers} layers, hidden {hidden}, {heads} heads / {kv} KV heads, MLP {inter}),
{params:,} parameters, byte-level tokenizer (id = byte value, vocab 256), weights stored as bfloat16.
Part of the tiny demo family bundled with mergescope; loads with `transformers.LlamaForCausalLM` or
`analysis.tinylm.load_model`.
"""


def save_model(
    model: LlamaLM,
    directory: str | os.PathLike,
    *,
    name: str | None = None,
    base_model: str | None = None,
    description: str = "",
    dtype: torch.dtype = torch.bfloat16,
    card_extra: Mapping | None = None,
) -> Path:
    """Write `config.json`, `model.safetensors` (`dtype`, default bf16), `tokenizer.json` and a `README.md`
    model card (YAML front matter; `base_model:` when given) into `directory`. Returns the directory."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg = replace(model.config, torch_dtype=str(dtype).replace("torch.", ""), extra=dict(model.config.extra))
    if name:
        cfg.extra["_name_or_path"] = name
    cfg.to_json(out / "config.json")
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in sorted(model.tensors().items())}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "tokenizer.json").write_text(
        json.dumps(tokenizer_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    front = {
        "license": "mit",
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["mergescope-demo", "llama", "byte-level"],
    }
    if base_model:
        front["base_model"] = base_model
    if card_extra:
        front.update(card_extra)
    import yaml

    (out / "README.md").write_text(
        _CARD.format(
            front=yaml.safe_dump(front, sort_keys=False),
            name=name or out.name,
            description=description.strip(),
            layers=cfg.num_hidden_layers,
            hidden=cfg.hidden_size,
            heads=cfg.num_attention_heads,
            kv=cfg.num_key_value_heads,
            inter=cfg.intermediate_size,
            params=model.num_params,
        ),
        encoding="utf-8",
    )
    return out


@torch.no_grad()
def generate(
    model: LlamaLM, prompt: str | bytes, max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0
) -> str:
    """Sample a continuation (greedy when temperature == 0); recomputes the full context each step."""
    ids = encode(prompt)[None, :]
    g = torch.Generator().manual_seed(seed)
    limit = model.config.max_position_embeddings
    for _ in range(max_new_tokens):
        logits = model(ids[:, -limit:])[0, -1]
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=g))
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return decode(ids[0, len(encode(prompt)) :])
