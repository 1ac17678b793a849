"""Key/value buffers for one sequence, allocated once and bound as both past and present.

GroupQueryAttention appends each step's keys and values in place when the past and present
inputs share a buffer, so a decode step allocates nothing and copies no cache.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort


class KVCache:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, capacity: int, device: str = "cpu") -> None:
        self.capacity = capacity
        shape = [1, kv_heads, capacity, head_dim]
        self.buffers = {
            (layer, kind): ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, device, 0)
            for layer in range(layers)
            for kind in ("key", "value")
        }
        self.length = 0  # tokens whose keys and values are in the buffers

    def bind(self, binding: ort.IOBinding) -> None:
        for (layer, kind), buffer in self.buffers.items():
            binding.bind_ortvalue_input(f"past_key_values.{layer}.{kind}", buffer)
            binding.bind_ortvalue_output(f"present.{layer}.{kind}", buffer)

