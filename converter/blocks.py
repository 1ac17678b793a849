"""One builder per building block of a decoder: embedding, linear, RMS norm, attention, MLP.

Each function adds its nodes to a GraphBuilder and returns the names of the values it produced.
Linear layers, attention and the MLP compute in the builder's compute type (float32, or float16
for the CUDA target); the embedding and the norms of the residual stream stay float32.
ORT's fused contrib ops are used where they run on both CPU and CUDA: MatMulNBits,
GatherBlockQuantized, SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization and
GroupQueryAttention (which also applies rotary embeddings and writes the KV cache in place).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from converter.graph_builder import FLOAT, MICROSOFT, GraphBuilder
from converter.model_config import DecoderConfig, LayerWeights
from converter.weights import BlockQuantizedWeight, DenseWeight, LinearWeight, NibbleSplitWeight, block_indicator, fold_minimums, stacked


def _packed_levels(builder: GraphBuilder, weight: BlockQuantizedWeight, name: str) -> str:
    return builder.constant(f"{name}.packed", weight.packed)


# MatMulNBits accuracy_level by weight bits: 0 keeps activations float32, 4 quantizes them to
# int8 blocks (ORT's fastest CPU kernels).
AccuracyLevels = dict[int, int]
EXACT: AccuracyLevels = {4: 0, 8: 0}
INT8_ACTIVATIONS = 4


def linear(
    builder: GraphBuilder,
    x: str,
    weight: LinearWeight,
    name: str,
    accuracy: AccuracyLevels = EXACT,
    weight_name: str | None = None,
) -> str:
    """x @ weight.T, as MatMul for dense weights and MatMulNBits for block-quantized ones.

    `weight_name` names the stored weight when it differs from the node (a head tied to the
    embedding table reads the table's packed levels).
    """
    weight_name = weight_name or name
    if isinstance(weight, NibbleSplitWeight):
        high = linear(builder, x, weight.high, f"{name}.high", accuracy, f"{weight_name}.high")
        low = linear(builder, x, weight.low, f"{name}.low", accuracy, f"{weight_name}.low")
        return builder.op1("Add", [high, low], name)
    if isinstance(weight, DenseWeight):
        if builder.compute_type == FLOAT:
            stored = builder.constant(f"{weight_name}.weight_t", np.ascontiguousarray(weight.values.T))
            transposed = _as_float32(builder, stored, weight.values.dtype)
        else:
            transposed = builder.compute_constant(f"{weight_name}.weight_t", np.ascontiguousarray(weight.values.T))
        return builder.op1("MatMul", [x, transposed], name)
    folded = fold_minimums(weight) if weight.minimums is not None and accuracy[weight.bits] == INT8_ACTIVATIONS else None
    if folded is not None:  # int8 activations round x anyway: the minimums go inside the matmul
        x = _with_block_sums(builder, x, weight.in_features, weight.block_size)
        weight, weight_name = folded, f"{weight_name}.folded"
    out_features, in_features = weight.shape
    product = builder.op1(
        "MatMulNBits",
        [
            x,
            _packed_levels(builder, weight, weight_name),
            builder.compute_constant(f"{weight_name}.scales", weight.scales.reshape(-1)),
            builder.constant(f"{weight_name}.zero_points", weight.packed_zero_points()),
        ],
        name,
        domain=MICROSOFT,
        K=in_features,
        N=out_features,
        bits=weight.bits,
        block_size=weight.block_size,
        accuracy_level=accuracy[weight.bits],
    )
    if weight.minimums is None:
        return product
    minimums = builder.compute_constant(f"{weight_name}.minimums_t", np.ascontiguousarray(weight.minimums.T))
    offsets = builder.op1("MatMul", [_block_sums(builder, x, weight.block_size), minimums], f"{name}/minimums")
    return builder.op1("Add", [product, offsets], f"{name}/plus_minimums")


def _as_float32(builder: GraphBuilder, value: str, dtype: np.dtype) -> str:
    """float16 weights widen here: a constant's Cast is folded once when ONNX Runtime loads the
    graph, a gathered row's at each lookup (so the table stays half size in memory)."""
    if dtype == np.float32:
        return value
    return builder.op1("Cast", [value], f"{value}/float32", to=FLOAT)


def _block_sums(builder: GraphBuilder, x: str, block_size: int) -> str:
    """Sums of x over each block of inputs, (batch, sequence, blocks); shared by every reader of x."""
    key = ("block_sums", x, block_size)
    if key not in builder.memo:
        shape = builder.constant(f"block_shape_{block_size}", np.array([0, 0, -1, block_size], dtype=np.int64))
        blocked = builder.op1("Reshape", [x, shape], f"{x}/blocks_{block_size}")
        axes = builder.constant("last_axis", np.array([-1], dtype=np.int64))
        builder.memo[key] = builder.op1("ReduceSum", [blocked, axes], f"{x}/block_sums_{block_size}", keepdims=0)
    return builder.memo[key]


def _with_block_sums(builder: GraphBuilder, x: str, in_features: int, block_size: int) -> str:
    """x followed by its block sums on the last axis: the input of a weight whose minimums are
    folded (weights.fold_minimums). The sums come from one more MatMulNBits with 0/1 levels, so
    each input gains two small ops (the sums and a Concat) where the separate minimums product
    took four per matmul."""
    key = ("with_block_sums", x, block_size)
    if key not in builder.memo:
        indicator = block_indicator(in_features, block_size)
        name = f"block_indicator_{in_features}_{block_size}"
        sums = linear(builder, x, indicator, f"{x}/block_sums_{block_size}", {indicator.bits: INT8_ACTIVATIONS}, name)
        builder.memo[key] = builder.op1("Concat", [x, sums], f"{x}/with_block_sums_{block_size}", axis=-1)
    return builder.memo[key]


def embedding(builder: GraphBuilder, input_ids: str, weight: LinearWeight, name: str) -> str:
    """Looks up token rows; quantized tables stay quantized and share storage with a tied head."""
    if isinstance(weight, DenseWeight):
        table = builder.constant(f"{name}.table", weight.values)
        return _as_float32(builder, builder.op1("Gather", [table, input_ids], name), weight.values.dtype)
    if isinstance(weight, NibbleSplitWeight):
        high = _gather_blocks(builder, input_ids, weight.high, f"{name}.high")
        low = _gather_blocks(builder, input_ids, weight.low, f"{name}.low")
        gathered = builder.op1("Add", [high, low], name)
    else:
        gathered = _gather_blocks(builder, input_ids, weight, name)
    # (batch, sequence, blocks, block_size) -> (batch, sequence, hidden)
    shape = builder.constant("flatten_blocks_shape", np.array([0, 0, -1], dtype=np.int64))
    return builder.op1("Reshape", [gathered, shape], f"{name}/flatten")


def _gather_blocks(builder: GraphBuilder, input_ids: str, weight: BlockQuantizedWeight, name: str) -> str:
    """Dequantized rows as (batch, sequence, blocks, block_size), read from the packed levels."""
    rows, blocks = weight.scales.shape
    gathered = builder.op1(
        "GatherBlockQuantized",
        [
            _packed_levels(builder, weight, name),
            input_ids,
            builder.constant(f"{name}.scales_3d", weight.scales.reshape(rows, blocks, 1)),
            builder.constant(f"{name}.zero_points_3d", weight.zero_points.reshape(rows, blocks, 1)),
        ],
        f"{name}/gather",
        domain=MICROSOFT,
        bits=weight.bits,
        block_size=weight.block_size,
        gather_axis=0,
        quantize_axis=2,
    )
    if weight.minimums is None:
        return gathered
    minimums = builder.constant(f"{name}.minimums_3d", weight.minimums.reshape(rows, blocks, 1))
    offsets = builder.op1("Gather", [minimums, input_ids], f"{name}/minimums")
    return builder.op1("Add", [gathered, offsets], f"{name}/plus_minimums")


def rms_norm(builder: GraphBuilder, x: str, gamma: np.ndarray, epsilon: float, name: str, in_compute_type: bool = False) -> str:
    """RMS norm with float32 accumulation (stash_type 1); x is float32 (the residual stream) or,
    with `in_compute_type`, in the graph's compute type (per-head norms inside attention)."""
    if in_compute_type:
        scale = builder.compute_constant(f"{name}.weight", gamma)
    else:
        scale = builder.constant(f"{name}.weight", gamma.astype(np.float32))
    return builder.op1("SimplifiedLayerNormalization", [x, scale], name, axis=-1, epsilon=epsilon, stash_type=1)


def residual_rms_norm(
    builder: GraphBuilder, x: str, residual: str, gamma: np.ndarray, epsilon: float, name: str
) -> tuple[str, str]:
    """Adds x to the residual stream and normalizes the sum in one kernel; returns (normed, sum)."""
    scale = builder.constant(f"{name}.weight", gamma.astype(np.float32))
    normed, _, _, total = builder.op(
        "SkipSimplifiedLayerNormalization", [x, residual, scale], name, outputs=4, domain=MICROSOFT, epsilon=epsilon
    )
    return normed, total


def rotary_caches(head_dim: int, theta: float, positions: int, scaling_factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables (positions, head_dim / 2), computed in float64 then stored as float32.

    Linear rope scaling divides positions by the factor (Hugging Face's "linear" rope_type).
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    inverse_frequencies = 1.0 / (theta**exponents)
    angles = np.outer(np.arange(positions, dtype=np.float64) / scaling_factor, inverse_frequencies)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


@dataclass(frozen=True)
class AttentionInputs:
    """Graph inputs every attention layer reads, and the rotary tables of its kind of layer."""

    seqlens_k: str
    total_sequence_length: str
    cos_cache: str
    sin_cache: str
    # GroupQueryAttention's local_window_size: how many positions a query sees, its own included
    # (Hugging Face's sliding_window; -1: all of them). Checked against transformers in tests.
    local_window: int = -1


def _add_bias(builder: GraphBuilder, x: str, bias: np.ndarray | None, name: str) -> str:
    if bias is None:
        return x
    return builder.op1("Add", [x, builder.compute_constant(f"{name}.bias", bias)], f"{name}/plus_bias")


def _per_head_rms_norm(builder: GraphBuilder, x: str, gamma: np.ndarray | None, epsilon: float, head_dim: int, name: str) -> str:
    """RMS norm over each head's slice of (batch, sequence, heads * head_dim), as Qwen 3 and Gemma 3 do."""
    if gamma is None:
        return x
    by_head = builder.constant(f"head_shape_{head_dim}", np.array([0, 0, -1, head_dim], dtype=np.int64))
    flat = builder.constant("flatten_heads_shape", np.array([0, 0, -1], dtype=np.int64))
    heads = builder.op1("Reshape", [x, by_head], f"{name}/by_head")
    normed = rms_norm(builder, heads, gamma, epsilon, name, in_compute_type=True)
    return builder.op1("Reshape", [normed, flat], f"{name}/flat")


def _projections(
    builder: GraphBuilder, x: str, layer: LayerWeights, config: DecoderConfig, name: str, accuracy: AccuracyLevels
) -> tuple[str, str, str]:
    """Query, key and value for GroupQueryAttention. When q, k and v are stored alike they run as
    one stacked matmul; without q/k norms the packed result goes to the op whole (key and value
    then empty), else it is split so the norms can apply before the op's rotary embedding."""
    parts = [layer.q_proj, layer.k_proj, layer.v_proj]
    biases = [layer.q_bias, layer.k_bias, layer.v_bias]
    fused = stacked(parts)
    if fused is None:
        query, key, value = (
            _add_bias(builder, linear(builder, x, weight, f"{name}.{part}_proj", accuracy), bias, f"{name}.{part}_proj")
            for weight, bias, part in zip(parts, biases, "qkv", strict=True)
        )
    else:
        bias = None if biases[0] is None else np.concatenate(biases)
        packed = _add_bias(builder, linear(builder, x, fused, f"{name}.qkv_proj", accuracy), bias, f"{name}.qkv_proj")
        if layer.q_norm is None and layer.k_norm is None:
            return packed, "", ""
        sizes = builder.constant(f"{name}.qkv_sizes", np.array([weight.shape[0] for weight in parts], dtype=np.int64))
        query, key, value = builder.op("Split", [packed, sizes], f"{name}.qkv_split", outputs=3, axis=-1)
    query = _per_head_rms_norm(builder, query, layer.q_norm, config.rms_norm_eps, config.head_dim, f"{name}.q_norm")
    key = _per_head_rms_norm(builder, key, layer.k_norm, config.rms_norm_eps, config.head_dim, f"{name}.k_norm")
    return query, key, value


def attention(
    builder: GraphBuilder,
    x: str,
    layer: LayerWeights,
    config: DecoderConfig,
    shared: AttentionInputs,
    past_key: str,
    past_value: str,
    name: str,
    accuracy: AccuracyLevels = EXACT,
) -> tuple[str, str, str]:
    """Self-attention with rotary positions; returns (output, present_key, present_value).

    GroupQueryAttention takes positions from seqlens_k, so the same graph serves a first prompt,
    a later chunk of a prompt and single-token decode steps. When present and past are bound to
    one buffer the op appends in place: a decode step allocates nothing for the cache. Per-head
    q/k norms come before it, since it applies the rotary embedding itself.
    """
    query, key, value = _projections(builder, x, layer, config, name, accuracy)
    scale = config.attention_scale if config.attention_scale is not None else config.head_dim**-0.5
    output, present_key, present_value = builder.op(
        "GroupQueryAttention",
        [
            query,
            key,
            value,
            past_key,
            past_value,
            shared.seqlens_k,
            shared.total_sequence_length,
            shared.cos_cache,
            shared.sin_cache,
        ],
        f"{name}.attention",
        outputs=3,
        domain=MICROSOFT,
        num_heads=config.num_attention_heads,
        kv_num_heads=config.num_key_value_heads,
        do_rotary=1,
        rotary_interleaved=int(config.rope_interleaved),
        scale=float(scale),
        softcap=float(config.attention_softcap),
        local_window_size=shared.local_window,
    )
    return linear(builder, output, layer.o_proj, f"{name}.o_proj", accuracy), present_key, present_value


def _activation(builder: GraphBuilder, x: str, kind: str, name: str) -> str:
    if kind == "silu":
        return builder.op1("Mul", [x, builder.op1("Sigmoid", [x], f"{name}.sigmoid")], f"{name}.silu")
    if kind == "gelu_tanh":
        return builder.op1("Gelu", [x], f"{name}.gelu", approximate="tanh")
    raise ValueError(f"unknown activation {kind!r}")


def gated_mlp(
    builder: GraphBuilder, x: str, layer: LayerWeights, activation: str, name: str, accuracy: AccuracyLevels = EXACT
) -> str:
    """down(act(gate(x)) * up(x)), with SiLU (Llama, Qwen) or tanh-approximated GELU (Gemma);
    gate and up run as one stacked matmul when they are stored alike."""
    fused = stacked([layer.gate_proj, layer.up_proj])
    if fused is None:
        gate = linear(builder, x, layer.gate_proj, f"{name}.gate_proj", accuracy)
        up = linear(builder, x, layer.up_proj, f"{name}.up_proj", accuracy)
    else:
        both = linear(builder, x, fused, f"{name}.gate_up_proj", accuracy)
        gate, up = builder.op("Split", [both, builder.constant(f"{name}.gate_up_sizes", np.array([layer.gate_proj.shape[0], layer.up_proj.shape[0]], dtype=np.int64))], f"{name}.gate_up_split", outputs=2, axis=-1)
    product = builder.op1("Mul", [_activation(builder, gate, activation, name), up], f"{name}.gate_times_up")
    return linear(builder, product, layer.down_proj, f"{name}.down_proj", accuracy)


def scaled(builder: GraphBuilder, x: str, factor: float, name: str) -> str:
    if factor == 1.0:
        return x
    return builder.op1("Mul", [x, builder.constant(f"{name}.factor", np.array(factor, dtype=np.float32))], name)


def soft_capped(builder: GraphBuilder, x: str, cap: float, name: str) -> str:
    """cap * tanh(x / cap): how Gemma 2 bounds its logits; identity when cap is 0."""
    if not cap:
        return x
    inner = scaled(builder, x, 1.0 / cap, f"{name}/divided")
    return scaled(builder, builder.op1("Tanh", [inner], f"{name}/tanh"), cap, name)


def last_positions(builder: GraphBuilder, hidden: str, count: str, name: str, negative: bool = False) -> str:
    """Keeps the last `count` positions of (batch, sequence, hidden): decode needs only one.

    With `negative`, `count` already holds minus the count, so no node computes the Slice's
    start: on CUDA that node would run on the CPU, since Slice reads its starts from host memory.
    """
    starts = count if negative else builder.op1("Neg", [count], f"{name}/starts")
    ends = builder.constant(f"{name}.ends", np.array([np.iinfo(np.int64).max], dtype=np.int64))
    axes = builder.constant(f"{name}.axes", np.array([1], dtype=np.int64))
    return builder.op1("Slice", [hidden, starts, ends, axes], name)



def sampling_candidates(builder: GraphBuilder, logits: str, temperatures: str, count: int) -> tuple[str, str, str]:
    """The `count` largest logits of each row's last position with their token ids (most likely
    first), and the log of the softmax's normalizer at each row's temperature: what a sampler
    needs to draw from the candidates exactly, and to tell when a draw falls beyond them.
    Returns (ids int64 (batch, count), logits float32 (batch, count), log normalizer (batch,))."""
    last_index = builder.constant("logits/last_index", np.array(-1, dtype=np.int64))
    last = builder.op1("Gather", [logits, last_index], "logits/last", axis=1)
    size = builder.constant("sampling/candidate_count", np.array([count], dtype=np.int64))
    values, ids = builder.op("TopK", [last, size], "sampling/top", outputs=2, axis=-1, largest=1, sorted=1)
    columns = builder.constant("sampling/column_axis", np.array([1], dtype=np.int64))
    divisors = builder.op1("Unsqueeze", [temperatures, columns], "sampling/temperature_column")
    tempered = builder.op1("Div", [last, divisors], "sampling/tempered")
    rows = builder.constant("sampling/vocabulary_axis", np.array([-1], dtype=np.int64))
    normalizer = builder.op1("ReduceLogSumExp", [tempered, rows], "sampling/log_normalizer", keepdims=0)
    return ids, values, normalizer
