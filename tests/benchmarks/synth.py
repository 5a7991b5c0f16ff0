"""Synthetic Llama-shaped checkpoint sets for benchmarks (random weights, random small deltas).

    python tests/benchmarks/synth.py bench_data/1b --size 1b --finetunes 3

Sizes follow real configs: `1b` is TinyLlama-1.1B's shape (22 layers, hidden 2048, MLP 5632, GQA 4 KV
heads, vocab 32000), `3b` a 3.2B Llama-3.2-3B-like shape. Written as ~1 GB bf16 shards with an index,
one shard in memory at a time. Fine-tunes are base + N(0, (0.01·σ)²) deltas, each with its own seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

SHAPES = {
    "tiny": dict(layers=2, hidden=256, inter=688, heads=8, kv=4, vocab=1024),
    "100m": dict(layers=8, hidden=768, inter=2048, heads=12, kv=4, vocab=32000),
    "1b": dict(layers=22, hidden=2048, inter=5632, heads=32, kv=4, vocab=32000),
    "3b": dict(layers=28, hidden=3072, inter=8192, heads=24, kv=8, vocab=128256),
}


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, i, v = cfg["hidden"], cfg["inter"], cfg["vocab"]
    kv_dim = h // cfg["heads"] * cfg["kv"]
    out = {"model.embed_tokens.weight": (v, h)}
    for layer in range(cfg["layers"]):
        p = f"model.layers.{layer}."
        out[p + "self_attn.q_proj.weight"] = (h, h)
        out[p + "self_attn.k_proj.weight"] = (kv_dim, h)
        out[p + "self_attn.v_proj.weight"] = (kv_dim, h)
        out[p + "self_attn.o_proj.weight"] = (h, h)
        out[p + "mlp.gate_proj.weight"] = (i, h)
        out[p + "mlp.up_proj.weight"] = (i, h)
        out[p + "mlp.down_proj.weight"] = (h, i)
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
    out["model.norm.weight"] = (h,)
    out["lm_head.weight"] = (v, h)
    return out


def _write_model(out: Path, cfg: dict, make, shard_bytes: int = 1 << 30) -> None:
    out.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(cfg)
    groups, cur, size = [], [], 0
    for name, shape in shapes.items():
        nb = 2 * int(torch.tensor(shape).prod())
        if cur and size + nb > shard_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += nb
    groups.append(cur)
    wm = {}
    for k, names in enumerate(groups):
        fn = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: make(n, shapes[n]) for n in names}, str(out / fn), metadata={"format": "pt"})
        wm.update({n: fn for n in names})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}, indent=1))
    (out / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": cfg["hidden"],
                "intermediate_size": cfg["inter"],
                "num_hidden_layers": cfg["layers"],
                "num_attention_heads": cfg["heads"],
                "num_key_value_heads": cfg["kv"],
                "vocab_size": cfg["vocab"],
                "torch_dtype": "bfloat16",
                "rms_norm_eps": 1e-5,
                "tie_word_embeddings": False,
            },
            indent=1,
        )
    )


def _seed(name: str, seed: int) -> int:
    import zlib

    return (zlib.crc32(name.encode()) * 1000003 + seed) % (2**63)


def base_tensor(name: str, shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(_seed(name, seed))
    if len(shape) == 1:
        return (1.0 + 0.05 * torch.randn(shape, generator=g)).to(torch.bfloat16)
    return (0.02 * torch.randn(shape, generator=g)).to(torch.bfloat16)


def generate(root: Path, size: str = "1b", finetunes: int = 3) -> list[Path]:
    cfg = SHAPES[size]
    paths = [root / "base"] + [root / f"ft{k}" for k in range(finetunes)]
    if all((p / "model.safetensors.index.json").is_file() for p in paths):
        return paths
    t0 = time.time()
    _write_model(paths[0], cfg, lambda n, s: base_tensor(n, s))
    for k in range(finetunes):

        def make(n, s, k=k):
            b = base_tensor(n, s).float()
            g = torch.Generator().manual_seed(_seed(n, 1000 + k))
            return (b + 0.0002 * (k + 1) * torch.randn(s, generator=g)).to(torch.bfloat16)

        _write_model(paths[k + 1], cfg, make)
    print(f"generated {size} set in {root} ({time.time() - t0:.0f}s)", file=sys.stderr)
    return paths


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--size", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--finetunes", type=int, default=3)
    a = ap.parse_args()
    for p in generate(a.root, a.size, a.finetunes):
        print(p)
