"""What the lossy conversion options cost on the embedded SmolLM2-135M-Instruct Q4_1 GGUF.

The reference is transformers reading the same GGUF in float32, on the fixed text of
tests/scoring.py; each bound is the documented price of an option (docs/conversion.md).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from converter.convert import ConversionOptions, convert
from service.engine.decode_loop import Generator, ModelShape
from service.engine.model_folder import ModelFolder
from service.engine.runtime import choose_placement, create_session
from tests.scoring import PARITY_TEXT, perplexity


@pytest.fixture(scope="module")
def reference_model(smollm2_gguf):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()


def prompt_logits(folder: ModelFolder, ids: list[int]) -> np.ndarray:
    session = create_session(folder.path / "model.onnx", choose_placement("cpu"))
    return Generator(session, ModelShape.from_config(folder.config), capacity=len(ids)).prompt_logits(ids)


def test_int8_activations_stay_within_a_few_percent_perplexity(smollm2_gguf, reference_model, tmp_path):
    folder = ModelFolder.load(convert(smollm2_gguf, tmp_path / "int8", ConversionOptions(activations="int8")))
    ids = folder.encode(PARITY_TEXT)
    with torch.no_grad():
        reference = reference_model(torch.tensor([ids])).logits[0].numpy()

    ours = prompt_logits(folder, ids)

    # The documented price of the faster kernels: a few percent of perplexity.
    assert abs(perplexity(ours, ids) / perplexity(reference, ids) - 1) < 0.05


def test_int8_activations_fold_every_q4_1_minimum_into_its_matmul(smollm2_gguf, tmp_path):
    """The speed of the default folder rests on this: no float minimums product is left."""
    folder = convert(smollm2_gguf, tmp_path / "int8", ConversionOptions(activations="int8"))
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    matmuls = [node for node in graph.node if node.op_type == "MatMulNBits"]

    assert [node.name for node in graph.node if node.op_type in ("MatMul", "ReduceSum")] == []
    # 30 layers x 4 matmuls, the head, and one block-sum product per distinct input.
    assert len([node for node in matmuls if "/block_sums_" not in node.name]) == 30 * 4 + 1
    assert len([node for node in matmuls if "/block_sums_" in node.name]) == 30 * 4


@pytest.fixture(scope="module")
def reference_perplexity(smollm2_gguf, reference_model, smollm2_model_dir):
    ids = ModelFolder.load(smollm2_model_dir).encode(PARITY_TEXT)
    with torch.no_grad():
        return perplexity(reference_model(torch.tensor([ids])).logits[0].numpy(), ids)


@pytest.mark.parametrize(
    "options, bound",
    [
        # Q4_1 blocks re-quantize Q4_1 weights to themselves: no loss at all.
        (ConversionOptions(quant="int4"), 0.005),
        # HQQ re-fits each block; measured 0.07% here.
        (ConversionOptions(quant="int4", algorithm="hqq"), 0.01),
        # Q4_1 levels times float16 scales are nearly exact in float16.
        (ConversionOptions(quant="fp16"), 0.005),
    ],
    ids=["int4-q4_1", "int4-hqq", "fp16"],
)
def test_lossy_modes_keep_perplexity(smollm2_gguf, reference_perplexity, tmp_path, options, bound):
    folder = ModelFolder.load(convert(smollm2_gguf, tmp_path / "int4", options))
    ids = folder.encode(PARITY_TEXT)

    ours = perplexity(prompt_logits(folder, ids), ids)

    assert abs(ours / reference_perplexity - 1) < bound, f"perplexity {ours:.4f} vs {reference_perplexity:.4f}"


def test_int4_block_size_reaches_every_layer_matrix_and_the_manifest(tiny_checkpoint, tmp_path):
    options = ConversionOptions(quant="int4", algorithm="rtn", block_size=64)
    folder = ModelFolder.load(convert(tiny_checkpoint, tmp_path / "int4", options))
    graph = onnx.load(str(folder.path / "model.onnx"))

    layer_blocks = {
        next(attribute.i for attribute in node.attribute if attribute.name == "block_size")
        for node in graph.graph.node
        if node.op_type == "MatMulNBits" and node.name.startswith("model.layers.")
    }
    stored = folder.manifest["quantization"]["tensors"]["model.layers.0.mlp.down_proj"]["stored"]

    assert layer_blocks == {64} and stored == "int4 blocks of 64 (rtn, onnxruntime.quantization)"
