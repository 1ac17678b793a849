"""Runs a converted model and a transformers reference on the same tokens, step by step."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from service.engine.decode_loop import decode_loop_for
from service.engine.decode_loop import DecodeLoop
from service.engine.model_folder import ModelFolder
from service.engine.runtime import choose_placement, create_session

STEPS = 32
PROMPT = "The quick brown fox jumps over the lazy dog. Hello world!"


def onnx_generator(folder_path, capacity: int = 128) -> tuple[ModelFolder, DecodeLoop]:
    folder = ModelFolder.load(folder_path)
    session = create_session(folder.path / "model.onnx", choose_placement("cpu"), threads=2)
    return folder, decode_loop_for(folder, session, capacity, "cpu")


def load_reference(folder, **overrides):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager", **overrides).eval()


def reference_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float().numpy()


def greedy_side_by_side(model, generator: DecodeLoop, prompt_ids: list[int]):
    """Feeds the prompt in two chunks, then decodes greedily; returns max |logit diff| and both token lists."""
    split = len(prompt_ids) // 2
    generator.reset()
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
