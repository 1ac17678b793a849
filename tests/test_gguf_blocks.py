"""GGUF blocks re-packed for MatMulNBits reproduce gguf-py's dequantization inside ONNX Runtime."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, quants

from converter import blocks
from converter.gguf_blocks import matrix_from_gguf
from converter.graph_builder import FLOAT, INT64, GraphBuilder
from converter.quantization import describe
from converter.weights import BlockQuantizedWeight, DenseWeight, NibbleSplitWeight, block_sum_features, fold_minimums

Q = GGMLQuantizationType
ROWS, COLUMNS = 48, 512  # two K-quant super-blocks per row

# How each GGUF type is stored: (bits, block size, zero point, has block minimums).
LAYOUTS = {
    Q.Q8_0: (8, 32, 128, False),
    Q.Q4_0: (4, 32, 8, False),
    Q.Q4_1: (4, 32, 0, True),
    Q.Q5_0: (8, 32, 16, False),
    Q.Q5_1: (8, 32, 0, True),
    Q.Q2_K: (4, 16, 0, True),
    Q.Q3_K: (4, 16, 4, False),
    Q.Q4_K: (4, 32, 0, True),
    Q.Q5_K: (8, 32, 0, True),
    Q.Q6_K: (8, 16, 32, False),
}
EIGHT_BIT_TYPES = [kind for kind, (bits, *_) in LAYOUTS.items() if bits == 8]

# Byte offsets of each K-quant super-block's fp16 factors (d, then dmin where there is one).
K_QUANT_FACTORS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def gguf_data(kind: GGMLQuantizationType, rows: int = ROWS, columns: int = COLUMNS, seed: int = 7) -> np.ndarray:
    """Valid GGUF bytes: gguf-py's quantizer where it has one; otherwise random blocks.

    Every bit pattern of a K-quant's levels and packed sub-block scales is a valid block, so
    random bytes with sane fp16 super-block factors cover every level and scale, negative and
    zero ones included.
    """
    rng = np.random.default_rng(seed)
    if kind not in K_QUANT_FACTORS:
        return quants.quantize(rng.standard_normal((rows, columns)).astype(np.float32), kind)
    block_values, block_bytes = GGML_QUANT_SIZES[kind]
    data = rng.integers(0, 256, size=(rows, columns // block_values, block_bytes), dtype=np.uint8)
    for offset in K_QUANT_FACTORS[kind]:
        factors = rng.uniform(1e-4, 1e-2, size=data.shape[:2]).astype(np.float16)
        data[..., offset : offset + 2] = factors[..., None].view(np.uint8)
    return data.reshape(rows, -1)


def assert_close(actual: np.ndarray, expected: np.ndarray, relative: float = 1e-6) -> None:
    np.testing.assert_allclose(actual, expected, rtol=relative, atol=relative * float(np.abs(expected).max()))


def run_graph(builder: GraphBuilder, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(builder.model().SerializeToString(), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, feeds)
    return output


def matmul_in_onnx_runtime(weight, x: np.ndarray, accuracy: blocks.AccuracyLevels = blocks.EXACT) -> np.ndarray:
    """x (batch, sequence, in_features) @ W.T through `blocks.linear` (MatMulNBits for blocks)."""
    out_features, in_features = weight.shape
    builder = GraphBuilder("probe")
    x_name = builder.input("x", FLOAT, [*x.shape[:2], in_features])
    builder.expose(blocks.linear(builder, x_name, weight, "probe", accuracy), "y", FLOAT, [*x.shape[:2], out_features])
    return run_graph(builder, {"x": x})


def weight_seen_by_onnx_runtime(weight) -> np.ndarray:
    """Runs x @ W.T with x = identity in a one-op graph, which reads W back out of the kernel."""
    identity = np.eye(weight.shape[1], dtype=np.float32)[None]  # (batch, sequence, features) as in the decoder
    return matmul_in_onnx_runtime(weight, identity)[0].T


def rows_gathered_by_onnx_runtime(weight, token_ids: np.ndarray) -> np.ndarray:
    """Table rows looked up through `blocks.embedding` (GatherBlockQuantized for blocks)."""
    builder = GraphBuilder("probe")
    ids = builder.input("input_ids", INT64, [1, len(token_ids)])
    builder.expose(blocks.embedding(builder, ids, weight, "probe"), "rows", FLOAT, [1, len(token_ids), weight.shape[1]])
    return run_graph(builder, {"input_ids": token_ids[None].astype(np.int64)})[0]


def as_stored(weight: BlockQuantizedWeight, split: bool):
    return NibbleSplitWeight.of(weight) if split else weight


@pytest.mark.parametrize("kind", list(LAYOUTS), ids=lambda kind: kind.name)
def test_each_type_is_repacked_into_its_block_layout(kind):
    weight = matrix_from_gguf(gguf_data(kind), kind, ROWS, COLUMNS)

    layout = (weight.bits, weight.block_size, set(weight.zero_points.flat), weight.minimums is not None)

    bits, block_size, zero_point, has_minimums = LAYOUTS[kind]
    assert isinstance(weight, BlockQuantizedWeight) and layout == (bits, block_size, {zero_point}, has_minimums)


@pytest.mark.parametrize("kind", list(LAYOUTS), ids=lambda kind: kind.name)
def test_repacked_blocks_dequantize_like_gguf_py(kind):
    data = gguf_data(kind)

    weight = matrix_from_gguf(data, kind, ROWS, COLUMNS)

    assert_close(weight.dequantize(), quants.dequantize(data, kind))


def zero_the_scale_of_sub_block_1(data: np.ndarray) -> None:
    """Q4_K and Q5_K: sub-block 1's scale is the low 6 bits of byte 5, its min those of byte 9."""
    data[0, 0, 5] &= 0xC0
    data[0, 0, 9] |= 0x01


