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
    with float32 activations the graph adds the offset as a small separate product (block sums
    of the input times the minimums), and with int8 ones fold_minimums moves it inside.
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


def gather_layout_for_cuda(weight: LinearWeight) -> LinearWeight:
    """The embedding table in a layout ORT's CUDA GatherBlockQuantized reads correctly: 4-bit
    blocks with integer zero points (Q4_0, Q3_K) gathered wrong rows there (relative error 1.0,
    measured on an H200 with onnxruntime-gpu 1.31), so their levels widen to one byte each,
    exactly. Other layouts come back as they are (8-bit, and 4-bit with zero points of 0)."""
    if not isinstance(weight, BlockQuantizedWeight) or weight.bits != 4 or not weight.zero_points.any():
        return weight
    return BlockQuantizedWeight(
        packed=weight.unpacked_levels(),
        scales=weight.scales,
        zero_points=weight.zero_points,
        bits=8,
        block_size=weight.block_size,
        in_features=weight.in_features,
        source_type=weight.source_type,
        minimums=weight.minimums,
    )


def _minimum_split(weight: BlockQuantizedWeight) -> tuple[np.ndarray, np.ndarray] | None:
    """Each block minimum as an integer zero-point shift and a float remainder (see
    fold_minimums), or None when the weight has no minimums or one is out of the shifts' reach."""
    if weight.minimums is None:
        return None
    top = (1 << weight.bits) - 1
    scales = weight.scales.astype(np.float32)
    minimums = weight.minimums.astype(np.float32)
    zero_points = weight.zero_points.astype(np.int32)
    safe = np.where(scales != 0, scales, 1.0)
    shift = np.where(scales != 0, np.rint(-minimums / safe), 0.0)
    shift = np.clip(shift, -zero_points, top - zero_points).astype(np.int32)
    remainders = minimums + shift * scales
    if np.any(np.abs(remainders) > np.abs(scales) * 0.5 * (1 + 1e-6)):
        return None
    return shift, remainders


def minimums_fold(weight: BlockQuantizedWeight) -> bool:
    """Whether fold_minimums takes this weight (what the manifest reports for int8 activations)."""
    return _minimum_split(weight) is not None


def fold_minimums(weight: BlockQuantizedWeight) -> BlockQuantizedWeight | None:
    """The block minimums moved inside one MatMulNBits whose input is x followed by x's block
    sums, for int8 activations (decode steps on SmolLM2 Q4_1 took 7.4 instead of 8.7 ms: fewer
    graph ops, and no float32 minimums matrix to read; perplexity moved closer to float32
    activations' rather than away).

    Each minimum m splits into an integer zero point and a remainder: with z = round(-m / s),
    (q - z0) * s + m = (q - z0 - z) * s + r where r = m + z * s, |r| <= s / 2. Row by row the
    remainders become extra input features, one per block, multiplied by the input's block sums
    and quantized as blocks of their own (asymmetric, round to nearest). What is lost is that last
    rounding, a small part of r; the product of levels and scales stays exact.

    None when some block's minimum is out of the zero points' reach (|r| > s / 2, as in a block
    whose weights all share one sign, or a zero scale beside a minimum): a few large remainders
    would coarsen the rounding of all the others, so such weights keep the separate product.
    """
    split = _minimum_split(weight)
    if split is None:
        return None
    shift, remainders = split
    top = (1 << weight.bits) - 1
    rows, blocks = weight.scales.shape
    size = weight.block_size
    scales = weight.scales.astype(np.float32)
    remainders = np.pad(remainders, ((0, 0), (0, -(-blocks // size) * size - blocks)))
    extra = remainders.reshape(rows, -1, size)
    low = np.minimum(extra.min(axis=-1), 0.0)
    high = np.maximum(extra.max(axis=-1), 0.0)
    extra_scales = ((high - low) / top).astype(np.float32)
    safe_extra = np.where(extra_scales != 0, extra_scales, 1.0)
    extra_zero_points = np.where(extra_scales != 0, np.clip(np.rint(-low / safe_extra), 0, top), 0).astype(np.uint8)
    extra_levels = np.clip(np.rint(extra / safe_extra[..., None]) + extra_zero_points[..., None], 0, top).astype(np.uint8)
    if weight.bits == 4:
        extra_levels = extra_levels[..., 0::2] | (extra_levels[..., 1::2] << 4)
    return BlockQuantizedWeight(
        packed=np.concatenate([weight.packed, extra_levels], axis=1),
        scales=np.concatenate([scales, extra_scales], axis=1),
        zero_points=np.concatenate([(weight.zero_points + shift).astype(np.uint8), extra_zero_points], axis=1),
        bits=weight.bits,
        block_size=size,
        in_features=weight.in_features + block_sum_features(weight.in_features, size),
        source_type=weight.source_type,
    )


def block_sum_features(in_features: int, block_size: int) -> int:
    """How many block sums a folded weight reads: one per block, then zero sums up to a multiple
    of 8, since ORT's CUDA MatMulNBits takes its fast path only when K is one."""
    return -(-(in_features // block_size) // 8) * 8


def block_indicator(in_features: int, block_size: int) -> BlockQuantizedWeight:
    """A 4-bit weight whose row b is 1 over block b of the input and 0 elsewhere (rows past the
    last block are all 0): x @ it.T sums x block by block, the extra input that fold_minimums'
    weights expect."""
    blocks = in_features // block_size
    rows = block_sum_features(in_features, block_size)
    levels = np.zeros((rows, blocks, block_size), dtype=np.uint8)
    levels[np.arange(blocks), np.arange(blocks)] = 1
    return BlockQuantizedWeight(
        packed=levels[..., 0::2] | (levels[..., 1::2] << 4),
        scales=np.ones((rows, blocks), dtype=np.float32),
        zero_points=np.zeros((rows, blocks), dtype=np.uint8),
        bits=4,
        block_size=block_size,
        in_features=in_features,
        source_type="block indicator",
    )


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
