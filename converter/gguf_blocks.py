"""Re-packs GGUF quantization blocks into MatMulNBits blocks without re-quantizing.

Every supported type moves over level for level: only the bit layout, the way the zero point is
written and the scale of each block change, so `BlockQuantizedWeight.dequantize` reproduces
gguf-py's dequantization exactly.

- Q8_0, Q4_0, Q5_0: d * (q - z) is a block with an integer zero point.
- Q4_1, Q5_1: d * q + m keeps zero point 0 and puts m in the block minimums.
- K-quants split each super-block of 256 into sub-blocks with their own 6-bit (8-bit for Q6_K)
  scale, so each sub-block becomes one block: scale = d * sub-block scale, and for the types
  with mins (Q2_K, Q4_K, Q5_K) minimum = -dmin * sub-block min.
- 5- and 6-bit levels are stored as 8-bit blocks; 2- and 3-bit ones as 4-bit blocks.

Other types are dequantized with gguf-py and kept as float32.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from converter.errors import ConversionError
from converter.weights import BlockQuantizedWeight, DenseWeight, LinearWeight

# The block size of the types --quant re-quantizes to (Q8_0, Q4_1).
BLOCK_SIZE = 32
_FLOAT_TYPES = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}


def _blocks(raw: np.ndarray, rows: int, kind: GGMLQuantizationType) -> np.ndarray:
    """View raw bytes as (rows, blocks, bytes per block); K-quants' blocks are super-blocks."""
    _, bytes_per_block = GGML_QUANT_SIZES[kind]
    return np.ascontiguousarray(raw).view(np.uint8).reshape(rows, -1, bytes_per_block)


def _half(block_bytes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(block_bytes).view(np.float16)[..., 0].astype(np.float32)


def _ggml_nibbles_to_levels(nibbles: np.ndarray) -> np.ndarray:
    """GGML stores element j in the low nibble of byte j and element j+16 in its high nibble."""
    return np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)


def _pack_levels_in_order(levels: np.ndarray) -> np.ndarray:
    """MatMulNBits stores element 2i in the low nibble of byte i and element 2i+1 in the high."""
    return (levels[..., 0::2] | (levels[..., 1::2] << 4)).astype(np.uint8)


def _bit_fields(packed: np.ndarray, width: int) -> np.ndarray:
    """(..., n) bytes -> (..., 8 / width, n): field k of every byte is bits [k * width, (k + 1) * width)."""
    shifts = np.arange(0, 8, width, dtype=np.uint8).reshape(-1, 1)
    return (packed[..., None, :] >> shifts) & np.uint8((1 << width) - 1)


def _sub_blocks(values: np.ndarray, size: int) -> np.ndarray:
    """(rows, super-blocks, ...) -> (rows, sub-blocks, size): each super-block's values in order."""
    return values.reshape(values.shape[0], -1, size)


def _per_sub_block(super_block_values: np.ndarray, sub_block_values: np.ndarray) -> np.ndarray:
    """A super-block's float times each of its sub-blocks' integers, as (rows, sub-blocks)."""
    product = super_block_values[..., None] * sub_block_values.astype(np.float32)
    return product.reshape(product.shape[0], -1)


def _k_scales_and_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K and Q5_K's eight 6-bit scales and eight 6-bit mins, packed in 12 bytes.

    Bytes 0-3 hold scales 0-3 and bytes 4-7 mins 0-3 in their low 6 bits; scales and mins 4-7
    take their low 4 bits from bytes 8-11 and their top 2 bits from the top of bytes 0-3 / 4-7.
    """
    scale_bytes, min_bytes, shared = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    scales = np.concatenate([scale_bytes & 0x3F, (shared & 0x0F) | ((scale_bytes >> 2) & 0x30)], axis=-1)
    mins = np.concatenate([min_bytes & 0x3F, (shared >> 4) | ((min_bytes >> 2) & 0x30)], axis=-1)
    return scales, mins


def _k_low_nibbles(quants_bytes: np.ndarray) -> np.ndarray:
    """Q4_K and Q5_K's 4-bit parts: 32 bytes give sub-block 2j its low nibbles, 2j+1 its high."""
    chunks = quants_bytes.reshape(*quants_bytes.shape[:2], -1, 32)
    return _sub_blocks(_bit_fields(chunks, 4), 32)


def repack_q8_0(raw: np.ndarray, rows: int, columns: int) -> BlockQuantizedWeight:
    blocks = _blocks(raw, rows, GGMLQuantizationType.Q8_0)
    scales = _half(blocks[..., 0:2])
    levels = blocks[..., 2:] ^ np.uint8(0x80)  # int8 q + 128 as uint8: q's sign bit flipped
    zero_points = np.full(scales.shape, 128, dtype=np.uint8)
    return BlockQuantizedWeight(levels, scales, zero_points, 8, 32, columns, "Q8_0")


