"""How a weight matrix is stored in the graph: dense floats or blocks for ORT's MatMulNBits.

A linear layer's weight is kept as (out_features, in_features) like PyTorch's nn.Linear, with
quantization blocks running along in_features. That is the layout of both GGUF rows and
MatMulNBits' packed B input, so GGUF blocks move over without being re-quantized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DenseWeight:
    """A float matrix (out_features, in_features): float32, or float16 to halve the folder
    (`--quant fp16`; widened to float32 inside the graph)."""

    values: np.ndarray
    source_type: str = "F32"

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape  # type: ignore[return-value]

    def dequantize(self) -> np.ndarray:
        return self.values


@dataclass(frozen=True)
class BlockQuantizedWeight:
    """Blocks in MatMulNBits' layout: weight = (q - zero_point) * scale [+ minimum].

    `packed` is uint8 (out_features, blocks, block_size * bits / 8); `scales` float32 and
    `zero_points` uint8, both (out_features, blocks). Blocks hold 32 values, or 16 for the K-quants
    whose sub-blocks are 16 long; levels may use fewer bits than they are stored in (Q5_0's 0..31
    in 8-bit blocks). Scales may be negative (Q6_K, Q3_K). Formats with a float offset per block
    (Q4_1: d * q + m) keep it in `minimums`: ORT's fast kernels take only integer zero points, so
    the graph adds the offset as a small separate product (block sums of the input times the
    minimums).
    """

    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    bits: int
    block_size: int
    in_features: int
    source_type: str
    minimums: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.packed.shape[0], self.in_features)

    def unpacked_levels(self) -> np.ndarray:
        """The quantized levels as uint8 (out_features, blocks, block_size)."""
        if self.bits == 8:
            return self.packed
        low = self.packed & 0x0F
        high = self.packed >> 4
        return np.stack([low, high], axis=-1).reshape(*self.packed.shape[:2], self.block_size)

    def dequantize(self) -> np.ndarray:
        levels = self.unpacked_levels().astype(np.float32)
        values = (levels - self.zero_points.astype(np.float32)[..., None]) * self.scales[..., None]
        if self.minimums is not None:
            values = values + self.minimums[..., None]
        return values.reshape(self.packed.shape[0], -1)[:, : self.in_features]

    def packed_zero_points(self) -> np.ndarray:
        """Zero points as MatMulNBits takes them: 4-bit levels two per byte, 8-bit one per byte."""
        if self.bits == 8:
            return self.zero_points.reshape(-1)
        rows, blocks = self.zero_points.shape
        padded = np.zeros((rows, blocks + blocks % 2), dtype=np.uint8)
        padded[:, :blocks] = self.zero_points
        return (padded[:, 0::2] | (padded[:, 1::2] << 4)).reshape(-1)


@dataclass(frozen=True)
class NibbleSplitWeight:
    """An 8-bit block weight as two 4-bit ones: level u = 16 * high + low, so
    (u - z) * s = (high - z // 16) * 16s + (low - z % 16) * s, exactly.

    ORT's fast kernels for 8-bit weights quantize activations to int8, which the outlier channels
    of a final hidden state do not survive; its 4-bit kernels keep activations float32. The
    split costs no extra storage (two nibbles per level instead of one byte). Both halves keep
    the block size; block minimums go to the low half only, so they are added once.
    """

    high: BlockQuantizedWeight
    low: BlockQuantizedWeight
    source_type: str

    @classmethod
    def of(cls, weight: BlockQuantizedWeight) -> NibbleSplitWeight:
        if weight.bits != 8:
            raise ValueError(f"only 8-bit block weights split into nibbles, not {weight.bits}-bit ones")
        levels = weight.packed
        zero_points = weight.zero_points

        def half(
            nibbles: np.ndarray, zero: np.ndarray, scales: np.ndarray, minimums: np.ndarray | None
        ) -> BlockQuantizedWeight:
            packed = (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).astype(np.uint8)
            return BlockQuantizedWeight(
                packed, scales, zero.astype(np.uint8), 4, weight.block_size, weight.in_features, weight.source_type, minimums
            )

        return cls(
            high=half(levels >> 4, zero_points >> 4, (weight.scales * 16).astype(np.float32), None),
            low=half(levels & 0x0F, zero_points & 0x0F, weight.scales, weight.minimums),
            source_type=weight.source_type,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.high.shape

    def dequantize(self) -> np.ndarray:
        return self.high.dequantize() + self.low.dequantize()


LinearWeight = DenseWeight | BlockQuantizedWeight | NibbleSplitWeight


def stacked(weights: list[LinearWeight]) -> LinearWeight | None:
    """One weight whose rows are the given weights' rows in order (q, k, v into one qkv matrix),
    or None when their storage differs. Stacked matrices read their input once and run as one
    kernel instead of several, which matters most for the small matrices of small models."""
    first = weights[0]
    if any(type(weight) is not type(first) or weight.shape[1] != first.shape[1] for weight in weights):
        return None
    source_type = first.source_type if all(weight.source_type == first.source_type for weight in weights) else "mixed"
    if isinstance(first, DenseWeight):
        if any(weight.values.dtype != first.values.dtype for weight in weights):
            return None
        return DenseWeight(np.concatenate([weight.values for weight in weights]), source_type)
    if isinstance(first, NibbleSplitWeight):
        high = stacked([weight.high for weight in weights])
        low = stacked([weight.low for weight in weights])
        return None if high is None or low is None else NibbleSplitWeight(high, low, source_type)
    if any((weight.bits, weight.block_size) != (first.bits, first.block_size) for weight in weights):
        return None
    minimums = None
    if any(weight.minimums is not None for weight in weights):  # a weight without them has zeros
        minimums = np.concatenate(
            [weight.scales * 0 if weight.minimums is None else weight.minimums for weight in weights]
        ).astype(np.float32)
    return BlockQuantizedWeight(
        packed=np.concatenate([weight.packed for weight in weights]),
        scales=np.concatenate([weight.scales for weight in weights]),
        zero_points=np.concatenate([weight.zero_points for weight in weights]),
        bits=first.bits,
        block_size=first.block_size,
        in_features=first.in_features,
        source_type=source_type,
        minimums=minimums,
    )
