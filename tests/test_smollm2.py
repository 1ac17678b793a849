"""The embedded SmolLM2-135M-Instruct GGUF, converted: tokenizer and logits against transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from converter.convert import ConversionOptions, convert
from service.generator import Generator, ModelShape
from service.model_folder import ModelFolder
from service.runtime import choose_placement, create_session
from tests.scoring import PARITY_TEXT, perplexity

TOKENIZER_CORPUS = [
    "Hello world",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew\n\nlines",
    "numbers 1234567890 and 3.14159",
    "emoji 😀🎉👍🏽 and flags 🇫🇷",
    "中文字符测试，日本語のテキスト、한국어",
    "def f(x):\n    return x ** 2  # square\n",
    "<|im_start|>user\nHi<|im_end|>",
    "don't won't I'm we'll they've",
    "Àccénts: naïve café façade Zürich",
    "URL https://example.com/path?q=1&r=2",
    "{\"json\": [1, 2, {\"k\": null}]}",
]
@pytest.fixture(scope="module")
def reference_model(smollm2_gguf):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()


def test_rebuilt_tokenizer_matches_transformers_gguf_tokenizer(smollm2_gguf, smollm2_model_dir):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    ours = ModelFolder.load(smollm2_model_dir).tokenizer

    mismatches = [
        text for text in TOKENIZER_CORPUS if ours.encode(text, add_special_tokens=False).ids != reference.encode(text, add_special_tokens=False)
    ]

    assert mismatches == []


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
