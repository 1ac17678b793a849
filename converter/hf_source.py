"""Reads a Hugging Face checkpoint folder (config.json, safetensors, tokenizer.json)."""

from __future__ import annotations

import json
from pathlib import Path

from converter.errors import ConversionError
from converter.model_config import (
    SUPPORTED_ARCHITECTURES,
    DecoderConfig,
    DecoderWeights,
    GenerationSettings,
    SourceModel,
    read_layers,
)
from converter.safetensors_reader import read_safetensors
from converter.weights import DenseWeight

HF_LAYER_NAMES = {
    "input_layernorm": "model.layers.{index}.input_layernorm.weight",
    "q_proj": "model.layers.{index}.self_attn.q_proj.weight",
    "k_proj": "model.layers.{index}.self_attn.k_proj.weight",
    "v_proj": "model.layers.{index}.self_attn.v_proj.weight",
    "o_proj": "model.layers.{index}.self_attn.o_proj.weight",
    "post_attention_layernorm": "model.layers.{index}.post_attention_layernorm.weight",
    "gate_proj": "model.layers.{index}.mlp.gate_proj.weight",
    "up_proj": "model.layers.{index}.mlp.up_proj.weight",
    "down_proj": "model.layers.{index}.mlp.down_proj.weight",
}


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from error


def _config(raw: dict) -> DecoderConfig:
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ConversionError(
            f"model_type {model_type!r} is not supported natively (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    if raw.get("rope_scaling"):
        raise ConversionError(f"rope_scaling {raw['rope_scaling']!r} is not supported yet")
    heads = raw["num_attention_heads"]
    return DecoderConfig(
        architecture=model_type,
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(raw.get("rope_theta", 10000.0)),
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        rope_interleaved=False,
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


def read_huggingface(folder: Path, file_hashes: dict[str, str]) -> SourceModel:
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ConversionError(f"{folder} has no config.json: not a Hugging Face checkpoint folder")
    raw_config = _read_json(config_path)
    config = _config(raw_config)
    tokenizer_path = folder / "tokenizer.json"
    if not tokenizer_path.exists():
        raise ConversionError(f"{folder} has no tokenizer.json")
    tokenizer_config = _read_json(folder / "tokenizer_config.json")
    tensors = _tensors(folder)

    def take(name: str):
        if name not in tensors:
            raise ConversionError(f"checkpoint tensor {name} is missing")
        return tensors[name]

    def matrix(name: str) -> DenseWeight:
        return DenseWeight(take(name), "F32")

    layers = read_layers(config.num_hidden_layers, HF_LAYER_NAMES, matrix, take)
    tied = config.tie_word_embeddings or "lm_head.weight" not in tensors
    weights = DecoderWeights(
        embed_tokens=matrix("model.embed_tokens.weight"),
        layers=layers,
        norm=take("model.norm.weight"),
        lm_head=None if tied else matrix("lm_head.weight"),
    )
    return SourceModel(
        name=folder.name,
        source_format="huggingface",
        config=config,
        weights=weights,
        tokenizer_json=tokenizer_path.read_text(encoding="utf-8"),
        chat_template=_chat_template(folder, tokenizer_config),
        generation=_generation(folder, raw_config, tokenizer_config),
        source_files=file_hashes,
    )
