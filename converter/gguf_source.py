"""Reads a GGUF file (llama, qwen2, qwen3 or gemma3 architecture) into a SourceModel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType

from converter.errors import ConversionError
from converter.gguf_blocks import dense_from_gguf, matrix_from_gguf
from converter.model_config import (
    SUPPORTED_ARCHITECTURES,
    DecoderConfig,
    DecoderWeights,
    GenerationSettings,
    SourceModel,
    every_nth_layer_full,
    read_layers,
)
from converter.progress import Progress
from converter.tokenizer_from_gguf import tokenizer_json_from_gguf

GGUF_MAGIC = b"GGUF"
_BLOCK = "blk.{index}"
_LLAMA_NAMES = {
    "input_layernorm": f"{_BLOCK}.attn_norm.weight",
    "q_proj": f"{_BLOCK}.attn_q.weight",
    "k_proj": f"{_BLOCK}.attn_k.weight",
    "v_proj": f"{_BLOCK}.attn_v.weight",
    "o_proj": f"{_BLOCK}.attn_output.weight",
    "pre_feedforward_layernorm": f"{_BLOCK}.ffn_norm.weight",
    "gate_proj": f"{_BLOCK}.ffn_gate.weight",
    "up_proj": f"{_BLOCK}.ffn_up.weight",
    "down_proj": f"{_BLOCK}.ffn_down.weight",
}
_QK_NORMS = {"q_norm": f"{_BLOCK}.attn_q_norm.weight", "k_norm": f"{_BLOCK}.attn_k_norm.weight"}
# Tensor names by architecture (llama.cpp's names): which parts each one's layers have.
GGUF_LAYER_NAMES = {
    "llama": _LLAMA_NAMES,
    "qwen2": {**_LLAMA_NAMES, **{f"{part}_bias": f"{_BLOCK}.attn_{part}.bias" for part in ("q", "k", "v")}},
    "qwen3": {**_LLAMA_NAMES, **_QK_NORMS},
    "gemma3": {
        **_LLAMA_NAMES,
        **_QK_NORMS,
        "post_attention_layernorm": f"{_BLOCK}.post_attention_norm.weight",
        "post_feedforward_layernorm": f"{_BLOCK}.post_ffw_norm.weight",
    },
}
# Only llama.cpp's llama converter permutes q/k rows for rotary on adjacent pairs; Qwen and Gemma
# use the "neox" layout, which is Hugging Face's.
_INTERLEAVED_ROPE = {"llama"}
# Gemma 3 constants llama.cpp fixes in code rather than in the file: every sixth layer attends
# globally, the sliding layers' rotary base is 10000.
_GEMMA3_SLIDING_PERIOD = 6
_GEMMA3_LOCAL_ROPE_BASE = 10000.0


def read_fields(reader: GGUFReader) -> dict:
    """GGUF metadata as plain Python values (strings decoded, arrays as lists)."""
    values = {}
    for key, field in reader.fields.items():
        if field.types and field.types[0] == GGUFValueType.ARRAY and len(field.types) > 1:
            if field.types[1] == GGUFValueType.STRING:
                values[key] = [bytes(field.parts[index]).decode("utf-8", errors="replace") for index in field.data]
            else:
                values[key] = [field.parts[index].tolist()[0] for index in field.data]
        else:
            values[key] = field.contents()
    return values


def _open(path: Path) -> GGUFReader:
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ConversionError(f"{path} is not a GGUF file (wrong magic bytes)")
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, OSError) as error:
        raise ConversionError(f"{path} is not a readable GGUF file (truncated or corrupt): {error}") from error


def _config(fields: dict, vocab_size: int, tied: bool) -> DecoderConfig:
    architecture = fields["general.architecture"]

    def key(name: str, default=None):
        value = fields.get(f"{architecture}.{name}", default)
        if value is None:
            raise ConversionError(f"GGUF metadata {architecture}.{name} is missing")
        return value

    hidden = int(key("embedding_length"))
    heads = int(key("attention.head_count"))
    layers = int(key("block_count"))
    head_dim = int(key("attention.key_length", hidden // heads))
    scaling_type = fields.get(f"{architecture}.rope.scaling.type", "none")
    if scaling_type not in ("none", "linear"):
        raise ConversionError(f"GGUF rope scaling {scaling_type!r} is not supported (supported: linear)")
    gemma = architecture == "gemma3"
    if gemma:
        # llama.cpp: 1/sqrt(head_dim), except Gemma 3 27B (62 blocks), which scales by hidden/heads.
        attention_scale = float(hidden // heads if layers == 62 else head_dim) ** -0.5
    return DecoderConfig(
        architecture=architecture,
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=int(key("attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        rope_theta=float(key("rope.freq_base", 10000.0)),
        max_position_embeddings=int(key("context_length")),
        tie_word_embeddings=tied,
        rope_interleaved=architecture in _INTERLEAVED_ROPE,
        hidden_activation="gelu_tanh" if gemma else "silu",
        attention_scale=attention_scale if gemma else None,
        attention_softcap=float(key("attn_logit_softcapping", 0.0)),
        final_logit_softcap=float(key("final_logit_softcapping", 0.0)),
        embedding_scale=float(hidden) ** 0.5 if gemma else 1.0,
        rope_scaling_factor=float(key("rope.scaling.factor", 1.0)) if scaling_type == "linear" else 1.0,
        layer_types=every_nth_layer_full(layers, int(key("attention.sliding_window_pattern", _GEMMA3_SLIDING_PERIOD))) if gemma else (),
        sliding_window=int(key("attention.sliding_window")) if gemma else 0,
        rope_local_theta=_GEMMA3_LOCAL_ROPE_BASE if gemma else None,
    )


def _generation(fields: dict) -> GenerationSettings:
    def token(name: str) -> int | None:
        value = fields.get(f"tokenizer.ggml.{name}_token_id")
        return None if value is None else int(value)

    stop_ids = [value for value in (token("eos"), token("eot"), token("eom")) if value is not None]
    return GenerationSettings(
        bos_token_id=token("bos"),
        eos_token_ids=list(dict.fromkeys(stop_ids)),
        add_bos_token=bool(fields.get("tokenizer.ggml.add_bos_token", False)),
        pad_token_id=token("padding"),
    )


def read_gguf(path: Path, progress: Progress = Progress()) -> SourceModel:
    reader = _open(path)
    fields = read_fields(reader)
    architecture = fields.get("general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ConversionError(
            f"GGUF architecture {architecture!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    tensors = {tensor.name: tensor for tensor in reader.tensors}

    def matrix(name: str):
        tensor = tensors.get(name)
        if tensor is None:
            raise ConversionError(f"GGUF tensor {name} is missing")
        columns, rows = (int(size) for size in tensor.shape[:2])
        return matrix_from_gguf(tensor.data, tensor.tensor_type, rows, columns)

    def vector(name: str) -> np.ndarray:
        tensor = tensors.get(name)
        if tensor is None:
            raise ConversionError(f"GGUF tensor {name} is missing")
        return dense_from_gguf(tensor.data, tensor.tensor_type).reshape(-1)

    embed = matrix("token_embd.weight")
    tied = "output.weight" not in tensors
    config = _config(fields, embed.shape[0], tied)
    layers = read_layers(config.num_hidden_layers, GGUF_LAYER_NAMES[architecture], matrix, vector, progress.track)
    weights = DecoderWeights(
        embed_tokens=embed,
        layers=layers,
        norm=vector("output_norm.weight"),
        lm_head=None if tied else matrix("output.weight"),
    )
    return SourceModel(
        name=path.stem,
        source_format="gguf",
        config=config,
        weights=weights,
        tokenizer_json=tokenizer_json_from_gguf(fields),
        chat_template=fields.get("tokenizer.chat_template"),
        generation=_generation(fields),
    )