def repack_q4_0(raw: np.ndarray, rows: int, columns: int) -> BlockQuantizedWeight:
    blocks = _blocks(raw, rows, GGMLQuantizationType.Q4_0)
    scales = _half(blocks[..., 0:2])
    levels = _ggml_nibbles_to_levels(blocks[..., 2:])
    zero_points = np.full(scales.shape, 8, dtype=np.uint8)
    return BlockQuantizedWeight(_pack_levels_in_order(levels), scales, zero_points, 4, 32, columns, "Q4_0")


def repack_q4_1(raw: np.ndarray, rows: int, columns: int) -> BlockQuantizedWeight:
    """Q4_1 is d * q + m: levels and d move over as they are, m becomes the block minimum."""
    blocks = _blocks(raw, rows, GGMLQuantizationType.Q4_1)
    scales = _half(blocks[..., 0:2])
    minimums = _half(blocks[..., 2:4])
    levels = _ggml_nibbles_to_levels(blocks[..., 4:])
    zero_points = np.zeros(scales.shape, dtype=np.uint8)
    return BlockQuantizedWeight(
        _pack_levels_in_order(levels), scales, zero_points, 4, 32, columns, "Q4_1", minimums
    )


def _five_bit_levels(high_bit_mask: np.ndarray, nibbles: np.ndarray) -> np.ndarray:
    """Q5_0 and Q5_1: bit j of the little-endian 32-bit mask is the fifth bit of element j."""
    high_bits = np.unpackbits(high_bit_mask, axis=-1, bitorder="little")
    return _ggml_nibbles_to_levels(nibbles) | (high_bits << 4)


def repack_q5_0(raw: np.ndarray, rows: int, columns: int) -> BlockQuantizedWeight:
    """Q5_0 is d * (q - 16) with 5-bit q: 8-bit blocks whose levels use 0..31, zero point 16."""
    blocks = _blocks(raw, rows, GGMLQuantizationType.Q5_0)
    scales = _half(blocks[..., 0:2])
    levels = _five_bit_levels(blocks[..., 2:6], blocks[..., 6:22])
    zero_points = np.full(scales.shape, 16, dtype=np.uint8)
    return BlockQuantizedWeight(levels, scales, zero_points, 8, 32, columns, "Q5_0")


def repack_q5_1(raw: np.ndarray, rows: int, columns: int) -> BlockQuantizedWeight:
    """Q5_1 is d * q + m with 5-bit q: 8-bit blocks, zero point 0, m as the block minimum."""
    blocks = _blocks(raw, rows, GGMLQuantizationType.Q5_1)
    scales = _half(blocks[..., 0:2])
    minimums = _half(blocks[..., 2:4])
    levels = _five_bit_levels(blocks[..., 4:8], blocks[..., 8:24])
    zero_points = np.zeros(scales.shape, dtype=np.uint8)
    return BlockQuantizedWeight(levels, scales, zero_points, 8, 32, columns, "Q5_1", minimums)


def _k_with_mins(
    blocks: np.ndarray, levels: np.ndarray, bits: int, columns: int, source_type: str
) -> BlockQuantizedWeight:
    """Q4_K and Q5_K: sub-block i is d * scale_i * q - dmin * min_i, so its block minimum is
    -dmin * min_i whether or not its scale is 0."""
    sub_block_scales, sub_block_mins = _k_scales_and_mins(blocks[..., 4:16])
    scales = _per_sub_block(_half(blocks[..., 0:2]), sub_block_scales)
    minimums = -_per_sub_block(_half(blocks[..., 2:4]), sub_block_mins)
    zero_points = np.zeros(scales.shape, dtype=np.uint8)
    packed = _pack_levels_in_order(levels) if bits == 4 else levels
    return BlockQuantizedWeight(packed, scales, zero_points, bits, 32, columns, source_type, minimums)


def repack_q4_k(raw: np.ndarray, rows: int, columns: int) -> BlockQuantizedWeight:
    """Q4_K: 4-bit blocks of 32, one per sub-block, with block minimums."""
    blocks = _blocks(raw, rows, GGMLQuantizationType.Q4_K)
    return _k_with_mins(blocks, _k_low_nibbles(blocks[..., 16:144]), 4, columns, "Q4_K")


def repack_q5_k(raw: np.ndarray, rows: int, columns: int) -> BlockQuantizedWeight:
    """Q5_K: Q4_K plus a fifth bit (bit i of byte j is element j of sub-block i); 8-bit blocks."""
    blocks = _blocks(raw, rows, GGMLQuantizationType.Q5_K)
    high_bits = _sub_blocks(_bit_fields(blocks[..., 16:48], 1), 32)
    levels = _k_low_nibbles(blocks[..., 48:176]) | (high_bits << 4)
    return _k_with_mins(blocks, levels, 8, columns, "Q5_K")


