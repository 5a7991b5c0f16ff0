"""Tiny checkpoints for tests: Llama-style HF directories, fine-tunes of them, and PEFT LoRA adapters.

All builders are deterministic (seeded), write real files (safetensors + config.json + a toy
tokenizer) and return the directory. Load tensors back with `load_state(dir)`.

    base = make_llama(tmp / "base", n_layers=4, hidden=16, vocab=32, dtype=torch.bfloat16, seed=0)
    ft = make_finetune(base, tmp / "ft1", scale=0.05, seed=1)
    lora = make_lora(base, tmp / "lora", rank=2, seed=2, targets=("q_proj", "v_proj"))
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LAYER_SHAPES = {  # name suffix -> shape in units of (hidden, intermediate)
    "input_layernorm.weight": ("h",),
    "self_attn.q_proj.weight": ("h", "h"),
    "self_attn.k_proj.weight": ("h", "h"),
    "self_attn.v_proj.weight": ("h", "h"),
    "self_attn.o_proj.weight": ("h", "h"),
    "post_attention_layernorm.weight": ("h",),
    "mlp.gate_proj.weight": ("i", "h"),
    "mlp.up_proj.weight": ("i", "h"),
    "mlp.down_proj.weight": ("h", "i"),
}


def llama_shapes(n_layers: int, hidden: int, vocab: int, tied: bool = False) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a tiny Llama (intermediate = 2 * hidden), in HF order."""
    dims = {"h": hidden, "i": 2 * hidden}
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(n_layers):
        for suffix, s in LAYER_SHAPES.items():
            shapes[f"model.layers.{i}.{suffix}"] = tuple(dims[x] for x in s)
    shapes["model.norm.weight"] = (hidden,)
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def write_state(
    d: str | Path, sd: dict[str, torch.Tensor], shards: int = 1, config: dict | None = None, tokenizer: bool = True
) -> Path:
    """Write a state dict as an HF directory: model.safetensors, or `shards` files plus the index."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (d / "config.json").write_text(json.dumps(config, indent=1))
    if tokenizer:
        write_tokenizer(d, (config or {}).get("vocab_size", 32))
    sd = {k: v.contiguous() for k, v in sd.items()}
    if shards <= 1:
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        return d
    names = list(sd)
    per = math.ceil(len(names) / shards)
    wm = {}
    total = 0
    for s in range(shards):
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: sd[n] for n in names[s * per : (s + 1) * per]}
        save_file(part, str(d / fn), metadata={"format": "pt"})
        wm.update({n: fn for n in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": wm}))
    return d


def write_tokenizer(d: Path, vocab: int) -> None:
    """A minimal word-level tokenizer.json + tokenizer_config.json (enough to be copied and compared)."""
    tok = {
        "version": "1.0",
        "model": {"type": "WordLevel", "vocab": {f"w{i}": i for i in range(vocab)}, "unk_token": "w0"},
        "added_tokens": [],
    }
    (d / "tokenizer.json").write_text(json.dumps(tok))
    (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))


def write_bpe_tokenizer(d: Path, text: str, bos: bool = False, vocab_size: int = 400) -> int:
    """A byte-level BPE tokenizer.json trained on `text` (merges happen; `bos` prepends <s>); its size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([text] * 4, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(Path(d) / "tokenizer.json"))
    return tok.get_vocab_size()


def llama_config(n_layers: int, hidden: int, vocab: int, dtype: torch.dtype, tied: bool = False) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "torch_dtype": str(dtype).replace("torch.", ""),
    }


def make_llama(
    d: str | Path,
    n_layers: int = 2,
    hidden: int = 16,
    vocab: int = 32,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    shards: int = 1,
    tied: bool = False,
) -> Path:
    """A random tiny Llama-style checkpoint directory (norm weights around 1, matrices ~ N(0, 0.02))."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in llama_shapes(n_layers, hidden, vocab, tied).items():
        if name.endswith("norm.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = 0.02 * torch.randn(shape, generator=g)
        sd[name] = t.to(dtype)
    return write_state(d, sd, shards, llama_config(n_layers, hidden, vocab, dtype, tied))


def load_state(d: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a directory written by these helpers (or by mergescope), in their stored dtype."""
    d = Path(d)
    if d.is_file():
        return load_file(str(d))
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def make_finetune(
    base_dir: str | Path,
    out_dir: str | Path,
    scale: float = 0.01,
    seed: int = 1,
    shards: int = 1,
    dtype: torch.dtype | None = None,
    only: Iterable[str] | None = None,
) -> Path:
    """base + scale * N(0, 1) on every tensor (or on names containing one of `only`); same config and
    tokenizer as the base. `dtype` overrides the stored dtype."""
    base_dir = Path(base_dir)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, t in load_state(base_dir).items():
        delta = scale * torch.randn(t.shape, generator=g)
        if only is not None and not any(o in name for o in only):
            delta = torch.zeros_like(delta)
        sd[name] = (t.float() + delta).to(dtype or t.dtype)
    cfg = json.loads((base_dir / "config.json").read_text()) if (base_dir / "config.json").is_file() else None
    if cfg is not None and dtype is not None:
        cfg["torch_dtype"] = str(dtype).replace("torch.", "")
    _copy_tokenizer(base_dir, out_dir)
    return write_state(out_dir, sd, shards, cfg, tokenizer=False)


