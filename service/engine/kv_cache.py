"""Key/value buffers for a fixed number of sequence slots, allocated once and bound in place.

Each layer's keys (and values) live in one (slots, kv_heads, capacity, head_dim) buffer, of the
graph's cache type (float32, or float16 for the CUDA target).
GroupQueryAttention appends a step's keys and values in place when past and present are bound
to the same memory, so a step allocates nothing and copies no cache. Slots are bound by
address: a prefill binds one slot, a decode step the first `rows` slots as one batch. Moving a
prefix from slot to slot is a numpy copy on CPU and a strided copy by the CUDA runtime on a GPU.

On CPU each buffer is an anonymous memory mapping of its own, seen as a numpy array: the kernel
gives its pages zeroed on first write, so resident memory grows with the tokens actually cached,
not with slots x capacity. numpy's own zeros did not hold that: it gives large arrays a
transparent-huge-page hint (with THP in `madvise` mode each touched 4 KiB page committed 2 MiB:
8 slots x 4096 tokens of SmolLM2 holding 180 tokens each took 1326 MiB instead of 68), and
calloc may serve them from heap memory it must clear first, once glibc's mmap threshold has
risen past their size.
"""

from __future__ import annotations

import ctypes
import functools
import mmap

import numpy as np
import onnxruntime as ort

from converter.graph_interface import past_name, present_name


def bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype) -> int:
    """What one cached token takes: a key and a value per layer."""
    return 2 * layers * kv_heads * head_dim * np.dtype(dtype).itemsize


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
        self._scratch: ort.OrtValue | None = None
        self._allocate(layers, slots, device)

    def _allocate(self, layers: int, slots: int, device: str) -> None:
        for layer in range(layers):
            for kind in ("key", "value"):
                if device == "cpu":
                    self._arrays[layer, kind] = _lazy_zeros((slots, *self._shape), self.dtype)
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
        """Copies the first `length` cached positions of one slot into another."""
        if self.device != "cpu":
            for key in self._values:
                self._device_copy(self._slot_address(key, target_slot), self._slot_address(key, source_slot), length)
            _synchronize()
            return
        for array in self._arrays.values():
            array[target_slot, :, :length] = array[source_slot, :, :length]

    def swap_prefixes(self, first_slot: int, first_length: int, second_slot: int, second_length: int) -> None:
        """Exchanges the first `first_length` cached positions of one slot with the first
        `second_length` of another: the engine moves sequences into low slots so a decode step
        binds as few rows as possible."""
        if self.device != "cpu":
            scratch = self._scratch_slot().data_ptr()
            for key in self._values:
                first, second = self._slot_address(key, first_slot), self._slot_address(key, second_slot)
                self._device_copy(scratch, first, first_length)
                self._device_copy(first, second, second_length)
                self._device_copy(second, scratch, first_length)
            _synchronize()
            return
        for array in self._arrays.values():
            kept = array[first_slot, :, :first_length].copy()
            array[first_slot, :, :second_length] = array[second_slot, :, :second_length]
            array[second_slot, :, :first_length] = kept

    @property
    def can_copy(self) -> bool:
        return self.device == "cpu" or _cuda_runtime() is not None

    def _slot_address(self, key: tuple[int, str], slot: int) -> int:
        return self._address(key) + slot * self._slot_bytes

    def _scratch_slot(self) -> ort.OrtValue:
        """One slot's worth of device memory, for swaps."""
        if self._scratch is None:
            self._scratch = ort.OrtValue.ortvalue_from_shape_and_type(list(self._shape), self.dtype.type, self.device, 0)
        return self._scratch

    def _device_copy(self, target: int, source: int, length: int) -> None:
        """The first `length` positions of every head of one slot's layer to another place, on
        the GPU: one strided copy, each head's positions a row of the (heads, capacity) grid."""
        if length <= 0:
            return
        row_pitch = self._shape[1] * self._shape[2] * self.dtype.itemsize
        width = length * self._shape[2] * self.dtype.itemsize
        status = _cuda_runtime().cudaMemcpy2D(
            ctypes.c_void_p(target), ctypes.c_size_t(row_pitch), ctypes.c_void_p(source), ctypes.c_size_t(row_pitch),
            ctypes.c_size_t(width), ctypes.c_size_t(self._shape[0]), ctypes.c_int(_DEVICE_TO_DEVICE),
        )
        if status != 0:
            raise RuntimeError(f"cudaMemcpy2D failed with CUDA error {status} moving a KV cache prefix")


def _lazy_zeros(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Zeros in an anonymous mapping of their own, whose pages exist once written."""
    count = int(np.prod(shape))
    mapping = mmap.mmap(-1, max(count * dtype.itemsize, 1))
    return np.frombuffer(mapping, dtype=dtype, count=count).reshape(shape)


_DEVICE_TO_DEVICE = 3  # cudaMemcpyDeviceToDevice


@functools.cache
def _cuda_runtime() -> ctypes.CDLL | None:
    """The CUDA runtime ONNX Runtime's CUDA provider loaded (or None where there is none): the
    Python API has no device-to-device copy of part of a tensor, which moving slots needs."""
    try:
        return ctypes.CDLL("libcudart.so.13")
    except OSError:
        return None


def _synchronize() -> None:
    """Waits for the copies: a device-to-device copy may return before it is done, and the next
    step runs on ONNX Runtime's own stream."""
    status = _cuda_runtime().cudaDeviceSynchronize()
    if status != 0:
        raise RuntimeError(f"cudaDeviceSynchronize failed with CUDA error {status}")