def zero_the_scale_of_sub_block_3(data: np.ndarray) -> None:
    """Q2_K: sub-block 3's scale and min are the low and high nibbles of byte 3."""
    data[0, 0, 3] = 0x50


@pytest.mark.parametrize(
    "kind, zero_the_scale, sub_block",
    [
        (Q.Q4_K, zero_the_scale_of_sub_block_1, slice(32, 64)),
        (Q.Q5_K, zero_the_scale_of_sub_block_1, slice(32, 64)),
        (Q.Q2_K, zero_the_scale_of_sub_block_3, slice(48, 64)),
    ],
    ids=["Q4_K", "Q5_K", "Q2_K"],
)
def test_k_quant_sub_block_with_zero_scale_keeps_its_minimum(kind, zero_the_scale, sub_block):
    data = gguf_data(kind).reshape(ROWS, -1, GGML_QUANT_SIZES[kind][1])
    zero_the_scale(data)
    data = data.reshape(ROWS, -1)
    expected = quants.dequantize(data, kind)
    assert np.all(expected[0, sub_block] == expected[0, sub_block.start]) and expected[0, sub_block.start] != 0

    weight = matrix_from_gguf(data, kind, ROWS, COLUMNS)

    assert_close(weight_seen_by_onnx_runtime(weight), expected)


def test_q4_1_block_with_zero_scale_keeps_its_minimum():
    data = gguf_data(Q.Q4_1, seed=3).reshape(ROWS, -1, 20)
    data[0, 1, 0:2] = np.zeros(1, dtype=np.float16).view(np.uint8)  # d = 0, m unchanged: every weight equals m
    data[5, 2, 0:2] = np.zeros(1, dtype=np.float16).view(np.uint8)
    data = data.reshape(ROWS, -1)
    expected = quants.dequantize(data, Q.Q4_1)
    assert np.all(expected[0, 32:64] == expected[0, 32]) and expected[0, 32] != 0

    weight = matrix_from_gguf(data, Q.Q4_1, ROWS, COLUMNS)

    assert_close(weight_seen_by_onnx_runtime(weight), expected)


STORED_LAYOUTS = [(kind, False) for kind in LAYOUTS] + [(kind, True) for kind in EIGHT_BIT_TYPES]
STORED_IDS = [f"{kind.name}{'-nibble-split' if split else ''}" for kind, split in STORED_LAYOUTS]


@pytest.mark.parametrize("kind, split", STORED_LAYOUTS, ids=STORED_IDS)
def test_matmul_nbits_reads_the_gguf_weights(kind, split):
    data = gguf_data(kind)
    weight = as_stored(matrix_from_gguf(data, kind, ROWS, COLUMNS), split)

    seen = weight_seen_by_onnx_runtime(weight)

    assert_close(seen, quants.dequantize(data, kind))