def _copy_tokenizer(src: Path, dst: str | Path) -> None:
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (src / f).is_file():
            (dst / f).write_bytes((src / f).read_bytes())


def make_lora(
    base_dir: str | Path,
    out_dir: str | Path,
    rank: int = 2,
    alpha: float = 4.0,
    seed: int = 2,
    targets: Iterable[str] = ("q_proj", "v_proj"),
    scale: float = 0.05,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A PEFT LoRA adapter for `base_dir` on every Linear whose name contains a target.

    Writes adapter_config.json and adapter_model.safetensors with PEFT's names
    (`base_model.model.<module>.lora_A.weight` [r, in] and `lora_B.weight` [out, r]);
    the delta is B @ A * alpha / r. Returns the adapter directory."""
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    targets = tuple(targets)
    sd = {}
    for name, t in load_state(base_dir).items():
        if t.ndim != 2 or not any(f".{x}." in name for x in targets):
            continue
        module = name[: -len(".weight")]
        out_f, in_f = t.shape
        sd[f"base_model.model.{module}.lora_A.weight"] = (scale * torch.randn(rank, in_f, generator=g)).to(dtype)
        sd[f"base_model.model.{module}.lora_B.weight"] = (scale * torch.randn(out_f, rank, generator=g)).to(dtype)
    save_file(sd, str(out_dir / "adapter_model.safetensors"))
    cfg = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": list(targets),
        "base_model_name_or_path": str(base_dir),
        "fan_in_fan_out": False,
        "use_rslora": False,
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(cfg, indent=1))
    return out_dir


def lora_delta(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """Independent computation of an adapter's full deltas {target tensor name: B @ A * alpha / r} (float32)."""
    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    s = cfg["lora_alpha"] / cfg["r"]
    sd = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out = {}
    for k, a in sd.items():
        if ".lora_A." in k:
            b = sd[k.replace(".lora_A.", ".lora_B.")]
            target = k.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
            out[target] = (b.float() @ a.float()) * s
    return out


# make_family: a 3-layer Llama-named model (hidden 24, vocab 40), a base and N fine-tunes of it
H, V, L = 24, 40, 3


def family_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (V, H), "lm_head.weight": (V, H), "model.norm.weight": (H,)}
    for i in range(L):
        for p in "qkvo":
            shapes[f"model.layers.{i}.self_attn.{p}_proj.weight"] = (H, H)
        shapes[f"model.layers.{i}.mlp.gate_proj.weight"] = (2 * H, H)
        shapes[f"model.layers.{i}.mlp.up_proj.weight"] = (2 * H, H)
        shapes[f"model.layers.{i}.mlp.down_proj.weight"] = (H, 2 * H)
        shapes[f"model.layers.{i}.input_layernorm.weight"] = (H,)
        shapes[f"model.layers.{i}.post_attention_layernorm.weight"] = (H,)
    return shapes


def _write_family_model(d, sd, shards=1):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": L, "vocab_size": V}))
    if shards == 1:
        save_file(sd, str(d / "model.safetensors"))
        return d
    names = list(sd)
    per = math.ceil(len(names) / shards)
    wm = {}
    for s in range(shards):
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: sd[n] for n in names[s * per : (s + 1) * per]}
        save_file(part, str(d / fn))
        wm.update({n: fn for n in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return d


def make_family(tmp, dtype=torch.bfloat16, shards=1, n_models=3, sparse=False):
    """base + n_models fine-tunes (deltas 0.02·(k+1)·N(0,1)) under tmp; returns (base dir, [model dirs])."""
    g = torch.Generator().manual_seed(0)
    base = {n: torch.randn(s, generator=g).to(dtype) for n, s in family_shapes().items()}
    _write_family_model(tmp / "base", base, shards)
    paths = []
    for k in range(n_models):
        sd = {}
        for n, t in base.items():
            delta = torch.randn(t.shape, generator=g) * (0.02 * (k + 1))
            if sparse:  # exact zeros and shared coordinates exercise the "non-zero" conditions
                delta = delta * (torch.rand(t.shape, generator=g) < 0.5)
            sd[n] = (t.float() + delta).to(dtype)
        # an untouched tensor: τ = 0 there
        sd["model.layers.0.input_layernorm.weight"] = base["model.layers.0.input_layernorm.weight"].clone()
        paths.append(_write_family_model(tmp / f"ft{k}", sd, shards))
    return tmp / "base", paths
