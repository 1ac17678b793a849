"""Composes the blocks into a llama-family decoder graph with a KV cache.

Graph interface (what the engine binds):
  inputs   input_ids int64 (batch, sequence)
           seqlens_k int32 (batch): tokens in the cache after this step, minus one
           total_sequence_length int32 (): the longest of those plus one
           num_logits_to_keep int64 (1): how many final positions get logits (1 while decoding)
           past_key_values.{i}.key / .value float32 (batch, kv_heads, capacity, head_dim)
  outputs  logits float32 (batch, num_logits_to_keep, vocab)
           present.{i}.key / .value: the same shape as the past; bind them to the past buffers
"""

from __future__ import annotations

from converter import blocks
from converter.graph_builder import FLOAT, INT32, INT64, GraphBuilder
from converter.model_config import DecoderConfig, DecoderWeights


def build_decoder(config: DecoderConfig, weights: DecoderWeights, accuracy: blocks.AccuracyLevels = blocks.EXACT):
    builder = GraphBuilder(f"{config.architecture}_decoder")
    input_ids = builder.input("input_ids", INT64, ["batch", "sequence"])
    shared = blocks.AttentionInputs(
        seqlens_k=builder.input("seqlens_k", INT32, ["batch"]),
        total_sequence_length=builder.input("total_sequence_length", INT32, []),
        cos_cache="rotary.cos",
        sin_cache="rotary.sin",
    )
    logits_to_keep = builder.input("num_logits_to_keep", INT64, [1])
    cos, sin = blocks.rotary_caches(config)
    builder.constant(shared.cos_cache, cos)
    builder.constant(shared.sin_cache, sin)

    cache_shape = ["batch", config.num_key_value_heads, "capacity", config.head_dim]
    residual = blocks.embedding(builder, input_ids, weights.embed_tokens, "model.embed_tokens")
    pending = None  # the last block's output, still to be added to the residual stream
    for index, layer in enumerate(weights.layers):
        prefix = f"model.layers.{index}"
        if pending is None:
            normed = blocks.rms_norm(builder, residual, layer.input_layernorm, config.rms_norm_eps, f"{prefix}.input_layernorm")
        else:
            normed, residual = blocks.residual_rms_norm(
                builder, pending, residual, layer.input_layernorm, config.rms_norm_eps, f"{prefix}.input_layernorm"
            )
        past_key = builder.input(f"past_key_values.{index}.key", FLOAT, cache_shape)
        past_value = builder.input(f"past_key_values.{index}.value", FLOAT, cache_shape)
        attended, present_key, present_value = blocks.attention(
            builder, normed, layer, config, shared, past_key, past_value, f"{prefix}.self_attn", accuracy
        )
        builder.expose(present_key, f"present.{index}.key", FLOAT, cache_shape)
        builder.expose(present_value, f"present.{index}.value", FLOAT, cache_shape)
        normed, residual = blocks.residual_rms_norm(
            builder, attended, residual, layer.post_attention_layernorm, config.rms_norm_eps, f"{prefix}.post_attention_layernorm"
        )
        pending = blocks.gated_mlp(builder, normed, layer, f"{prefix}.mlp", accuracy)

    kept = blocks.last_positions(builder, pending, logits_to_keep, "logits/pending")
    kept_residual = blocks.last_positions(builder, residual, logits_to_keep, "logits/residual")
    final, _ = blocks.residual_rms_norm(builder, kept, kept_residual, weights.norm, config.rms_norm_eps, "model.norm")
    head = weights.lm_head if weights.lm_head is not None else weights.embed_tokens
    head_weight_name = "lm_head" if weights.lm_head is not None else "model.embed_tokens"
    logits = blocks.linear(builder, final, head, "lm_head", accuracy, weight_name=head_weight_name)
    builder.expose(logits, "logits", FLOAT, ["batch", "num_logits_to_keep", config.vocab_size])
    return builder.model()
