"""Composes the blocks into a decoder graph (Llama, Qwen 2/3, Gemma 3) with a KV cache.

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
from converter.model_config import SLIDING_ATTENTION, DecoderConfig, DecoderWeights
from converter.progress import Progress


def _attention_inputs(builder: GraphBuilder, config: DecoderConfig, seqlens_k: str, total: str) -> dict[str, blocks.AttentionInputs]:
    """Rotary tables and window per kind of layer: full-attention layers use rope_theta (scaled),
    sliding-window layers their own base when the model has one."""
    kinds = {}
    for kind in dict.fromkeys(config.layer_types):
        sliding = kind == SLIDING_ATTENTION
        theta = config.rope_local_theta if sliding and config.rope_local_theta else config.rope_theta
        factor = 1.0 if sliding else config.rope_scaling_factor
        cos, sin = blocks.rotary_caches(config.head_dim, theta, config.max_position_embeddings, factor)
        prefix = "rotary_local" if sliding else "rotary"
        kinds[kind] = blocks.AttentionInputs(
            seqlens_k=seqlens_k,
            total_sequence_length=total,
            cos_cache=builder.constant(f"{prefix}.cos", cos),
            sin_cache=builder.constant(f"{prefix}.sin", sin),
            local_window=config.sliding_window if sliding else -1,
        )
    return kinds


def build_decoder(
    config: DecoderConfig,
    weights: DecoderWeights,
    accuracy: blocks.AccuracyLevels = blocks.EXACT,
    progress: Progress = Progress(),
):
    builder = GraphBuilder(f"{config.architecture}_decoder")
    input_ids = builder.input("input_ids", INT64, ["batch", "sequence"])
    seqlens_k = builder.input("seqlens_k", INT32, ["batch"])
    total = builder.input("total_sequence_length", INT32, [])
    logits_to_keep = builder.input("num_logits_to_keep", INT64, [1])
    attention_inputs = _attention_inputs(builder, config, seqlens_k, total)
    epsilon = config.rms_norm_eps

    cache_shape = ["batch", config.num_key_value_heads, "capacity", config.head_dim]
    embedded = blocks.embedding(builder, input_ids, weights.embed_tokens, "model.embed_tokens")
    residual = blocks.scaled(builder, embedded, config.embedding_scale, "model.embed_tokens/scaled")
    pending = None  # the last block's output, still to be added to the residual stream
    layers = progress.track(zip(weights.layers, config.layer_types, strict=True), "building layers", len(weights.layers))
    for index, (layer, kind) in enumerate(layers):
        prefix = f"model.layers.{index}"
        if pending is None:
            normed = blocks.rms_norm(builder, residual, layer.input_layernorm, epsilon, f"{prefix}.input_layernorm")
        else:
            normed, residual = blocks.residual_rms_norm(
                builder, pending, residual, layer.input_layernorm, epsilon, f"{prefix}.input_layernorm"
            )
        past_key = builder.input(f"past_key_values.{index}.key", FLOAT, cache_shape)
        past_value = builder.input(f"past_key_values.{index}.value", FLOAT, cache_shape)
        attended, present_key, present_value = blocks.attention(
            builder, normed, layer, config, attention_inputs[kind], past_key, past_value, f"{prefix}.self_attn", accuracy
        )
        builder.expose(present_key, f"present.{index}.key", FLOAT, cache_shape)
        builder.expose(present_value, f"present.{index}.value", FLOAT, cache_shape)
        if layer.post_attention_layernorm is not None:
            attended = blocks.rms_norm(builder, attended, layer.post_attention_layernorm, epsilon, f"{prefix}.post_attention_layernorm")
        normed, residual = blocks.residual_rms_norm(
            builder, attended, residual, layer.pre_feedforward_layernorm, epsilon, f"{prefix}.pre_feedforward_layernorm"
        )
        pending = blocks.gated_mlp(builder, normed, layer, config.hidden_activation, f"{prefix}.mlp", accuracy)
        if layer.post_feedforward_layernorm is not None:
            pending = blocks.rms_norm(builder, pending, layer.post_feedforward_layernorm, epsilon, f"{prefix}.post_feedforward_layernorm")

    kept = blocks.last_positions(builder, pending, logits_to_keep, "logits/pending")
    kept_residual = blocks.last_positions(builder, residual, logits_to_keep, "logits/residual")
    final, _ = blocks.residual_rms_norm(builder, kept, kept_residual, weights.norm, epsilon, "model.norm")
    head = weights.lm_head if weights.lm_head is not None else weights.embed_tokens
    head_weight_name = "lm_head" if weights.lm_head is not None else "model.embed_tokens"
    logits = blocks.linear(builder, final, head, "lm_head", accuracy, weight_name=head_weight_name)
    logits = blocks.soft_capped(builder, logits, config.final_logit_softcap, "logits/capped")
    builder.expose(logits, "logits", FLOAT, ["batch", "num_logits_to_keep", config.vocab_size])
    return builder.model()
