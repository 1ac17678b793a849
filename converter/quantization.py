"""The --quant modes: which storage each weight of a decoder gets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from gguf import GGMLQuantizationType

from converter.gguf_blocks import BLOCK_SIZE, quantize_dense
from converter.model_config import DecoderWeights
from converter.weights import BlockQuantizedWeight, DenseWeight, LinearWeight, NibbleSplitWeight, minimums_fold

QUANT_MODES = ("keep", "fp32", "fp16", "int8", "int4")
OWN_INT4 = "q4_1"  # the converter's own int4: gguf-py's Q4_1 blocks, re-packed
_LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _as(weight: LinearWeight, target: GGMLQuantizationType | str | None) -> LinearWeight:
    if target == "F16":
        return DenseWeight(_as(weight, None).values.astype(np.float16), weight.source_type)
    if target is None:
        if isinstance(weight, DenseWeight):
            return weight if weight.values.dtype == np.float32 else DenseWeight(weight.values.astype(np.float32), weight.source_type)
        return DenseWeight(weight.dequantize(), weight.source_type)
    if weight.shape[1] % BLOCK_SIZE != 0:
        return _as(weight, None)
    return replace(quantize_dense(weight.dequantize(), target), source_type=weight.source_type)


def apply_quantization(weights: DecoderWeights, mode: str, onnx_int4: bool = False) -> DecoderWeights:
    """`keep` leaves GGUF blocks as they are (re-packed, not re-quantized) and floats as floats.

    `int4` stores the layers' matrices as 4-bit blocks of 32 with a float minimum (Q4_1, which
    re-quantizes Q4_0/Q4_1 sources without loss), or with `onnx_int4` leaves them as floats for
    onnxruntime.quantization to quantize in the built graph (all layer matmuls, stacked ones included); the
    embedding table and head get 8-bit blocks, since their errors reach every token. `int8` uses
    8-bit blocks everywhere; `fp32` dequantizes everything; `fp16` stores every matrix as float16
    (half of fp32's folder; computed in float32).
    """
    if mode == "keep":
        return weights
    linear_target, table_target = {
        "fp32": (None, None),
        "fp16": ("F16", "F16"),
        "int8": (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q8_0),
        "int4": (None if onnx_int4 else GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0),
    }[mode]
    layers = [
        replace(layer, **{name: _as(getattr(layer, name), linear_target) for name in _LINEAR_NAMES})
        for layer in weights.layers
    ]
    return DecoderWeights(
        embed_tokens=_as(weights.embed_tokens, table_target),
        layers=layers,
        norm=weights.norm,
        lm_head=None if weights.lm_head is None else _as(weights.lm_head, table_target),
    )


def layer_matrix_names(weights: DecoderWeights) -> list[str]:
    """Every layer matrix's name in the manifest, as Hugging Face names it."""
    return [f"model.layers.{index}.{_group(name)}.{name}" for index in range(len(weights.layers)) for name in _LINEAR_NAMES]


def _group(name: str) -> str:
    return "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"


def split_8bit_weights(weights: DecoderWeights) -> DecoderWeights:
    """8-bit block weights as two exact 4-bit halves, for float32 activations (see NibbleSplitWeight)."""

    def split(weight: LinearWeight) -> LinearWeight:
        if isinstance(weight, BlockQuantizedWeight) and weight.bits == 8:
            return NibbleSplitWeight.of(weight)
        return weight

    layers = [replace(layer, **{name: split(getattr(layer, name)) for name in _LINEAR_NAMES}) for layer in weights.layers]
    return DecoderWeights(
        embed_tokens=split(weights.embed_tokens),
        layers=layers,
        norm=weights.norm,
        lm_head=None if weights.lm_head is None else split(weights.lm_head),
    )


def describe(weight: LinearWeight, fold: bool = False) -> dict:
    """What a tensor became, for the manifest: bits, block size, zero points, minimums, split.
    `fold`: activations are int8, so block minimums fold into the matmul where they can."""
    if isinstance(weight, NibbleSplitWeight):
        zero_points = 16 * weight.high.zero_points + weight.low.zero_points  # the 8-bit ones, as split
        stored = _describe_blocks(8, weight.low.block_size, zero_points, weight.low.minimums)
        return {"source": weight.source_type, "stored": f"{stored}, as two exact int4 halves"}
    if isinstance(weight, BlockQuantizedWeight):
        if fold and minimums_fold(weight):
            stored = (
                f"int{weight.bits} blocks of {weight.block_size}, uint8 zero points per block, block minimums folded "
                f"in (integer zero points plus int{weight.bits} remainder columns over the input's block sums)"
            )
        else:
            stored = _describe_blocks(weight.bits, weight.block_size, weight.zero_points, weight.minimums)
        return {"source": weight.source_type, "stored": stored}
    if weight.values.dtype == np.float16:
        return {"source": weight.source_type, "stored": "float16, widened to float32 in the graph"}
    return {"source": weight.source_type, "stored": "float32"}


def _describe_blocks(bits: int, block_size: int, zero_points: np.ndarray, minimums: np.ndarray | None) -> str:
    first = int(zero_points.flat[0])
    zero_point = f"zero point {first}" if np.all(zero_points == first) else "uint8 zero points per block"
    offsets = ", float block minimums" if minimums is not None else ""
    return f"int{bits} blocks of {block_size}, {zero_point}{offsets}"


def quantization_table(weights: DecoderWeights, fold: bool = False) -> dict[str, dict]:
    """The manifest's entry per tensor. The embedding table is read by a gather, which keeps its
    minimums as they are; the head and layer matrices fold theirs when `fold` (int8 activations)."""
    table = {"model.embed_tokens": describe(weights.embed_tokens)}
    for index, layer in enumerate(weights.layers):
        for name in _LINEAR_NAMES:
            table[f"model.layers.{index}.{_group(name)}.{name}"] = describe(getattr(layer, name), fold)
    table["lm_head"] = {"tied_to": "model.embed_tokens"} if weights.lm_head is None else describe(weights.lm_head, fold)
    return table


