"""Runs a decoder graph for the engine's sequence slots: prefill chunks and batched decode steps.

BatchRunner drives the native graph: one slot's prompt chunk at a time, or one new token for
each of the first `rows` slots at once (GroupQueryAttention reads every row's own length, so
rows of different lengths share a step). It reads what to bind from the graph itself: the KV
cache's type (float32, or float16 for the CUDA target) and whether the graph reports sampling
candidates (service.engine.candidates). SerialRunner adapts a single-sequence decode loop (optimum's
graphs) to the same interface with one slot.

On CUDA every input and output of a decode step lives on the device, bound once per row count:
a step uploads token ids, positions and temperatures, and downloads the candidates. With CUDA
graphs, each row count's step is captured once and replayed (row counts round up to powers of
two, so a few graphs serve every batch), and attention is told the cache's full capacity, which
the captured kernels are sized for; each row's own length still comes from seqlens_k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from converter import graph_interface as names
from service.engine.candidates import CandidateRow
from service.engine.kv_cache import SlotCache

if TYPE_CHECKING:
    from service.engine.optimum_decode_loop import DynamicCacheGenerator

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


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


@dataclass(frozen=True)
class GraphSignature:
    """What a native graph takes and gives beyond the common interface, read from the session."""

    cache_dtype: type
    takes_logits_start: bool  # minus the kept positions (the CUDA target) instead of their count
    candidates: int  # sampling candidates per row; 0 when the graph gives logits only

    @classmethod
    def of(cls, session: ort.InferenceSession) -> GraphSignature:
        inputs = {value.name: value for value in session.get_inputs()}
        outputs = {value.name: value for value in session.get_outputs()}
        candidates = outputs.get(names.CANDIDATE_IDS)
        return cls(
            cache_dtype=_NUMPY_TYPES[inputs[names.past_name(0, "key")].type],
            takes_logits_start=names.LOGITS_START in inputs,
            candidates=int(candidates.shape[-1]) if candidates is not None else 0,
        )


class _DeviceStep:
    """A decode step's inputs and outputs kept on the device for one row count, bound once."""

    def __init__(self, binding: ort.IOBinding, rows: int, vocab_size: int, candidates: int, device: str) -> None:
        def on_device(shape: list[int], dtype) -> ort.OrtValue:
            return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, device, 0)

        self.binding = binding
        self.input_ids = on_device([rows, 1], np.int64)
        self.seqlens = on_device([rows], np.int32)
        self.temperatures = on_device([rows], np.float32) if candidates else None
        binding.bind_ortvalue_input(names.INPUT_IDS, self.input_ids)
        binding.bind_ortvalue_input(names.SEQLENS_K, self.seqlens)
        if self.temperatures is not None:
            binding.bind_ortvalue_input(names.TEMPERATURES, self.temperatures)
        self.outputs: dict[str, ort.OrtValue] = {names.LOGITS: on_device([rows, 1, vocab_size], np.float32)}
        if candidates:
            self.outputs[names.CANDIDATE_IDS] = on_device([rows, candidates], np.int64)
            self.outputs[names.CANDIDATE_LOGITS] = on_device([rows, candidates], np.float32)
            self.outputs[names.LOG_NORMALIZER] = on_device([rows], np.float32)
        for name, value in self.outputs.items():
            binding.bind_ortvalue_output(name, value)


