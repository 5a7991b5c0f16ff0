"""Tensor name -> Site, per architecture family (README: the analysis)."""

import pytest

from mergescope.io.naming import Site, layer_count, site_of

CASES = {
    "llama/mistral/qwen2": [
        ("model.embed_tokens.weight", None, "embed", "embed_tokens"),
        ("model.layers.0.self_attn.q_proj.weight", 0, "attn", "q_proj"),
        ("model.layers.11.self_attn.k_proj.bias", 11, "attn", "k_proj"),
        ("model.layers.3.self_attn.v_proj.weight", 3, "attn", "v_proj"),
        ("model.layers.3.self_attn.o_proj.weight", 3, "attn", "o_proj"),
        ("model.layers.3.mlp.gate_proj.weight", 3, "mlp", "gate_proj"),
        ("model.layers.3.mlp.up_proj.weight", 3, "mlp", "up_proj"),
        ("model.layers.3.mlp.down_proj.weight", 3, "mlp", "down_proj"),
        ("model.layers.3.input_layernorm.weight", 3, "norm", "input_layernorm"),
        ("model.layers.3.post_attention_layernorm.weight", 3, "norm", "post_attention_layernorm"),
        ("model.norm.weight", None, "norm", "final_norm"),
        ("lm_head.weight", None, "head", "lm_head"),
    ],
    "gemma": [
        ("model.layers.2.pre_feedforward_layernorm.weight", 2, "norm", "pre_feedforward_layernorm"),
        ("model.layers.2.post_feedforward_layernorm.weight", 2, "norm", "post_feedforward_layernorm"),
        ("model.layers.2.self_attn.q_norm.weight", 2, "norm", "q_norm"),
    ],
    "phi3": [
        ("model.layers.5.self_attn.qkv_proj.weight", 5, "attn", "qkv_proj"),
        ("model.layers.5.mlp.gate_up_proj.weight", 5, "mlp", "gate_up_proj"),
    ],
    "gpt2": [
        ("transformer.wte.weight", None, "embed", "embed_tokens"),
        ("transformer.wpe.weight", None, "embed", "pos_embed"),
        ("transformer.h.4.ln_1.weight", 4, "norm", "input_layernorm"),
        ("transformer.h.4.attn.c_attn.weight", 4, "attn", "qkv_proj"),
        ("transformer.h.4.attn.c_proj.bias", 4, "attn", "o_proj"),
        ("transformer.h.4.ln_2.weight", 4, "norm", "post_attention_layernorm"),
        ("transformer.h.4.mlp.c_fc.weight", 4, "mlp", "up_proj"),
        ("transformer.h.4.mlp.c_proj.weight", 4, "mlp", "down_proj"),
        ("transformer.ln_f.weight", None, "norm", "final_norm"),
        ("h.1.attn.c_attn.weight", 1, "attn", "qkv_proj"),
    ],
    "bert/roberta": [
        ("bert.embeddings.word_embeddings.weight", None, "embed", "embed_tokens"),
        ("roberta.embeddings.position_embeddings.weight", None, "embed", "pos_embed"),
        ("bert.embeddings.token_type_embeddings.weight", None, "embed", "type_embed"),
        ("bert.embeddings.LayerNorm.weight", None, "norm", "embed_norm"),
        ("bert.encoder.layer.7.attention.self.query.weight", 7, "attn", "q_proj"),
        ("bert.encoder.layer.7.attention.self.key.bias", 7, "attn", "k_proj"),
        ("bert.encoder.layer.7.attention.self.value.weight", 7, "attn", "v_proj"),
        ("bert.encoder.layer.7.attention.output.dense.weight", 7, "attn", "o_proj"),
        ("bert.encoder.layer.7.attention.output.LayerNorm.weight", 7, "norm", "post_attention_layernorm"),
        ("bert.encoder.layer.7.intermediate.dense.weight", 7, "mlp", "up_proj"),
        ("bert.encoder.layer.7.output.dense.weight", 7, "mlp", "down_proj"),
        ("bert.encoder.layer.7.output.LayerNorm.weight", 7, "norm", "post_feedforward_layernorm"),
        ("bert.pooler.dense.weight", None, "head", "pooler"),
        ("cls.predictions.decoder.weight", None, "head", "lm_head"),
        ("roberta.lm_head.dense.weight", None, "head", "lm_head"),
    ],
    "t5": [
        ("shared.weight", None, "embed", "embed_tokens"),
        ("encoder.block.0.layer.0.SelfAttention.q.weight", 0, "attn", "q_proj"),
        ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 0, "attn", "rel_bias"),
        ("encoder.block.0.layer.0.layer_norm.weight", 0, "norm", "input_layernorm"),
        ("encoder.block.0.layer.1.DenseReluDense.wi.weight", 0, "mlp", "up_proj"),
        ("encoder.block.0.layer.1.DenseReluDense.wo.weight", 0, "mlp", "down_proj"),
        ("decoder.block.1.layer.1.EncDecAttention.k.weight", 1, "attn", "cross_k_proj"),
        ("decoder.block.1.layer.2.DenseReluDense.wi_0.weight", 1, "mlp", "gate_proj"),
        ("encoder.final_layer_norm.weight", None, "norm", "final_norm"),
        ("lm_head.weight", None, "head", "lm_head"),
    ],
    "vit/clip": [
        ("vit.embeddings.patch_embeddings.projection.weight", None, "embed", "patch_embed"),
        ("vit.embeddings.cls_token", None, "embed", "cls_embed"),
        ("vit.encoder.layer.2.attention.attention.query.weight", 2, "attn", "q_proj"),
        ("vit.encoder.layer.2.attention.output.dense.weight", 2, "attn", "o_proj"),
        ("vit.encoder.layer.2.intermediate.dense.weight", 2, "mlp", "up_proj"),
        ("vit.encoder.layer.2.output.dense.weight", 2, "mlp", "down_proj"),
        ("vit.encoder.layer.2.layernorm_before.weight", 2, "norm", "input_layernorm"),
        ("vit.encoder.layer.2.layernorm_after.weight", 2, "norm", "post_attention_layernorm"),
        ("vit.layernorm.weight", None, "norm", "final_norm"),
        ("classifier.weight", None, "head", "classifier"),
        ("text_model.embeddings.token_embedding.weight", None, "embed", "embed_tokens"),
        ("text_model.encoder.layers.9.self_attn.out_proj.weight", 9, "attn", "o_proj"),
        ("text_model.encoder.layers.9.mlp.fc1.weight", 9, "mlp", "up_proj"),
        ("text_model.encoder.layers.9.mlp.fc2.weight", 9, "mlp", "down_proj"),
        ("text_model.encoder.layers.9.layer_norm1.weight", 9, "norm", "input_layernorm"),
        ("text_model.final_layer_norm.weight", None, "norm", "final_norm"),
        ("vision_model.embeddings.class_embedding", None, "embed", "cls_embed"),
        ("vision_model.post_layernorm.weight", None, "norm", "final_norm"),
        ("visual_projection.weight", None, "head", "projection"),
    ],
    "fallback": [
        ("foo.bar.17.baz.weight", 17, "other", "baz"),
        ("something_else", None, "other", "something_else"),
    ],
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_family(family):
    for name, layer, group, module in CASES[family]:
        assert site_of(name) == Site(layer, group, module), name


def test_layer_count():
    assert (
        layer_count(["model.layers.0.mlp.up_proj.weight", "model.layers.31.mlp.up_proj.weight", "lm_head.weight"]) == 32
    )
    assert layer_count(["lm_head.weight"]) == 0