@pytest.mark.parametrize("kind, split", STORED_LAYOUTS, ids=STORED_IDS)
def test_decode_step_product_equals_the_float_product(kind, split):
    data = gguf_data(kind)
    weight = as_stored(matrix_from_gguf(data, kind, ROWS, COLUMNS), split)
    x = np.random.default_rng(11).standard_normal((1, 1, COLUMNS)).astype(np.float32)

    product = matmul_in_onnx_runtime(weight, x)

    expected = x.astype(np.float64) @ quants.dequantize(data, kind).astype(np.float64).T
    assert_close(product, expected, relative=1e-5)


@pytest.mark.parametrize("kind, split", STORED_LAYOUTS, ids=STORED_IDS)
def test_gather_block_quantized_returns_the_gguf_rows(kind, split):
    data = gguf_data(kind)
    weight = as_stored(matrix_from_gguf(data, kind, ROWS, COLUMNS), split)
    token_ids = np.array([0, 17, 47, 17])

    rows = rows_gathered_by_onnx_runtime(weight, token_ids)

    assert_close(rows, quants.dequantize(data, kind)[token_ids])


def test_manifest_says_what_a_nibble_split_q6_k_became():
    weight = NibbleSplitWeight.of(matrix_from_gguf(gguf_data(Q.Q6_K), Q.Q6_K, ROWS, COLUMNS))

    assert describe(weight) == {"source": "Q6_K", "stored": "int8 blocks of 16, zero point 32, as two exact int4 halves"}


def test_manifest_says_where_block_minimums_went():
    weight = matrix_from_gguf(gguf_data(Q.Q4_K), Q.Q4_K, ROWS, COLUMNS)

    assert describe(weight) == {"source": "Q4_K", "stored": "int4 blocks of 32, zero point 0, float block minimums"}