class BatchRunner:
    supports_prefix_reuse = True

    def __init__(
        self,
        session: ort.InferenceSession,
        shape: ModelShape,
        capacity: int,
        slots: int,
        device: str = "cpu",
    ) -> None:
        self.session = session
        self.capacity = capacity
        self.slots = slots
        self.device = device
        # Host buffers bound per step suit the CPU best; on a GPU every decode input and output is
        # an OrtValue bound once. Either way works on the CPU, which is how tests reach the GPU's.
        self.host_buffers = device == "cpu"
        self.vocab_size = shape.vocab_size
        self.signature = GraphSignature.of(session)
        cuda_options = session.get_provider_options().get("CUDAExecutionProvider", {})
        self.cuda_graphs = device == "cuda" and cuda_options.get("enable_cuda_graph") == "1"
        self.cache = SlotCache(shape.layers, shape.kv_heads, shape.head_dim, capacity, slots, device, self.signature.cache_dtype)
        self.logits = np.zeros((slots, 1, shape.vocab_size), dtype=np.float32)
        count = self.signature.candidates
        self.candidate_ids = np.zeros((slots, count), dtype=np.int64)
        self.candidate_logits = np.zeros((slots, count), dtype=np.float32)
        self.log_normalizers = np.zeros(slots, dtype=np.float32)
        self._decode_bindings: dict[int, ort.IOBinding] = {}
        self._device_steps: dict[int, _DeviceStep] = {}
        self._run_options: dict[int, ort.RunOptions] = {}

    def _kept_positions(self, count: int) -> np.ndarray:
        return np.array([-count if self.signature.takes_logits_start else count], dtype=np.int64)

    def _bind_host_outputs(self, binding: ort.IOBinding, first: int, rows: int, logits: np.ndarray | None = None) -> None:
        """Binds logits (and candidates) of slots first..first+rows-1 to the host buffers."""
        logits = self.logits[first : first + rows] if logits is None else logits
        binding.bind_output(names.LOGITS, "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        if self.signature.candidates:
            for name, array in (
                (names.CANDIDATE_IDS, self.candidate_ids),
                (names.CANDIDATE_LOGITS, self.candidate_logits),
                (names.LOG_NORMALIZER, self.log_normalizers),
            ):
                part = array[first : first + rows]
                binding.bind_output(name, "cpu", 0, part.dtype, list(part.shape), part.ctypes.data)

    def _temperatures(self, temperatures: list[float] | None, rows: int) -> np.ndarray:
        """The graph divides by each row's temperature; greedy and unset rows use 1."""
        values = np.ones(rows, dtype=np.float32)
        for row, temperature in enumerate(temperatures or ()):
            if temperature > 0:
                values[row] = temperature
        return values

    def prefill(
        self, slot: int, token_ids: list[int], start: int, all_positions: bool = False, temperature: float = 1.0
    ) -> np.ndarray | CandidateRow:
        """Caches `token_ids` at positions start.. of `slot`; returns what the sampler reads after
        the last token (logits (vocab,), or that row's candidates), or the logits after every
        token (tokens, vocab) with `all_positions`."""
        length = start + len(token_ids)
        if length > self.capacity:
            raise ValueError(f"sequence of {length} tokens exceeds the cache capacity of {self.capacity}")
        binding = self.session.io_binding()
        self.cache.bind(binding, slot, 1)
        kept = len(token_ids) if all_positions else 1
        binding.bind_cpu_input(names.INPUT_IDS, np.array([token_ids], dtype=np.int64))
        binding.bind_cpu_input(names.SEQLENS_K, np.array([length - 1], dtype=np.int32))
        binding.bind_cpu_input(names.TOTAL_SEQUENCE_LENGTH, np.array(length, dtype=np.int32))
        binding.bind_cpu_input(self._kept_name, self._kept_positions(kept))
        temperatures = self._temperatures([temperature], 1)
        if self.signature.candidates:
            binding.bind_cpu_input(names.TEMPERATURES, temperatures)
        if self.host_buffers:
            logits = np.empty((1, kept, self.vocab_size), dtype=np.float32) if all_positions else None
            self._bind_host_outputs(binding, slot, 1, logits)
            self.session.run_with_iobinding(binding, self._options(-1))
            if all_positions:
                return logits[0]
            return self._row(slot, temperatures[0], lambda: self.logits[slot, 0]) if self.signature.candidates else self.logits[slot, 0]
        for name in self._output_names:
            binding.bind_output(name, self.device, 0)
        self.session.run_with_iobinding(binding, self._options(-1))
        # Outputs come back in the order they were bound: the caches' presents first.
        outputs = dict(zip(self._output_names, binding.get_outputs()[-len(self._output_names) :], strict=True))
        if all_positions or not self.signature.candidates:
            logits = outputs[names.LOGITS].numpy()[0]
            return logits if all_positions else logits[0]
        self._download_candidates(outputs, slot, 1)
        return self._row(slot, temperatures[0], lambda: outputs[names.LOGITS].numpy()[0, 0])

    @property
    def _kept_name(self) -> str:
        return names.LOGITS_START if self.signature.takes_logits_start else names.NUM_LOGITS_TO_KEEP

    @property
    def _output_names(self) -> list[str]:
        """The outputs besides the caches, in the order they are bound."""
        extra = [names.CANDIDATE_IDS, names.CANDIDATE_LOGITS, names.LOG_NORMALIZER] if self.signature.candidates else []
        return [names.LOGITS, *extra]

    def _options(self, graph_id: int) -> ort.RunOptions | None:
        """With CUDA graphs, which captured graph a run replays (-1: none, for prefill runs)."""
        if not self.cuda_graphs:
            return None
        options = self._run_options.get(graph_id)
        if options is None:
            options = self._run_options[graph_id] = ort.RunOptions()
            options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return options

    def _download_candidates(self, outputs: dict[str, ort.OrtValue], first: int, rows: int) -> None:
        self.candidate_ids[first : first + rows] = outputs[names.CANDIDATE_IDS].numpy()[:rows]
        self.candidate_logits[first : first + rows] = outputs[names.CANDIDATE_LOGITS].numpy()[:rows]
        self.log_normalizers[first : first + rows] = outputs[names.LOG_NORMALIZER].numpy()[:rows]

    def _row(self, slot: int, temperature: float, fetch) -> CandidateRow:
        return CandidateRow(
            self.candidate_ids[slot].copy(), self.candidate_logits[slot].copy(), float(self.log_normalizers[slot]), float(temperature), fetch
        )

    @property
    def can_move_slots(self) -> bool:
        return self.cache.can_copy

    def copy_slot(self, source_slot: int, target_slot: int, length: int) -> None:
        """Copies the first `length` cached positions of one slot into another."""
        self.cache.copy_prefix(source_slot, target_slot, length)

    def swap_slots(self, first_slot: int, first_length: int, second_slot: int, second_length: int) -> None:
        """Exchanges the cached positions of two slots (see SlotCache.swap_prefixes)."""
        self.cache.swap_prefixes(first_slot, first_length, second_slot, second_length)

    def decode_rows(self, busy_rows: int) -> int:
        """How many rows a decode step runs when the first `busy_rows` slots hold sequences: more
        with CUDA graphs, whose row counts are powers of two (the engine fills the extra rows as
        it fills idle ones)."""
        if not self.cuda_graphs:
            return busy_rows
        return min(self.slots, 1 << (busy_rows - 1).bit_length())

    def decode(
        self, token_ids: list[int], positions: list[int], temperatures: list[float] | None = None
    ) -> np.ndarray | list[CandidateRow]:
        """Row r appends token_ids[r] at positions[r] of slot r; returns logits (rows, vocab), a
        view of a reused buffer, or each row's candidates when the graph reports them.
        `temperatures` are the rows' sampling temperatures (1 where unset or greedy)."""
        rows = len(token_ids)
        lengths = np.array(positions, dtype=np.int32)
        total = self.capacity if self.cuda_graphs else int(lengths.max()) + 1
        temperature_values = self._temperatures(temperatures, rows)
        if self.host_buffers:
            binding = self._decode_bindings.get(rows)
            if binding is None:
                binding = self.session.io_binding()
                self.cache.bind(binding, 0, rows)
                self._bind_host_outputs(binding, 0, rows)
                self._decode_bindings[rows] = binding
            binding.bind_cpu_input(names.INPUT_IDS, np.array(token_ids, dtype=np.int64)[:, None])
            binding.bind_cpu_input(names.SEQLENS_K, lengths)
            binding.bind_cpu_input(names.TOTAL_SEQUENCE_LENGTH, np.array(total, dtype=np.int32))
            binding.bind_cpu_input(self._kept_name, self._kept_positions(1))
            if self.signature.candidates:
                binding.bind_cpu_input(names.TEMPERATURES, temperature_values)
            self.session.run_with_iobinding(binding)
            if not self.signature.candidates:
                return self.logits[:rows, 0]
            return [self._row(row, temperature_values[row], lambda row=row: self.logits[row, 0]) for row in range(rows)]
        step = self._device_step(rows)
        step.input_ids.update_inplace(np.array(token_ids, dtype=np.int64)[:, None])
        step.seqlens.update_inplace(lengths)
        if step.temperatures is not None:
            step.temperatures.update_inplace(temperature_values)
        if not self.cuda_graphs:  # a captured step keeps the capacity it was bound with
            step.binding.bind_cpu_input(names.TOTAL_SEQUENCE_LENGTH, np.array(total, dtype=np.int32))
        self.session.run_with_iobinding(step.binding, self._options(rows))
        if not self.signature.candidates:
            return step.outputs[names.LOGITS].numpy()[:, 0]
        self._download_candidates(step.outputs, 0, rows)
        fetched: list[np.ndarray] = []

        def fetch(row: int) -> np.ndarray:
            if not fetched:  # one download serves every row of the step that needs its logits
                fetched.append(step.outputs[names.LOGITS].numpy()[:, 0])
            return fetched[0][row]

        return [self._row(row, temperature_values[row], lambda row=row: fetch(row)) for row in range(rows)]

    def _device_step(self, rows: int) -> _DeviceStep:
        step = self._device_steps.get(rows)
        if step is None:
            binding = self.session.io_binding()
            self.cache.bind(binding, 0, rows)
            step = _DeviceStep(binding, rows, self.vocab_size, self.signature.candidates, self.device)
            binding.bind_cpu_input(self._kept_name, self._kept_positions(1))
            binding.bind_cpu_input(names.TOTAL_SEQUENCE_LENGTH, np.array(self.capacity, dtype=np.int32))
            self._device_steps[rows] = step
        return step


class SerialRunner:
    """One slot over a DynamicCacheGenerator: its past cannot be cut back, so no prefix reuse."""

    supports_prefix_reuse = False
    can_move_slots = False
    slots = 1

    def __init__(self, loop: DynamicCacheGenerator) -> None:
        self.loop = loop
        self.capacity = loop.capacity

    def prefill(self, slot: int, token_ids: list[int], start: int, all_positions: bool = False, temperature: float = 1.0) -> np.ndarray:
        if start == 0:
            self.loop.reset()
        return self.loop.extend(token_ids) if all_positions else self.loop.forward(token_ids)

    def decode_rows(self, busy_rows: int) -> int:
        return busy_rows

    def decode(self, token_ids: list[int], positions: list[int], temperatures: list[float] | None = None) -> np.ndarray:
        return self.loop.forward(token_ids)[None]
