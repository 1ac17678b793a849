"""The embedded SmolLM2-135M-Instruct GGUF with int8 activations: the documented accuracy price."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from converter.convert import ConversionOptions, convert
from service.generator import Generator, ModelShape
from service.model_folder import ModelFolder
from service.runtime import choose_placement, create_session
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