def test_rows_that_split_a_super_block_fall_back_to_exact_floats():
    """GGUF never writes such rows; a malformed tensor is still read rather than mis-repacked."""
    data = gguf_data(Q.Q4_K, rows=ROWS // 2, columns=256)

    weight = matrix_from_gguf(data, Q.Q4_K, ROWS, 128)

    assert isinstance(weight, DenseWeight) and np.array_equal(weight.values, quants.dequantize(data, Q.Q4_K).reshape(ROWS, 128))


def test_types_without_a_block_repacking_fall_back_to_exact_floats():
    data = gguf_data(Q.TQ2_0, columns=256)

    weight = matrix_from_gguf(data, Q.TQ2_0, ROWS, 256)

    assert isinstance(weight, DenseWeight) and np.array_equal(weight.values, quants.dequantize(data, Q.TQ2_0))


def every_nth_row(weight: BlockQuantizedWeight, step: int) -> BlockQuantizedWeight:
    minimums = None if weight.minimums is None else weight.minimums[::step]
    return replace(
        weight, packed=weight.packed[::step], scales=weight.scales[::step], zero_points=weight.zero_points[::step], minimums=minimums
    )


def test_every_gemma3_matrix_is_repacked_losslessly(gemma3_gguf_path):
    """Gemma 3 270M Q4_K_M holds Q8_0, Q5_0, Q4_K and Q6_K matrices. Rows are re-packed
    independently, so the 262144-row embedding table is compared on 16384 rows spread over it."""
    mismatched = []
    for tensor in GGUFReader(gemma3_gguf_path).tensors:
        if len(tensor.shape) != 2:
            continue
        columns, rows = (int(size) for size in tensor.shape)
        weight = matrix_from_gguf(tensor.data, tensor.tensor_type, rows, columns)
        step = max(1, rows // 16384)
        expected = quants.dequantize(tensor.data[::step], tensor.tensor_type)
        exact = isinstance(weight, BlockQuantizedWeight) and np.allclose(
            every_nth_row(weight, step).dequantize(), expected, rtol=1e-6, atol=1e-6 * float(np.abs(expected).max())
        )
        if not exact:
            mismatched.append(f"{tensor.name} ({tensor.tensor_type.name}, {type(weight).__name__})")

    assert mismatched == []


MINIMUM_TYPES = [kind for kind, (*_, has_minimums) in LAYOUTS.items() if has_minimums]


@pytest.mark.parametrize("kind", [Q.Q4_1, Q.Q5_1], ids=lambda kind: kind.name)
def test_folded_minimums_change_only_the_remainder_left_after_integer_zero_points(kind):
    weight = matrix_from_gguf(gguf_data(kind), kind, ROWS, COLUMNS)
    folded = fold_minimums(weight)
    blocks_per_row = COLUMNS // weight.block_size
    x = np.random.default_rng(5).standard_normal((4, COLUMNS))
    sums = x.reshape(4, blocks_per_row, weight.block_size).sum(-1)
    padding = np.zeros((4, folded.shape[1] - COLUMNS - blocks_per_row))

    product = np.concatenate([x, sums, padding], axis=1) @ folded.dequantize().astype(np.float64).T
    expected = x @ weight.dequantize().astype(np.float64).T

    assert folded.minimums is None and folded.shape == (ROWS, COLUMNS + block_sum_features(COLUMNS, weight.block_size))
    # The levels and scales move over untouched: only the zero points take part of the minimums.
    assert np.array_equal(folded.packed[:, :blocks_per_row], weight.packed)
    assert np.array_equal(folded.scales[:, :blocks_per_row], weight.scales)
    # What the remainders' own rounding costs: a small fraction of the product.
    error = np.abs(product - expected).max() / np.abs(expected).max()
    assert error < (0.01 if weight.bits == 4 else 0.0005), error


def test_minimums_out_of_the_zero_points_reach_are_not_folded():
    values = np.random.default_rng(3).standard_normal((ROWS, COLUMNS)).astype(np.float32)
    values[7, 64:96] = np.abs(values[7, 64:96]) + 1  # one block whose weights are all positive
    weight = matrix_from_gguf(quants.quantize(values, Q.Q4_1), Q.Q4_1, ROWS, COLUMNS)

    others = matrix_from_gguf(quants.quantize(np.delete(values, 7, axis=0), Q.Q4_1), Q.Q4_1, ROWS - 1, COLUMNS)

    assert fold_minimums(weight) is None
    assert fold_minimums(others) is not None


@pytest.mark.parametrize("kind", MINIMUM_TYPES, ids=lambda kind: kind.name)
def test_int8_activations_track_the_float_product_whether_minimums_fold_or_not(kind):
    """Q4_1 and Q5_1 fold; these random K-quant blocks hold minimums out of reach, so they keep
    the separate minimums product."""
    data = gguf_data(kind)
    weight = matrix_from_gguf(data, kind, ROWS, COLUMNS)
    x = np.random.default_rng(11).standard_normal((1, 3, COLUMNS)).astype(np.float32)

    product = matmul_in_onnx_runtime(weight, x, accuracy={4: blocks.INT8_ACTIVATIONS, 8: blocks.INT8_ACTIVATIONS})

    expected = x.astype(np.float64) @ quants.dequantize(data, kind).astype(np.float64).T
    error = np.sqrt(np.mean((product - expected) ** 2) / np.mean(expected**2))
    assert (fold_minimums(weight) is None) == (kind not in (Q.Q4_1, Q.Q5_1))
    assert error < 0.01, error


def test_a_row_of_18_blocks_reads_24_block_sums_and_still_tracks_the_float_product():
    """SmolLM2's hidden size: 576 inputs, 18 blocks; the sums are padded with zeros to 24 so
    that K stays a multiple of 8 (what ORT's CUDA kernel needs for its fast path)."""
    data = gguf_data(Q.Q4_1, columns=576)
    weight = matrix_from_gguf(data, Q.Q4_1, ROWS, 576)
    x = np.random.default_rng(13).standard_normal((1, 2, 576)).astype(np.float32)

    product = matmul_in_onnx_runtime(weight, x, accuracy={4: blocks.INT8_ACTIVATIONS, 8: blocks.INT8_ACTIVATIONS})

    expected = x.astype(np.float64) @ quants.dequantize(data, Q.Q4_1).astype(np.float64).T
    assert fold_minimums(weight).shape == (ROWS, 576 + 24)
    assert np.sqrt(np.mean((product - expected) ** 2) / np.mean(expected**2)) < 0.01


def test_manifest_says_when_block_minimums_are_folded():
    weight = matrix_from_gguf(gguf_data(Q.Q4_1), Q.Q4_1, ROWS, COLUMNS)
    out_of_reach = matrix_from_gguf(gguf_data(Q.Q4_K), Q.Q4_K, ROWS, COLUMNS)

    assert describe(weight, fold=True)["stored"] == (
        "int4 blocks of 32, uint8 zero points per block, block minimums folded in "
        "(integer zero points plus int4 remainder columns over the input's block sums)"
    )
    assert describe(weight)["stored"] == "int4 blocks of 32, zero point 0, float block minimums"
    assert describe(out_of_reach, fold=True)["stored"] == "int4 blocks of 32, zero point 0, float block minimums"
