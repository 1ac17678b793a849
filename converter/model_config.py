"""What the graph builder needs to know about a decoder model, whatever file it came from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from converter.weights import LinearWeight

SUPPORTED_ARCHITECTURES = ("llama",)


@dataclass(frozen=True)
class DecoderConfig:
    """Shapes and constants of a llama-family decoder, named as in Hugging Face configs."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    # GGUF llama files store q/k rows permuted for rotary on adjacent pairs; HF uses halves.
    rope_interleaved: bool = False

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class LayerWeights:
    """One transformer block, names after the HF llama modules."""

    input_layernorm: np.ndarray
    q_proj: LinearWeight
    k_proj: LinearWeight
    v_proj: LinearWeight
    o_proj: LinearWeight
    post_attention_layernorm: np.ndarray
    gate_proj: LinearWeight
    up_proj: LinearWeight
    down_proj: LinearWeight


def read_layers(
    count: int,
    source_names: dict[str, str],
    matrix: Callable[[str], LinearWeight],
    vector: Callable[[str], np.ndarray],
) -> list[LayerWeights]:
    """Builds each layer from a table of source tensor names ("{index}" stands for the layer)."""
    vectors = {"input_layernorm", "post_attention_layernorm"}
    return [
        LayerWeights(
            **{
                item.name: (vector if item.name in vectors else matrix)(source_names[item.name].format(index=index))
                for item in fields(LayerWeights)
            }
        )
        for index in range(count)
    ]


@dataclass
class DecoderWeights:
    embed_tokens: LinearWeight
    layers: list[LayerWeights]
    norm: np.ndarray
    lm_head: LinearWeight | None  # None when tied to embed_tokens


@dataclass
class GenerationSettings:
    """Token ids and defaults the engine needs to start and stop generating."""

    bos_token_id: int | None
    eos_token_ids: list[int]
    add_bos_token: bool
    pad_token_id: int | None = None
    defaults: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class SourceModel:
    """Everything read from a source before the graph is built."""

    name: str
    source_format: str  # "gguf" or "huggingface"
    config: DecoderConfig
    weights: DecoderWeights
    tokenizer_json: str
    chat_template: str | None
    generation: GenerationSettings
    source_files: dict[str, str]  # file name -> sha256