def repack_q6_k(raw: np.ndarray, rows: int, columns: int) -> BlockQuantizedWeight:
    """Q6_K is d * scale_i * (q - 32) over 16 sub-blocks of 16 with int8 scales: 8-bit blocks of 16,
    zero point 32. A negative scale stays negative; MatMulNBits and GatherBlockQuantized take it."""
    blocks = _blocks(raw, rows, GGMLQuantizationType.Q6_K)
    # Each half of a super-block (128 values) takes its low 4 bits from 64 bytes, low nibbles
    # first, and its top 2 bits from 32 bytes, one 2-bit field per 32 values.
    low = _bit_fields(blocks[..., 0:128].reshape(rows, -1, 2, 64), 4).reshape(rows, -1, 256)
    high = _bit_fields(blocks[..., 128:192].reshape(rows, -1, 2, 32), 2).reshape(rows, -1, 256)
    levels = _sub_blocks(low | (high << 4), 16)
    scales = _per_sub_block(_half(blocks[..., 208:210]), blocks[..., 192:208].view(np.int8))
    zero_points = np.full(scales.shape, 32, dtype=np.uint8)
    return BlockQuantizedWeight(levels, scales, zero_points, 8, 16, columns, "Q6_K")


def repack_q2_k(raw: np.ndarray, rows: int, columns: int) -> BlockQuantizedWeight:
    """Q2_K is d * scale_i * q - dmin * min_i over 16 sub-blocks of 16 (4-bit scale and min per
    byte): 4-bit blocks of 16 whose levels use 0..3, with block minimums."""
    blocks = _blocks(raw, rows, GGMLQuantizationType.Q2_K)
    levels = _sub_blocks(_bit_fields(blocks[..., 16:80].reshape(rows, -1, 2, 32), 2), 16)
    scales_and_mins = blocks[..., 0:16]
    scales = _per_sub_block(_half(blocks[..., 80:82]), scales_and_mins & 0x0F)
    minimums = -_per_sub_block(_half(blocks[..., 82:84]), scales_and_mins >> 4)
    zero_points = np.zeros(scales.shape, dtype=np.uint8)
    return BlockQuantizedWeight(
        _pack_levels_in_order(levels), scales, zero_points, 4, 16, columns, "Q2_K", minimums
    )


def repack_q3_k(raw: np.ndarray, rows: int, columns: int) -> BlockQuantizedWeight:
    """Q3_K is d * scale_i * q with q in -4..3 over 16 sub-blocks of 16 (6-bit signed scales):
    4-bit blocks of 16 whose levels use 0..7, zero point 4.

    q is the 2-bit field minus 4 where the sub-block's bit of the high mask is clear, so the level
    q + 4 is the 2-bit field plus 4 times that bit.
    """
    blocks = _blocks(raw, rows, GGMLQuantizationType.Q3_K)
    high_bits = _sub_blocks(_bit_fields(blocks[..., 0:32], 1), 16)
    low_bits = _sub_blocks(_bit_fields(blocks[..., 32:96].reshape(rows, -1, 2, 32), 2), 16)
    levels = low_bits | (high_bits << 2)
    # Sixteen 6-bit scales: low 4 bits from the nibbles of bytes 0-7, top 2 bits from bytes 8-11.
    packed_scales = blocks[..., 96:108]
    low_scale_bits = _bit_fields(packed_scales[..., 0:8], 4).reshape(rows, -1, 16)
    high_scale_bits = _bit_fields(packed_scales[..., 8:12], 2).reshape(rows, -1, 16)
    sub_block_scales = (low_scale_bits | (high_scale_bits << 4)).astype(np.int8) - np.int8(32)
    scales = _per_sub_block(_half(blocks[..., 108:110]), sub_block_scales)
    zero_points = np.full(scales.shape, 4, dtype=np.uint8)
    return BlockQuantizedWeight(_pack_levels_in_order(levels), scales, zero_points, 4, 16, columns, "Q3_K")


_REPACKERS: dict[GGMLQuantizationType, Callable[[np.ndarray, int, int], BlockQuantizedWeight]] = {
    GGMLQuantizationType.Q8_0: repack_q8_0,
    GGMLQuantizationType.Q4_0: repack_q4_0,
    GGMLQuantizationType.Q4_1: repack_q4_1,
    GGMLQuantizationType.Q5_0: repack_q5_0,
    GGMLQuantizationType.Q5_1: repack_q5_1,
    GGMLQuantizationType.Q2_K: repack_q2_k,
    GGMLQuantizationType.Q3_K: repack_q3_k,
    GGMLQuantizationType.Q4_K: repack_q4_k,
    GGMLQuantizationType.Q5_K: repack_q5_k,
    GGMLQuantizationType.Q6_K: repack_q6_k,
}


def matrix_from_gguf(raw: np.ndarray, kind: GGMLQuantizationType, rows: int, columns: int) -> LinearWeight:
    """A GGUF 2-D tensor (rows = out_features, columns = in_features) as a graph weight.

    Rows that are not a whole number of the type's (super-)blocks cannot be re-packed; GGUF never
    writes them, and such a tensor is read through gguf-py's dequantization instead.
    """
    repack = _REPACKERS.get(kind)
    if repack is not None and columns % GGML_QUANT_SIZES[kind][0] == 0:
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
