"""GGUF blocks re-packed for MatMulNBits reproduce gguf-py's dequantization inside ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from gguf import GGMLQuantizationType, quants

from converter import blocks
from converter.gguf_blocks import matrix_from_gguf
from converter.graph_builder import FLOAT, GraphBuilder

ROWS, COLUMNS = 48, 96


def weight_seen_by_onnx_runtime(weight) -> np.ndarray:
    """Runs x @ W.T with x = identity in a one-op graph, which reads W back out of the kernel."""
    builder = GraphBuilder("probe")
    x = builder.input("x", FLOAT, [1, COLUMNS, COLUMNS])  # (batch, sequence, features) as in the decoder
    builder.expose(blocks.linear(builder, x, weight, "probe"), "y", FLOAT, [1, COLUMNS, ROWS])
    session = ort.InferenceSession(builder.model().SerializeToString(), providers=["CPUExecutionProvider"])
    (product,) = session.run(None, {"x": np.eye(COLUMNS, dtype=np.float32)[None]})
    return product[0].T


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("kind", [GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1])
def test_repacked_blocks_dequantize_like_gguf_py(kind):
    values = np.random.default_rng(7).standard_normal((ROWS, COLUMNS)).astype(np.float32)
    raw = quants.quantize(values, kind)

    weight = matrix_from_gguf(raw, kind, ROWS, COLUMNS)

    assert relative_error(weight_seen_by_onnx_runtime(weight), quants.dequantize(raw, kind)) < 1e-6


def test_q4_1_block_with_zero_scale_keeps_its_minimum():
    values = np.random.default_rng(3).standard_normal((ROWS, COLUMNS)).astype(np.float32)
    raw = quants.quantize(values, GGMLQuantizationType.Q4_1).view(np.uint8).reshape(ROWS, -1, 20).copy()
    raw[0, 1, 0:2] = np.zeros(1, dtype=np.float16).view(np.uint8)  # d = 0, m unchanged: every weight equals m
    raw[5, 2, 0:2] = np.zeros(1, dtype=np.float16).view(np.uint8)
    raw = raw.reshape(ROWS, -1)
    expected = quants.dequantize(raw, GGMLQuantizationType.Q4_1)
    assert np.all(expected[0, 32:64] == expected[0, 32]) and expected[0, 32] != 0

    weight = matrix_from_gguf(raw, GGMLQuantizationType.Q4_1, ROWS, COLUMNS)

    assert relative_error(weight_seen_by_onnx_runtime(weight), expected) < 1e-6


def test_types_without_a_block_repacking_fall_back_to_exact_floats():
    values = np.random.default_rng(5).standard_normal((ROWS, 256)).astype(np.float32)
    raw = quants.quantize(values, GGMLQuantizationType.Q5_0)

    weight = matrix_from_gguf(raw, GGMLQuantizationType.Q5_0, ROWS, 256)

    assert np.array_equal(weight.dequantize(), quants.dequantize(raw, GGMLQuantizationType.Q5_0))
