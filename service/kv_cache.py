"""Key/value buffers for a fixed number of sequence slots, allocated once and bound in place.

Each layer's keys (and values) live in one (slots, kv_heads, capacity, head_dim) buffer, of the
graph's cache type (float32, or float16 for the CUDA target).
GroupQueryAttention appends a step's keys and values in place when past and present are bound
to the same memory, so a step allocates nothing and copies no cache. Slots are bound by
address: a prefill binds one slot, a decode step the first `rows` slots as one batch.

On CPU the buffers are numpy arrays from calloc: pages of slots never used are never touched,
so resident memory grows with the tokens actually cached, not with slots x capacity. That holds
only without numpy's transparent-huge-page hint, which it gives every large array: with THP in
`madvise` mode each touched 4 KiB page then commits 2 MiB, and 8 slots x 4096 tokens of
SmolLM2 holding 180 tokens each took 1326 MiB instead of 68.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
from numpy._core import multiarray

from converter.graph_interface import past_name, present_name


class SlotCache:
    def __init__(
        self, layers: int, kv_heads: int, head_dim: int, capacity: int, slots: int = 1, device: str = "cpu", dtype=np.float32
    ) -> None:
        self.capacity = capacity
        self.slots = slots
        self.device = device
        self.dtype = np.dtype(dtype)
        self._shape = (kv_heads, capacity, head_dim)
        self._slot_bytes = kv_heads * capacity * head_dim * self.dtype.itemsize
        self._arrays: dict[tuple[int, str], np.ndarray] = {}
        self._values: dict[tuple[int, str], ort.OrtValue] = {}
        with _without_huge_pages():
            self._allocate(layers, slots, device)

    def _allocate(self, layers: int, slots: int, device: str) -> None:
        for layer in range(layers):
            for kind in ("key", "value"):
                if device == "cpu":
                    self._arrays[layer, kind] = np.zeros((slots, *self._shape), dtype=self.dtype)
                else:
                    self._values[layer, kind] = ort.OrtValue.ortvalue_from_shape_and_type(
                        [slots, *self._shape], self.dtype.type, device, 0
                    )
        self.names = [
            (past_name(layer, kind), present_name(layer, kind), (layer, kind)) for layer in range(layers) for kind in ("key", "value")
        ]

    def _address(self, key: tuple[int, str]) -> int:
        if self.device == "cpu":
            return self._arrays[key].ctypes.data
        return self._values[key].data_ptr()

    def bind(self, binding: ort.IOBinding, first_slot: int, rows: int) -> None:
        """Binds slots [first_slot, first_slot + rows) as past and present of every layer."""
        if first_slot < 0 or first_slot + rows > self.slots:
            raise ValueError(f"slots {first_slot}..{first_slot + rows - 1} are outside 0..{self.slots - 1}")
        shape = [rows, *self._shape]
        offset = first_slot * self._slot_bytes
        for past, present, key in self.names:
            address = self._address(key) + offset
            binding.bind_input(past, self.device, 0, self.dtype.type, shape, address)
            binding.bind_output(present, self.device, 0, self.dtype.type, shape, address)

    def copy_prefix(self, source_slot: int, target_slot: int, length: int) -> None:
        """Copies the first `length` cached positions of one slot into another (CPU only)."""
        if self.device != "cpu":
            raise NotImplementedError("copying cache prefixes is implemented for CPU buffers")
        for array in self._arrays.values():
            array[target_slot, :, :length] = array[source_slot, :, :length]

    def swap_prefixes(self, first_slot: int, first_length: int, second_slot: int, second_length: int) -> None:
        """Exchanges the first `first_length` cached positions of one slot with the first
        `second_length` of another (CPU only): the engine moves sequences into low slots so a
        decode step binds as few rows as possible."""
        if self.device != "cpu":
            raise NotImplementedError("moving cache prefixes is implemented for CPU buffers")
        for array in self._arrays.values():
            kept = array[first_slot, :, :first_length].copy()
            array[first_slot, :, :second_length] = array[second_slot, :, :second_length]
            array[second_slot, :, :first_length] = kept

    @property
    def can_copy(self) -> bool:
        return self.device == "cpu"


@contextlib.contextmanager
def _without_huge_pages() -> Iterator[None]:
    """numpy's huge-page hint off while the buffers are allocated (it is given at allocation)."""
    previous = multiarray._set_madvise_hugepage(False)
    try:
        yield
    finally:
        multiarray._set_madvise_hugepage(previous)
