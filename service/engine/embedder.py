"""Text embeddings from a decoder graph: the mean of its final hidden states, normalized.

The converter's graph gives `last_hidden_state` (the final norm's output) at every position of
a run, so an embedding needs only the prompt's prefill: no logits beyond the last position and
no sampling. Pooling: the mean over every token of the input (the BOS token included when the
tokenizer adds one), then scaled to unit length, so that a dot product is the cosine similarity
(as OpenAI's embeddings are). A decoder's tokens see only the tokens before them, which is why
the mean, not the last token, stands for the whole text.

An input runs with a KV cache of its own, sized to the input and dropped afterwards, so the
engine's slots and their cached prefixes are never touched; the session is shared with the
engine (ONNX Runtime sessions may run on several threads at once).
"""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort

from converter import graph_interface as names
from service.engine.batch_runner import GraphSignature, ModelShape
from service.engine.decode_loop import PREFILL_CHUNK
from service.engine.kv_cache import SlotCache


class Embedder:
    def __init__(self, session: ort.InferenceSession, shape: ModelShape, device: str = "cpu") -> None:
        self.session = session
        self.shape = shape
        self.device = device
        self.signature = GraphSignature.of(session)
        cuda_options = session.get_provider_options().get("CUDAExecutionProvider", {})
        self._run_options = None
        if cuda_options.get("enable_cuda_graph") == "1":  # a prefill-like run: replay no captured graph
            self._run_options = ort.RunOptions()
            self._run_options.add_run_config_entry("gpu_graph_id", "-1")
        # One input at a time per model: each takes the machine's cores, as a prefill does.
        self._lock = threading.Lock()

    @staticmethod
    def supports(session: ort.InferenceSession) -> bool:
        """Whether the graph gives final hidden states (converter 0.7.0 and later)."""
        return names.LAST_HIDDEN_STATE in {output.name for output in session.get_outputs()}

    def hidden_states(self, token_ids: list[int]) -> np.ndarray:
        """The final hidden state after every token, (tokens, hidden), in prompt chunks."""
        cache = SlotCache(
            self.shape.layers, self.shape.kv_heads, self.shape.head_dim, len(token_ids), 1, self.device, self.signature.cache_dtype
        )
        kept_name = names.LOGITS_START if self.signature.takes_logits_start else names.NUM_LOGITS_TO_KEEP
        kept = np.array([-1 if self.signature.takes_logits_start else 1], dtype=np.int64)
        chunks = []
        for start in range(0, len(token_ids), PREFILL_CHUNK):
            chunk = token_ids[start : start + PREFILL_CHUNK]
            length = start + len(chunk)
            binding = self.session.io_binding()
            cache.bind(binding, 0, 1)
            binding.bind_cpu_input(names.INPUT_IDS, np.array([chunk], dtype=np.int64))
            binding.bind_cpu_input(names.SEQLENS_K, np.array([length - 1], dtype=np.int32))
            binding.bind_cpu_input(names.TOTAL_SEQUENCE_LENGTH, np.array(length, dtype=np.int32))
            binding.bind_cpu_input(kept_name, kept)
            if self.signature.candidates:
                binding.bind_cpu_input(names.TEMPERATURES, np.ones(1, dtype=np.float32))
            binding.bind_output(names.LAST_HIDDEN_STATE, "cpu")
            self.session.run_with_iobinding(binding, self._run_options)
            chunks.append(binding.copy_outputs_to_cpu()[-1][0])
        return np.concatenate(chunks)

    def embed(self, token_ids: list[int]) -> np.ndarray:
        """The input's embedding: mean-pooled final hidden states at unit length, float32."""
        if not token_ids:
            raise ValueError("the input is empty")
        with self._lock:
            states = self.hidden_states(token_ids)
        pooled = states.astype(np.float64).mean(axis=0)
        norm = np.linalg.norm(pooled)
        return (pooled / norm if norm > 0 else pooled).astype(np.float32)
