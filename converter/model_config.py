"""What the graph builder needs to know about a decoder model, whatever file it came from."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from converter.weights import LinearWeight

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")
FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"


@dataclass(frozen=True)
class DecoderConfig:
    """Shapes and constants of a decoder, named as in Hugging Face configs.

    The defaults describe Llama; Qwen and Gemma differ only in the values of the optional fields
    (and in which optional tensors their layers carry, see LayerWeights).
    """

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
    hidden_activation: str = "silu"  # or "gelu_tanh" (Gemma)
    attention_scale: float | None = None  # None: head_dim ** -0.5
    attention_softcap: float = 0.0  # 0: no tanh cap on attention scores
    final_logit_softcap: float = 0.0
    embedding_scale: float = 1.0  # Gemma multiplies embeddings by sqrt(hidden_size)
    rope_scaling_factor: float = 1.0  # linear position interpolation on full-attention layers
    # Per layer FULL_ATTENTION or SLIDING_ATTENTION; sliding layers see the last `sliding_window`
    # positions (the current one included) and use `rope_local_theta` when it is set.
    layer_types: tuple[str, ...] = ()
    sliding_window: int = 0
    rope_local_theta: float | None = None

    def __post_init__(self) -> None:
        if not self.layer_types:
            object.__setattr__(self, "layer_types", (FULL_ATTENTION,) * self.num_hidden_layers)
        else:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))

    def to_json(self) -> dict:
        return asdict(self)


def every_nth_layer_full(count: int, period: int) -> tuple[str, ...]:
    """Gemma 3's layout: `period - 1` sliding-window layers, then one full-attention layer."""
    return tuple(SLIDING_ATTENTION if (index + 1) % period else FULL_ATTENTION for index in range(count))


@dataclass
class LayerWeights:
    """One transformer block; the roles are named as in Gemma, which has every one of them.

    Llama's `post_attention_layernorm` is the norm *before* the MLP, so it fills
    `pre_feedforward_layernorm` here. Optional parts are None where an architecture lacks them:
    q/k/v biases (Qwen 2), per-head q/k norms (Qwen 3, Gemma 3), norms on the attention and MLP
    outputs (Gemma 3).
    """

    input_layernorm: np.ndarray
    q_proj: LinearWeight
    k_proj: LinearWeight
    v_proj: LinearWeight
    o_proj: LinearWeight
    pre_feedforward_layernorm: np.ndarray
    gate_proj: LinearWeight
    up_proj: LinearWeight
    down_proj: LinearWeight
    q_bias: np.ndarray | None = None
    k_bias: np.ndarray | None = None
    v_bias: np.ndarray | None = None
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None
    post_attention_layernorm: np.ndarray | None = None
    post_feedforward_layernorm: np.ndarray | None = None


MATRIX_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def read_layers(
    count: int,
    source_names: dict[str, str],
    matrix: Callable[[str], LinearWeight],
    vector: Callable[[str], np.ndarray],
    track: Callable[[Iterable[int], str, int], Iterator[int]] = lambda items, description, total: iter(items),
) -> list[LayerWeights]:
    """Builds each layer from a table of source tensor names ("{index}" stands for the layer).

    The table names the parts an architecture has; parts it leaves out stay None.
    """
    return [
        LayerWeights(
            **{
                part: (matrix if part in MATRIX_PARTS else vector)(name.format(index=index))
                for part, name in source_names.items()
            }
        )
        for index in track(range(count), "reading layers", count)
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
