"""The decode loop: prefill the prompt into the KV cache, then one token per step.

tokens -> session.run -> logits -> sampler -> token; the prompt is never recomputed, and each
step binds only its small inputs (the caches and the logits buffer stay bound).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import onnxruntime as ort

from service.engine.batch_runner import BatchRunner, ModelShape
from service.engine.candidates import CandidateRow
from service.engine.model_folder import ModelFolder
from service.engine.sampler import Sampler

# Long prompts go through the graph in chunks, bounding the activations a prefill needs.
PREFILL_CHUNK = 512


class DecodeLoop:
    """Prefill, then one token per step; subclasses say how a step runs on their graph."""

    capacity: int
    length: int  # tokens of the current sequence in the cache

    def forward(self, token_ids: list[int]) -> np.ndarray:
        """Appends tokens to the cache and returns the logits after the last one."""
        raise NotImplementedError

    def prompt_logits(self, token_ids: list[int]) -> np.ndarray:
        """Logits after every position of a new sequence, (tokens, vocab)."""
        raise NotImplementedError

    def prefill(self, prompt_ids: list[int]) -> np.ndarray:
        self.reset()
        logits = None
        for start in range(0, len(prompt_ids), PREFILL_CHUNK):
            logits = self.forward(prompt_ids[start : start + PREFILL_CHUNK])
        return logits

    def generate(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        sampler: Sampler,
        stop_ids: set[int],
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[int]:
        """Yields new token ids; stops at a stop token (not yielded), max_new_tokens or capacity."""
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        logits = self.prefill(prompt_ids)
        for produced in range(max_new_tokens):
            if cancelled():
                return
            token = sampler(logits).token_id
            if token in stop_ids:
                return
            yield token
            if produced + 1 == max_new_tokens or self.length >= self.capacity:
                return
            logits = self.forward([token])

    def reset(self) -> None:
        """Forgets the current sequence."""
        self.length = 0


class Generator(DecodeLoop):
    """One sequence through a native decoder graph: the engine's BatchRunner with a single slot,
    for tests and benchmarks that follow one sequence."""

    def __init__(self, session: ort.InferenceSession, shape: ModelShape, capacity: int, device: str = "cpu") -> None:
        self.session = session
        self.runner = BatchRunner(session, shape, capacity, 1, device)
        self.capacity = capacity
        self.length = 0

    def forward(self, token_ids: list[int]) -> np.ndarray:
        """Appends tokens to the cache and returns the logits after the last one (a view, reused)."""
        if len(token_ids) == 1:  # the decode step's binding is kept between steps
            row = self.runner.decode(token_ids, [self.length])[0]
        else:
            row = self.runner.prefill(0, token_ids, self.length)
        self.length += len(token_ids)
        return row.full_logits() if isinstance(row, CandidateRow) else row

    def prompt_logits(self, token_ids: list[int]) -> np.ndarray:
        """Logits after every position of a new sequence, (tokens, vocab): what scoring a text
        needs (perplexity, prompt log-probabilities). Chunked like a prefill."""
        self.reset()
        chunks = []
        for start in range(0, len(token_ids), PREFILL_CHUNK):
            chunk = token_ids[start : start + PREFILL_CHUNK]
            chunks.append(self.runner.prefill(0, chunk, self.length, all_positions=True))
            self.length += len(chunk)
        return np.concatenate(chunks)


def decode_loop_for(folder: ModelFolder, session: ort.InferenceSession, capacity: int, device: str) -> DecodeLoop:
    """The single-sequence loop that fits the folder's graph, for tools that score or compare one
    sequence at a time (tests, the conversion report); the engine batches instead."""
    from service.engine.optimum_decode_loop import DynamicCacheGenerator  # it builds on DecodeLoop

    if folder.graph_interface == "optimum":
        return DynamicCacheGenerator(session, capacity, device)
    return Generator(session, ModelShape.from_config(folder.config), capacity, device)
