"""A converted model computes what transformers computes on the same weights and tokens."""

from __future__ import annotations

import pytest
from gguf import GGMLQuantizationType

from converter.convert import ConversionOptions, convert
from service.engine.model_folder import ModelFolder
from tests.side_by_side import PROMPT, greedy_side_by_side, load_reference, onnx_generator
from tests.tiny_models import ARCHITECTURES, write_gguf_from_checkpoint, write_tiny_checkpoint

# What transformers cannot read from a GGUF file and llama.cpp fixes in code instead: Gemma 3
# scales queries by 1/sqrt(head_dim); transformers' GGUF loader skips Qwen 3's key_length.
GGUF_READER_OVERRIDES = {"gemma3": {"query_pre_attn_scalar": 32}, "qwen3": {"head_dim": 16}}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def checkpoint(request, tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp(request.param) / request.param, request.param)


def test_hugging_face_checkpoint_matches_transformers(checkpoint, tmp_path):
    out = convert(checkpoint, tmp_path / "converted", ConversionOptions(quant="fp32"))
    model = load_reference(checkpoint)
    folder, generator = onnx_generator(out)

    worst, ours, reference = greedy_side_by_side(model, generator, folder.encode(PROMPT))

    assert worst < 1e-4 and ours == reference, f"max |logit diff| {worst}"


@pytest.mark.parametrize(
    "matrix_type, table_type",
    [
        (None, None),
        (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q8_0),
        (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q8_0),
        (GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q4_1),
    ],
    ids=["f32", "q8_0", "q4_0", "q4_1"],
)
def test_gguf_file_matches_transformers_on_its_dequantized_weights(checkpoint, tmp_path, matrix_type, table_type):
    gguf_path = write_gguf_from_checkpoint(checkpoint, tmp_path / "tiny.gguf", matrix_type, table_type)
    out = convert(gguf_path, tmp_path / "converted")
    architecture = ModelFolder.load(out).config["architecture"]
    # The reference is transformers reading the very same GGUF (it dequantizes with gguf-py).
    model = load_reference(tmp_path, gguf_file="tiny.gguf", **GGUF_READER_OVERRIDES.get(architecture, {}))
    folder, generator = onnx_generator(out)

    worst, ours, reference = greedy_side_by_side(model, generator, folder.encode(PROMPT))

    assert worst < 1e-4 and ours == reference, f"max |logit diff| {worst}"


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_tied_quantized_embeddings_serve_as_the_head(architecture, tmp_path):
    checkpoint = write_tiny_checkpoint(tmp_path / "tied", architecture, seed=1, tie_word_embeddings=True)
    gguf_path = write_gguf_from_checkpoint(
        checkpoint, tmp_path / "tied.gguf", GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0
    )
    out = convert(gguf_path, tmp_path / "converted")
    model = load_reference(tmp_path, gguf_file="tied.gguf", **GGUF_READER_OVERRIDES.get(architecture, {}))
    folder, generator = onnx_generator(out)

    worst, ours, reference = greedy_side_by_side(model, generator, folder.encode(PROMPT))

    assert worst < 1e-4 and ours == reference, f"max |logit diff| {worst}"
