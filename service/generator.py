"""The decode loop: prefill the prompt into the KV cache, then one token per step.

tokens -> session.run -> logits -> sampler -> token; the prompt is never recomputed, and each
step binds only its small inputs (the caches and the logits buffer stay bound).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from service.kv_cache import SlotCache
from service.sampler import Sampler

# Long prompts go through the graph in chunks, bounding the activations a prefill needs.
PREFILL_CHUNK = 512


@dataclass(frozen=True)
class ModelShape:
    layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        return cls(
            config["num_hidden_layers"], config["num_key_value_heads"], config["head_dim"], config["vocab_size"]
        )


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
    """Runs one sequence at a time through a native decoder graph, its KV cache bound in place.

    The engine batches many sequences (service/batch_runner.py); this is the plain loop that
    tests and benchmarks use to follow one sequence."""

    def __init__(self, session: ort.InferenceSession, shape: ModelShape, capacity: int, device: str = "cpu") -> None:
        self.session = session
        self.capacity = capacity
        self.length = 0
        self.cache = SlotCache(shape.layers, shape.kv_heads, shape.head_dim, capacity, 1, device)
        self.logits = np.zeros((1, 1, shape.vocab_size), dtype=np.float32)
        self.binding = session.io_binding()
        self.cache.bind(self.binding, 0, 1)
        self.binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self.logits))
        self._one = np.array([1], dtype=np.int64)

    def _run(self, binding: ort.IOBinding, token_ids: list[int], logits_to_keep: np.ndarray) -> None:
        """Appends tokens to the cache through `binding`, whose logits output is already bound."""
        length = self.length + len(token_ids)
        if length > self.capacity:
            raise ValueError(f"sequence of {length} tokens exceeds the cache capacity of {self.capacity}")
        binding.bind_cpu_input("input_ids", np.array([token_ids], dtype=np.int64))
        binding.bind_cpu_input("seqlens_k", np.array([length - 1], dtype=np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array(length, dtype=np.int32))
        binding.bind_cpu_input("num_logits_to_keep", logits_to_keep)
        self.session.run_with_iobinding(binding)
        self.length = length

    def forward(self, token_ids: list[int]) -> np.ndarray:
        """Appends tokens to the cache and returns the logits after the last one (a view, reused)."""
        self._run(self.binding, token_ids, self._one)
        return self.logits[0, -1]

    def prompt_logits(self, token_ids: list[int]) -> np.ndarray:
        """Logits after every position of a new sequence, (tokens, vocab): what scoring a text
        needs (perplexity, prompt log-probabilities). Chunked like a prefill."""
        self.reset()
        chunks = []
        for start in range(0, len(token_ids), PREFILL_CHUNK):
            chunk = token_ids[start : start + PREFILL_CHUNK]
            logits = np.empty((1, len(chunk), self.logits.shape[-1]), dtype=np.float32)
            binding = self.session.io_binding()
            self.cache.bind(binding, 0, 1)
            binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
            self._run(binding, chunk, np.array([len(chunk)], dtype=np.int64))
            chunks.append(logits[0])
        return np.concatenate(chunks)
