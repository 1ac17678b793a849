"""A converted model computes what transformers computes on the same weights and tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from transformers import AutoModelForCausalLM

from converter.convert import convert
from service.generator import Generator, ModelShape
from service.model_folder import ModelFolder
from service.runtime import choose_placement, create_session
from tests.tiny_models import ARCHITECTURES, write_gguf_from_checkpoint, write_tiny_checkpoint

STEPS = 32
PROMPT = "The quick brown fox jumps over the lazy dog. Hello world!"
# What transformers cannot read from a GGUF file and llama.cpp fixes in code instead: Gemma 3
# scales queries by 1/sqrt(head_dim); transformers' GGUF loader skips Qwen 3's key_length.
GGUF_READER_OVERRIDES = {"gemma3": {"query_pre_attn_scalar": 32}, "qwen3": {"head_dim": 16}}


def onnx_generator(folder_path) -> tuple[ModelFolder, Generator]:
    folder = ModelFolder.load(folder_path)
    session = create_session(folder.path / "model.onnx", choose_placement("cpu"), threads=2)
    return folder, Generator(session, ModelShape.from_config(folder.config), capacity=128)


def reference_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float().numpy()


def greedy_side_by_side(model, generator: Generator, prompt_ids: list[int]):
    """Feeds the prompt in two chunks, then decodes greedily; returns max |logit diff| and both token lists."""
    split = len(prompt_ids) // 2
    generator.cache.length = 0
    generator.forward(prompt_ids[:split])
    ours = generator.forward(prompt_ids[split:]).copy()
    ids = list(prompt_ids)
    worst = 0.0
    our_tokens, reference_tokens = [], []
    for _ in range(STEPS):
        reference = reference_logits(model, ids)
        worst = max(worst, float(np.abs(ours - reference).max()))
        our_tokens.append(int(ours.argmax()))
        reference_tokens.append(int(reference.argmax()))
        ids.append(reference_tokens[-1])
        ours = generator.forward([reference_tokens[-1]]).copy()
    return worst, our_tokens, reference_tokens


def load_reference(folder, **overrides):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager", **overrides).eval()


@pytest.fixture(scope="module", params=ARCHITECTURES)
def checkpoint(request, tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp(request.param) / request.param, request.param)


def test_hugging_face_checkpoint_matches_transformers(checkpoint, tmp_path):
    out = convert(checkpoint, tmp_path / "converted", quant="fp32")
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
    out = convert(gguf_path, tmp_path / "converted", activation_precision="fp32")
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
    out = convert(gguf_path, tmp_path / "converted", activation_precision="fp32")
    model = load_reference(tmp_path, gguf_file="tied.gguf", **GGUF_READER_OVERRIDES.get(architecture, {}))
    folder, generator = onnx_generator(out)

    worst, ours, reference = greedy_side_by_side(model, generator, folder.encode(PROMPT))

    assert worst < 1e-4 and ours == reference, f"max |logit diff| {worst}"
