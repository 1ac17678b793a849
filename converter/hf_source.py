"""Reads a Hugging Face checkpoint folder (config.json, safetensors, tokenizer.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.errors import ConversionError
from converter.model_config import (
    DecoderConfig,
    DecoderWeights,
    GenerationSettings,
    SourceModel,
    every_nth_layer_full,
    read_layers,
)
from converter.progress import Progress
from converter.safetensors_reader import read_safetensors
from converter.weights import DenseWeight

_LAYER = "model.layers.{index}"
_LLAMA_NAMES = {
    "input_layernorm": f"{_LAYER}.input_layernorm.weight",
    "q_proj": f"{_LAYER}.self_attn.q_proj.weight",
    "k_proj": f"{_LAYER}.self_attn.k_proj.weight",
    "v_proj": f"{_LAYER}.self_attn.v_proj.weight",
    "o_proj": f"{_LAYER}.self_attn.o_proj.weight",
    "pre_feedforward_layernorm": f"{_LAYER}.post_attention_layernorm.weight",
    "gate_proj": f"{_LAYER}.mlp.gate_proj.weight",
    "up_proj": f"{_LAYER}.mlp.up_proj.weight",
    "down_proj": f"{_LAYER}.mlp.down_proj.weight",
}
_BIASES = {f"{part}_bias": f"{_LAYER}.self_attn.{part}_proj.bias" for part in ("q", "k", "v")}
_QK_NORMS = {f"{part}_norm": f"{_LAYER}.self_attn.{part}_norm.weight" for part in ("q", "k")}
# Tensor names by architecture: which parts each one's layers have (see LayerWeights).
HF_LAYER_NAMES = {
    "llama": _LLAMA_NAMES,
    "qwen2": {**_LLAMA_NAMES, **_BIASES},
    "qwen3": {**_LLAMA_NAMES, **_QK_NORMS},
    "gemma3": {
        **_LLAMA_NAMES,
        **_QK_NORMS,
        "post_attention_layernorm": f"{_LAYER}.post_attention_layernorm.weight",
        "pre_feedforward_layernorm": f"{_LAYER}.pre_feedforward_layernorm.weight",
        "post_feedforward_layernorm": f"{_LAYER}.post_feedforward_layernorm.weight",
    },
}
# model_type in config.json -> our architecture name.
_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3"}
# Gemma's RMSNorm multiplies by (1 + weight); adding the 1 once here lets every architecture
# share one norm kernel.
_NORM_WEIGHT_OFFSET = {"gemma3": 1.0}
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from error


def _config(raw: dict) -> DecoderConfig:
    def need(key: str):
        if key not in raw:
            raise ConversionError(f"config.json has no {key}")
        return raw[key]

    model_type = raw.get("model_type")
    architecture = _MODEL_TYPES.get(model_type)
    if architecture is None:
        raise ConversionError(
            f"model_type {model_type!r} is not supported natively (supported: {', '.join(_MODEL_TYPES)})"
        )
    rope_scaling = raw.get("rope_scaling") or {}
    scaling_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if scaling_type not in (None, "default", "linear"):
        raise ConversionError(f"rope_scaling {rope_scaling!r} is not supported (supported: linear)")
    if raw.get("use_sliding_window") and architecture != "gemma3":
        raise ConversionError(f"{model_type} with use_sliding_window is not supported")
    activation = raw.get("hidden_activation") or raw.get("hidden_act", "silu")
    if activation not in _ACTIVATIONS:
        raise ConversionError(f"hidden activation {activation!r} is not supported (supported: {', '.join(_ACTIVATIONS)})")
    heads = need("num_attention_heads")
    head_dim = raw.get("head_dim") or need("hidden_size") // heads
    gemma = architecture == "gemma3"
    return DecoderConfig(
        architecture=architecture,
        vocab_size=need("vocab_size"),
        hidden_size=need("hidden_size"),
        intermediate_size=need("intermediate_size"),
        num_hidden_layers=need("num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(raw.get("rope_theta", 10000.0)),
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", gemma)),
        rope_interleaved=False,
        hidden_activation=_ACTIVATIONS[activation],
        attention_scale=float(raw.get("query_pre_attn_scalar", 256)) ** -0.5 if gemma else None,  # HF default
        attention_softcap=float(raw.get("attn_logit_softcapping") or 0.0),
        final_logit_softcap=float(raw.get("final_logit_softcapping") or 0.0),
        embedding_scale=float(need("hidden_size")) ** 0.5 if gemma else 1.0,
        rope_scaling_factor=float(rope_scaling.get("factor", 1.0)) if scaling_type == "linear" else 1.0,
        layer_types=(
            tuple(raw.get("layer_types") or every_nth_layer_full(need("num_hidden_layers"), raw.get("sliding_window_pattern", 6)))
            if gemma
            else ()
        ),
        sliding_window=int(raw.get("sliding_window") or 0) if gemma else 0,
        rope_local_theta=float(raw.get("rope_local_base_freq", 10000.0)) if gemma else None,
    )


def _tensors(folder: Path) -> dict:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"{folder} has no .safetensors weights")
    tensors = {}
    for path in files:
        tensors.update(read_safetensors(path))
    return tensors


def _chat_template(folder: Path, tokenizer_config: dict) -> str | None:
    template_file = folder / "chat_template.jinja"
    if template_file.exists():
        return template_file.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # a list of named templates: take the default one
        named = {entry.get("name"): entry.get("template") for entry in template}
        template = named.get("default")
    return template


def _generation(folder: Path, config: dict, tokenizer_config: dict) -> GenerationSettings:
    generation = _read_json(folder / "generation_config.json")
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    eos_ids = eos if isinstance(eos, list) else ([] if eos is None else [eos])
    defaults = {key: generation[key] for key in ("temperature", "top_p", "top_k") if key in generation}
    return GenerationSettings(
        bos_token_id=generation.get("bos_token_id", config.get("bos_token_id")),
        eos_token_ids=[int(value) for value in eos_ids],
        add_bos_token=bool(tokenizer_config.get("add_bos_token", False)),
        pad_token_id=generation.get("pad_token_id", config.get("pad_token_id")),
        defaults=defaults,
    )


@dataclass(frozen=True)
class CheckpointTexts:
    """What a checkpoint folder says besides its weights; the optimum backend reads it too."""

    config: dict
    tokenizer_json: str
    chat_template: str | None
    generation: GenerationSettings


def read_checkpoint_texts(folder: Path) -> CheckpointTexts:
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ConversionError(f"{folder} has no config.json: not a Hugging Face checkpoint folder")
    raw_config = _read_json(config_path)
    tokenizer_path = folder / "tokenizer.json"
    if not tokenizer_path.exists():
        raise ConversionError(f"{folder} has no tokenizer.json")
    tokenizer_config = _read_json(folder / "tokenizer_config.json")
    return CheckpointTexts(
        config=raw_config,
        tokenizer_json=tokenizer_path.read_text(encoding="utf-8"),
        chat_template=_chat_template(folder, tokenizer_config),
        generation=_generation(folder, raw_config, tokenizer_config),
    )


def read_huggingface(folder: Path, progress: Progress = Progress()) -> SourceModel:
    texts = read_checkpoint_texts(folder)
    config = _config(texts.config)
    tensors = _tensors(folder)

    def take(name: str):
        if name not in tensors:
            raise ConversionError(f"checkpoint tensor {name} is missing")
        return tensors[name]

    def matrix(name: str) -> DenseWeight:
        return DenseWeight(take(name), "F32")

    norm_offset = _NORM_WEIGHT_OFFSET.get(config.architecture, 0.0)

    def vector(name: str) -> np.ndarray:
        values = take(name).astype(np.float32)
        return values + norm_offset if name.endswith("norm.weight") else values

    layers = read_layers(config.num_hidden_layers, HF_LAYER_NAMES[config.architecture], matrix, vector, progress.track)
    tied = config.tie_word_embeddings or "lm_head.weight" not in tensors
    weights = DecoderWeights(
        embed_tokens=matrix("model.embed_tokens.weight"),
        layers=layers,
        norm=vector("model.norm.weight"),
        lm_head=None if tied else matrix("lm_head.weight"),
    )
    return SourceModel(
        name=folder.name,
        source_format="huggingface",
        config=config,
        weights=weights,
        tokenizer_json=texts.tokenizer_json,
        chat_template=texts.chat_template,
        generation=texts.generation,
    )
