"""Composes the blocks into a decoder graph (Llama, Qwen 2/3, Gemma 3) with a KV cache, for a
target (converter.targets); its inputs and outputs are named in converter.graph_interface.

The residual stream is float32 on every target: blocks take it in the compute type after their
norm and give their output back as float32 before it is added.
"""

from __future__ import annotations

from converter import blocks
from converter import graph_interface as names
from converter.graph_builder import FLOAT, INT32, INT64, GraphBuilder
from converter.model_config import SLIDING_ATTENTION, DecoderConfig, DecoderWeights
from converter.progress import Progress
from converter.targets import CPU_TARGET, Target
from converter.weights import gather_layout_for_cuda


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
            cos_cache=builder.compute_constant(f"{prefix}.cos", cos),
            sin_cache=builder.compute_constant(f"{prefix}.sin", sin),
            local_window=config.sliding_window if sliding else -1,
        )
    return kinds


def build_decoder(
    config: DecoderConfig,
    weights: DecoderWeights,
    accuracy: blocks.AccuracyLevels = blocks.EXACT,
    progress: Progress = Progress(),
    target: Target = CPU_TARGET,
):
    builder = GraphBuilder(f"{config.architecture}_decoder", target.compute_type)
    cache_type = target.compute_type
    on_cuda = target.device == "cuda"
    input_ids = builder.input(names.INPUT_IDS, INT64, ["batch", "sequence"])
    seqlens_k = builder.input(names.SEQLENS_K, INT32, ["batch"])
    total = builder.input(names.TOTAL_SEQUENCE_LENGTH, INT32, [])
    logits_to_keep = builder.input(names.LOGITS_START if on_cuda else names.NUM_LOGITS_TO_KEEP, INT64, [1])
    attention_inputs = _attention_inputs(builder, config, seqlens_k, total)
    epsilon = config.rms_norm_eps

    cache_shape = ["batch", config.num_key_value_heads, "capacity", config.head_dim]
    table, table_name = weights.embed_tokens, "model.embed_tokens"
    if weights.lm_head is None and not on_cuda:
        # A tied table is stored twice for the CPU. MatMulNBits repacks the head's copy when the
        # session loads, and ONNX Runtime then lets go of it; of the gather's own copy, mapped
        # from model.onnx.data, only the rows gathered become resident. One shared copy stayed
        # resident whole (Gemma 3 270M: 467 MiB after loading, 307 MiB with two copies; the
        # folder grows by the table, 210 MB there). A GPU would hold both copies in its memory.
        table_name = "model.embed_tokens.gathered"
    if on_cuda and (widened := gather_layout_for_cuda(table)) is not table:
        # A layout ORT's CUDA GatherBlockQuantized reads correctly, which MatMulNBits does not need.
        table, table_name = widened, "model.embed_tokens.gathered"
    embedded = blocks.embedding(builder, input_ids, table, table_name)
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
        past_key = builder.input(names.past_name(index, "key"), cache_type, cache_shape)
        past_value = builder.input(names.past_name(index, "value"), cache_type, cache_shape)
        attended, present_key, present_value = blocks.attention(
            builder, builder.to_compute(normed), layer, config, attention_inputs[kind], past_key, past_value, f"{prefix}.self_attn", accuracy
        )
        builder.expose(present_key, names.present_name(index, "key"), cache_type, cache_shape)
        builder.expose(present_value, names.present_name(index, "value"), cache_type, cache_shape)
        attended = builder.to_float32(attended)
        if layer.post_attention_layernorm is not None:
            attended = blocks.rms_norm(builder, attended, layer.post_attention_layernorm, epsilon, f"{prefix}.post_attention_layernorm")
        normed, residual = blocks.residual_rms_norm(
            builder, attended, residual, layer.pre_feedforward_layernorm, epsilon, f"{prefix}.pre_feedforward_layernorm"
        )
        pending = blocks.gated_mlp(builder, builder.to_compute(normed), layer, config.hidden_activation, f"{prefix}.mlp", accuracy)
        pending = builder.to_float32(pending)
        if layer.post_feedforward_layernorm is not None:
            pending = blocks.rms_norm(builder, pending, layer.post_feedforward_layernorm, epsilon, f"{prefix}.post_feedforward_layernorm")

    # Every position's final hidden state, for embeddings; the logits below normalize only the
    # kept positions, so decoding pays for one row of this norm, not a prompt's.
    hidden, _ = blocks.residual_rms_norm(builder, pending, residual, weights.norm, epsilon, "model.norm/all_positions")
    builder.expose(hidden, names.LAST_HIDDEN_STATE, FLOAT, ["batch", "sequence", config.hidden_size])
    kept = blocks.last_positions(builder, pending, logits_to_keep, "logits/pending", negative=on_cuda)
    kept_residual = blocks.last_positions(builder, residual, logits_to_keep, "logits/residual", negative=on_cuda)
    final, _ = blocks.residual_rms_norm(builder, kept, kept_residual, weights.norm, epsilon, "model.norm")
    head = weights.lm_head if weights.lm_head is not None else weights.embed_tokens
    head_weight_name = "lm_head" if weights.lm_head is not None else "model.embed_tokens"
    logits = blocks.linear(builder, builder.to_compute(final), head, "lm_head", accuracy, weight_name=head_weight_name)
    logits = blocks.soft_capped(builder, builder.to_float32(logits), config.final_logit_softcap, "logits/capped")
    builder.expose(logits, names.LOGITS, FLOAT, ["batch", "kept_positions", config.vocab_size])
    if target.sampling_candidates:
        temperatures = builder.input(names.TEMPERATURES, FLOAT, ["batch"])
        ids, values, normalizer = blocks.sampling_candidates(builder, logits, temperatures, target.sampling_candidates)
        builder.expose(ids, names.CANDIDATE_IDS, INT64, ["batch", target.sampling_candidates])
        builder.expose(values, names.CANDIDATE_LOGITS, FLOAT, ["batch", target.sampling_candidates])
        builder.expose(normalizer, names.LOG_NORMALIZER, FLOAT, ["batch"])
    return builder.model()
