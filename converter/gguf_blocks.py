"""Re-packs GGUF quantization blocks into MatMulNBits blocks without re-quantizing.

Q8_0, Q4_0 and Q4_1 move over level for level: only the nibble order and the way the zero point
is written change. Other types are dequantized with gguf-py and kept as float32 for now.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType, quants

from converter.errors import ConversionError
from converter.weights import BlockQuantizedWeight, DenseWeight, LinearWeight

BLOCK_SIZE = 32
_FLOAT_TYPES = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}
_BYTES_PER_BLOCK = {GGMLQuantizationType.Q8_0: 34, GGMLQuantizationType.Q4_0: 18, GGMLQuantizationType.Q4_1: 20}


def _blocks(raw: np.ndarray, rows: int, kind: GGMLQuantizationType) -> np.ndarray:
    """View raw bytes as (rows, blocks, bytes per block)."""
    return np.ascontiguousarray(raw).view(np.uint8).reshape(rows, -1, _BYTES_PER_BLOCK[kind])


def _half(block_bytes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(block_bytes).view(np.float16)[..., 0].astype(np.float32)


def _ggml_nibbles_to_levels(nibbles: np.ndarray) -> np.ndarray:
    """GGML stores element j in the low nibble of byte j and element j+16 in its high nibble."""
    return np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)


def _pack_levels_in_order(levels: np.ndarray) -> np.ndarray:
    """MatMulNBits stores element 2i in the low nibble of byte i and element 2i+1 in the high."""
    return (levels[..., 0::2] | (levels[..., 1::2] << 4)).astype(np.uint8)


def repack_q8_0(raw: np.ndarray, rows: int, columns: int) -> BlockQuantizedWeight:
    blocks = _blocks(raw, rows, GGMLQuantizationType.Q8_0)
    scales = _half(blocks[..., 0:2])
    levels = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    zero_points = np.full(scales.shape, 128, dtype=np.uint8)
    return BlockQuantizedWeight(levels, scales, zero_points, 8, BLOCK_SIZE, columns, "Q8_0")


def repack_q4_0(raw: np.ndarray, rows: int, columns: int) -> BlockQuantizedWeight:
    blocks = _blocks(raw, rows, GGMLQuantizationType.Q4_0)
    scales = _half(blocks[..., 0:2])
    levels = _ggml_nibbles_to_levels(blocks[..., 2:])
    zero_points = np.full(scales.shape, 8, dtype=np.uint8)
    return BlockQuantizedWeight(_pack_levels_in_order(levels), scales, zero_points, 4, BLOCK_SIZE, columns, "Q4_0")


def repack_q4_1(raw: np.ndarray, rows: int, columns: int) -> BlockQuantizedWeight:
    """Q4_1 is d * q + m: levels and d move over as they are, m becomes the block minimum."""
    blocks = _blocks(raw, rows, GGMLQuantizationType.Q4_1)
    scales = _half(blocks[..., 0:2])
    minimums = _half(blocks[..., 2:4])
    levels = _ggml_nibbles_to_levels(blocks[..., 4:])
    zero_points = np.zeros(scales.shape, dtype=np.uint8)
    return BlockQuantizedWeight(
        _pack_levels_in_order(levels), scales, zero_points, 4, BLOCK_SIZE, columns, "Q4_1", minimums
    )


_REPACKERS = {
    GGMLQuantizationType.Q8_0: repack_q8_0,
    GGMLQuantizationType.Q4_0: repack_q4_0,
    GGMLQuantizationType.Q4_1: repack_q4_1,
}


def matrix_from_gguf(raw: np.ndarray, kind: GGMLQuantizationType, rows: int, columns: int) -> LinearWeight:
    """A GGUF 2-D tensor (rows = out_features, columns = in_features) as a graph weight."""
    repack = _REPACKERS.get(kind)
    if repack is not None and columns % BLOCK_SIZE == 0:
        return repack(raw, rows, columns)
    return DenseWeight(dense_from_gguf(raw, kind).reshape(rows, columns), kind.name)


def dense_from_gguf(raw: np.ndarray, kind: GGMLQuantizationType) -> np.ndarray:
    """Any GGUF tensor as float32, through gguf-py's reference dequantization."""
    if kind in _FLOAT_TYPES:
        return np.asarray(raw).astype(np.float32)
    try:
        return quants.dequantize(np.asarray(raw), kind).astype(np.float32)
    except NotImplementedError as error:
        raise ConversionError(f"GGUF tensor type {kind.name} is not supported") from error


def quantize_dense(values: np.ndarray, kind: GGMLQuantizationType) -> LinearWeight:
    """Quantizes a float matrix with gguf-py's reference quantizer, then re-packs it."""
    rows, columns = values.shape
    raw = quants.quantize(np.ascontiguousarray(values, dtype=np.float32), kind)
    return matrix_from_gguf(raw, kind, rows, columns)
