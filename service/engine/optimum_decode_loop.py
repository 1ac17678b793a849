"""The decode loop for graphs exported by optimum (`--backend optimum`).

Those graphs take the past keys and values as inputs and return them one position longer, with
an attention mask and position ids beside the tokens. The presents stay ORT values on the
session's device and become the next step's past, so nothing is copied through numpy; unlike
the native graph's in-place cache, each step allocates its presents.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from converter import graph_interface as names
from service.engine.decode_loop import PREFILL_CHUNK, DecodeLoop


class DynamicCacheGenerator(DecodeLoop):
    def __init__(self, session: ort.InferenceSession, capacity: int, device: str = "cpu") -> None:
        self.session = session
        self.device = device
        self.input_names = {value.name for value in session.get_inputs()}
        self.past_inputs = {
            value.name: value.shape for value in session.get_inputs() if value.name.startswith(names.PAST_PREFIX)
        }
        if not self.past_inputs or names.LOGITS not in {value.name for value in session.get_outputs()}:
            raise ValueError("the graph has no past_key_values inputs or no logits output: not an optimum decoder export")
        self.vocab_size = session.get_outputs()[0].shape[-1]
        self.capacity = capacity
        self.past: dict[str, ort.OrtValue] = {}  # an ORT value per past input, `length` tokens long
        self.reset()

    def reset(self) -> None:
        self.length = 0
        self.past = {
            name: ort.OrtValue.ortvalue_from_numpy(np.zeros((1, shape[1], 0, shape[3]), dtype=np.float32), self.device, 0)
            for name, shape in self.past_inputs.items()
        }

    def _run(self, token_ids: list[int]) -> ort.OrtValue:
        """Runs the tokens after the cached ones; returns their logits (1, tokens, vocab)."""
        length = self.length + len(token_ids)
        if length > self.capacity:
            raise ValueError(f"sequence of {length} tokens exceeds the cache capacity of {self.capacity}")
        binding = self.session.io_binding()
        binding.bind_cpu_input(names.INPUT_IDS, np.array([token_ids], dtype=np.int64))
        if names.ATTENTION_MASK in self.input_names:
            binding.bind_cpu_input(names.ATTENTION_MASK, np.ones((1, length), dtype=np.int64))
        if names.POSITION_IDS in self.input_names:
            binding.bind_cpu_input(names.POSITION_IDS, np.arange(self.length, length, dtype=np.int64)[None])
        for name, value in self.past.items():
            binding.bind_ortvalue_input(name, value)
        present_names = [name.replace(names.PAST_PREFIX, names.PRESENT_PREFIX) for name in self.past_inputs]
        binding.bind_output(names.LOGITS, "cpu")
        for name in present_names:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        logits, *presents = binding.get_outputs()
        self.past = dict(zip(self.past_inputs, presents, strict=True))
        self.length = length
        return logits

    def forward(self, token_ids: list[int]) -> np.ndarray:
        return self._run(token_ids).numpy()[0, -1]

    def extend(self, token_ids: list[int]) -> np.ndarray:
        """Appends tokens; returns the logits after each of them, (tokens, vocab)."""
        return self._run(token_ids).numpy()[0]

    def prompt_logits(self, token_ids: list[int]) -> np.ndarray:
        self.reset()
        return np.concatenate([self.extend(token_ids[start : start + PREFILL_CHUNK]) for start in range(0, len(token_ids), PREFILL_CHUNK)])
