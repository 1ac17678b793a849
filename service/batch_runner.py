"""Runs a decoder graph for the engine's sequence slots: prefill chunks and batched decode steps.

BatchRunner drives the native graph: one slot's prompt chunk at a time, or one new token for
each of the first `rows` slots at once (GroupQueryAttention reads every row's own length, so
rows of different lengths share a step). SerialRunner adapts a single-sequence decode loop
(optimum's graphs) to the same interface with one slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from service.kv_cache import SlotCache

if TYPE_CHECKING:
    from service.dynamic_generator import DynamicCacheGenerator


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


class BatchRunner:
    supports_prefix_reuse = True

    def __init__(self, session: ort.InferenceSession, shape: ModelShape, capacity: int, slots: int, device: str = "cpu") -> None:
        self.session = session
        self.capacity = capacity
        self.slots = slots
        self.vocab_size = shape.vocab_size
        self.cache = SlotCache(shape.layers, shape.kv_heads, shape.head_dim, capacity, slots, device)
        self.logits = np.zeros((slots, 1, shape.vocab_size), dtype=np.float32)
        self._decode_bindings: dict[int, ort.IOBinding] = {}
        self._one = np.array([1], dtype=np.int64)

    def _bind_logits(self, binding: ort.IOBinding, logits: np.ndarray) -> None:
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)

    def prefill(self, slot: int, token_ids: list[int], start: int, all_positions: bool = False) -> np.ndarray:
        """Caches `token_ids` at positions start.. of `slot`; returns the logits after the last
        token (vocab,), or after every token (tokens, vocab) with `all_positions`."""
        length = start + len(token_ids)
        if length > self.capacity:
            raise ValueError(f"sequence of {length} tokens exceeds the cache capacity of {self.capacity}")
        binding = self.session.io_binding()
        self.cache.bind(binding, slot, 1)
        logits = np.empty((1, len(token_ids), self.vocab_size), dtype=np.float32) if all_positions else self.logits[slot : slot + 1]
        self._bind_logits(binding, logits)
        binding.bind_cpu_input("input_ids", np.array([token_ids], dtype=np.int64))
        binding.bind_cpu_input("seqlens_k", np.array([length - 1], dtype=np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array(length, dtype=np.int32))
        binding.bind_cpu_input("num_logits_to_keep", np.array([logits.shape[1]], dtype=np.int64))
        self.session.run_with_iobinding(binding)
        return logits[0] if all_positions else logits[0, 0]

    @property
    def can_move_slots(self) -> bool:
        return self.cache.can_copy

    def copy_slot(self, source_slot: int, target_slot: int, length: int) -> None:
        """Copies the first `length` cached positions of one slot into another."""
        self.cache.copy_prefix(source_slot, target_slot, length)

    def swap_slots(self, first_slot: int, first_length: int, second_slot: int, second_length: int) -> None:
        """Exchanges the cached positions of two slots (see SlotCache.swap_prefixes)."""
        self.cache.swap_prefixes(first_slot, first_length, second_slot, second_length)

    def decode(self, token_ids: list[int], positions: list[int]) -> np.ndarray:
        """Row r appends token_ids[r] at positions[r] of slot r; returns logits (rows, vocab), a
        view of a reused buffer."""
        rows = len(token_ids)
        binding = self._decode_bindings.get(rows)
        if binding is None:
            binding = self.session.io_binding()
            self.cache.bind(binding, 0, rows)
            self._bind_logits(binding, self.logits[:rows])
            self._decode_bindings[rows] = binding
        lengths = np.array(positions, dtype=np.int32)
        binding.bind_cpu_input("input_ids", np.array(token_ids, dtype=np.int64)[:, None])
        binding.bind_cpu_input("seqlens_k", lengths)
        binding.bind_cpu_input("total_sequence_length", np.array(int(lengths.max()) + 1, dtype=np.int32))
        binding.bind_cpu_input("num_logits_to_keep", self._one)
        self.session.run_with_iobinding(binding)
        return self.logits[:rows, 0]


class SerialRunner:
    """One slot over a DynamicCacheGenerator: its past cannot be cut back, so no prefix reuse."""

    supports_prefix_reuse = False
    can_move_slots = False
    slots = 1

    def __init__(self, loop: DynamicCacheGenerator) -> None:
        self.loop = loop
        self.capacity = loop.capacity

    def prefill(self, slot: int, token_ids: list[int], start: int, all_positions: bool = False) -> np.ndarray:
        if start == 0:
            self.loop.reset()
        return self.loop.extend(token_ids) if all_positions else self.loop.forward(token_ids)

    def decode(self, token_ids: list[int], positions: list[int]) -> np.ndarray:
        return self.loop.forward(token_ids)[None]
