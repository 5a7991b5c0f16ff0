"""Opening checkpoints: layouts, metadata, lazy reads, and errors that name the file."""

import json

import pytest
import torch
from safetensors.torch import save_file

from mergescope.io.checkpoint import CheckpointError, open_checkpoint, open_models


def _sd():
    g = torch.Generator().manual_seed(1)
    return {
        "model.embed_tokens.weight": torch.randn(10, 4, generator=g).to(torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": torch.randn(8, 4, generator=g).to(torch.float16),
        "lm_head.weight": torch.randn(10, 4, generator=g),
    }


def test_single_file_and_dir(tmp_path):
    sd = _sd()
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "vocab_size": 10,
                "num_hidden_layers": 1,
                "_name_or_path": "org/base",
            }
        )
    )
    (tmp_path / "README.md").write_text("---\nbase_model: org/base-7b\nlicense: mit\n---\n# card\n")
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}}, "truncation": None}))
    for path in (tmp_path, tmp_path / "model.safetensors"):
        ck = open_checkpoint(path)
        assert sorted(ck.names()) == sorted(sd)
        info = ck.info("model.embed_tokens.weight")
        assert info.shape == (10, 4) and info.dtype == torch.bfloat16 and info.nbytes == 80
        for n, t in sd.items():
            assert torch.equal(ck.get(n), t)
    ck = open_checkpoint(tmp_path)
    assert ck.model_type == "llama" and ck.architecture == "LlamaForCausalLM" and ck.vocab_size == 10
    assert ck.num_layers == 1 and ck.name_or_path == "org/base" and ck.declared_base == "org/base-7b"
    fp = ck.tokenizer_fingerprint()
    # option-only change keeps the fingerprint, a vocab change alters it
    (tmp_path / "tokenizer.json").write_text(
        json.dumps({"model": {"vocab": {"a": 0}}, "truncation": {"max_length": 5}})
    )
    assert open_checkpoint(tmp_path).tokenizer_fingerprint() == fp
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"b": 0}}}))
    assert open_checkpoint(tmp_path).tokenizer_fingerprint() != fp


def test_bin_checkpoint(tmp_path):
    sd = _sd()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    ck = open_checkpoint(tmp_path)
    assert sorted(ck.names()) == sorted(sd)
    assert torch.equal(ck.get("lm_head.weight"), sd["lm_head.weight"])


def test_sharded_index(tmp_path):
    sd = _sd()
    save_file({k: sd[k] for k in list(sd)[:2]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: sd[k] for k in list(sd)[2:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    wm = {
        k: ("model-00001-of-00002.safetensors" if i < 2 else "model-00002-of-00002.safetensors")
        for i, k in enumerate(sd)
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    ck = open_checkpoint(tmp_path)
    assert len(ck.weight_files) == 2 and torch.equal(ck.get("lm_head.weight"), sd["lm_head.weight"])
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors.*missing"):
        open_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "too short"),
        (b"\xff" * 8 + b"{}", "corrupt safetensors header"),
        ((20).to_bytes(8, "little") + b"not json at all!!!!!", "corrupt safetensors header"),
    ],
)
def test_corrupt_files_name_the_file(tmp_path, content, match):
    p = tmp_path / "model.safetensors"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as exc:
        open_checkpoint(p)
    assert str(p) in str(exc.value)


def test_truncated_tensor_data(tmp_path):
    p = tmp_path / "model.safetensors"
    save_file(_sd(), str(p))
    p.write_bytes(p.read_bytes()[:-16])
    with pytest.raises(CheckpointError, match="past the end"):
        open_checkpoint(p)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        open_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no model weights"):
        open_checkpoint(tmp_path)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        open_checkpoint(tmp_path / "x.txt")


def test_lora_base_mismatch_is_reported(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    save_file(_sd(), str(base / "model.safetensors"))
    ad = tmp_path / "ad"
    ad.mkdir()
    save_file(
        {
            "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(2, 5),
            "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight": torch.zeros(8, 2),
        },
        str(ad / "adapter_model.safetensors"),
    )
    (ad / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2}))
    with pytest.raises(CheckpointError, match="wrong base"):
        open_models(base, [ad])
    with pytest.raises(CheckpointError, match="LoRA adapter; the base must be a full model"):
        open_models(ad, [base])
