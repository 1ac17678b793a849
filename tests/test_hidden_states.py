"""The graph's last_hidden_state output (what embeddings pool) is transformers' last hidden
state, for every architecture the converter builds, with the prompt in several chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from converter.convert import ConversionOptions, convert
from service.engine.batch_runner import ModelShape
from service.engine.embedder import Embedder
from service.engine.model_folder import ModelFolder
from service.engine.runtime import choose_placement, create_session
from tests.side_by_side import PROMPT, load_reference
from tests.tiny_models import ARCHITECTURES, write_tiny_checkpoint


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_final_hidden_states_match_transformers(architecture, tmp_path, monkeypatch):
    checkpoint = write_tiny_checkpoint(tmp_path / architecture, architecture)
    folder = ModelFolder.load(convert(checkpoint, tmp_path / "converted", ConversionOptions(quant="fp32")))
    session = create_session(folder.path / "model.onnx", choose_placement("cpu"), threads=2)
    ids = folder.encode(PROMPT * 3)
    monkeypatch.setattr("service.engine.embedder.PREFILL_CHUNK", len(ids) // 3 + 1)  # three chunks, each past the last
    with torch.no_grad():
        reference = load_reference(checkpoint)(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].numpy()

    ours = Embedder(session, ModelShape.from_config(folder.config)).hidden_states(ids)

    assert np.abs(ours - reference).max() < 1e-4 * np.abs(reference).max()
