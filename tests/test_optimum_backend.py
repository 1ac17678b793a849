"""`--backend optimum`: an architecture without a native builder, exported by optimum, served by
the growing-cache decode loop, computes what transformers computes."""

from __future__ import annotations

import onnx
import pytest

from converter.convert import ConversionOptions, convert
from converter.errors import ConversionError
from tests.side_by_side import PROMPT, greedy_side_by_side, load_reference, onnx_generator
from tests.tiny_models import write_tiny_checkpoint


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("gpt2") / "gpt2", "gpt2")


def test_exported_gpt2_matches_transformers(gpt2_checkpoint, tmp_path):
    out = convert(gpt2_checkpoint, tmp_path / "converted", ConversionOptions(quant="fp32", backend="optimum"))
    folder, generator = onnx_generator(out)

    worst, ours, reference = greedy_side_by_side(load_reference(gpt2_checkpoint), generator, folder.encode(PROMPT))

    assert worst < 1e-4 and ours == reference, f"max |logit diff| {worst}"


def test_int4_export_quantizes_the_layers_to_4_bits_and_the_head_to_8(gpt2_checkpoint, tmp_path):
    out = convert(gpt2_checkpoint, tmp_path / "int4", ConversionOptions(quant="int4", backend="optimum"))
    graph = onnx.load(str(out / "model.onnx"))

    bits = sorted(
        {next(attribute.i for attribute in node.attribute if attribute.name == "bits") for node in graph.graph.node if node.op_type == "MatMulNBits"}
    )
    folder, generator = onnx_generator(out)
    logits = generator.prefill(folder.encode(PROMPT))

    assert bits == [4, 8] and logits.shape == (folder.config["vocab_size"],)


def test_optimum_backend_refuses_a_gguf_file(smollm2_gguf, tmp_path):
    with pytest.raises(ConversionError, match="checkpoint folders"):
        convert(smollm2_gguf, tmp_path / "out", ConversionOptions(backend="optimum"))
