"""Tiny random checkpoints of each native architecture, and GGUF files written from them.

transformers writes the checkpoints (save_pretrained); the GGUF writer does what llama.cpp's
convert_hf_to_gguf.py does for each architecture (tensor names, q/k permutation for llama,
Gemma's norm weights stored with their +1), so the converter reads the same files it would meet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I am fine, thank you.",
    "def add(a, b):\n    return a + b\n",
    "Numbers like 12345 and 3.14159 appear in text.",
    "Émile visited Zürich, Kraków and 東京 in 2024 🎉.",
] * 20
ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")
# Gemma 3 needs six layers for one full-attention layer among its sliding ones, and a window
# shorter than the test prompts so the window matters.
GEMMA3_SLIDING_WINDOW = 8


def train_tiny_tokenizer():
    """A real byte-level BPE tokenizer (300 tokens) trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer)
    return tokenizer


def _model(architecture: str, vocab_size: int, tie_word_embeddings: bool):
    """A transformers model of `architecture` with dimensions that fit 32-blocks."""
    import transformers

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=0,
    )
    if architecture == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    if architecture == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**{**common, "rope_theta": 1e6}))
    if architecture == "qwen3":
        return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**{**common, "head_dim": 16}))
    if architecture == "gemma3":
        config = transformers.Gemma3TextConfig(
            **{**common, "num_hidden_layers": 6, "rope_theta": 1e6},
            head_dim=32,
            query_pre_attn_scalar=24,
            sliding_window=GEMMA3_SLIDING_WINDOW,
            rope_local_base_freq=10000.0,
            hidden_activation="gelu_pytorch_tanh",
            final_logit_softcapping=None,
            attn_logit_softcapping=None,
        )
        return transformers.Gemma3ForCausalLM(config)
    if architecture == "gpt2":  # no native builder: the optimum backend's test subject
        return transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=256, bos_token_id=0, eos_token_id=2,
                tie_word_embeddings=tie_word_embeddings,
            )
        )
    raise ValueError(architecture)


def write_tiny_checkpoint(folder: Path, architecture: str = "llama", seed: int = 0, tie_word_embeddings: bool = False) -> Path:
    """A random checkpoint written by transformers, with random norms and biases too, so a
    mixed-up norm or a dropped bias cannot pass unnoticed."""
    import torch

    tokenizer = train_tiny_tokenizer()
    torch.manual_seed(seed)
    model = _model(architecture, tokenizer.get_vocab_size(), tie_word_embeddings).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                parameter.uniform_(-0.5, 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": CHATML_TEMPLATE, "add_bos_token": False, "eos_token": "<|im_end|>"})
    )
    return folder


def _permute_for_gguf(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (rotary on adjacent pairs)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


# HF layer tensor suffix -> GGUF tensor suffix, per architecture (llama.cpp's tensor names).
_GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
}
_GEMMA3_GGUF_NAMES = {
    **_GGUF_NAMES,
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}


def write_gguf_from_checkpoint(checkpoint: Path, out: Path, matrix_type=None, table_type=None) -> Path:
    """Writes a GGUF as llama.cpp's converter would, with chosen quantization types.

    `matrix_type` applies to the layers' matrices and `table_type` to the embedding table and
    head; both default to F32.
    """
    import gguf
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    config = json.loads((checkpoint / "config.json").read_text())
    architecture = {"gemma3_text": "gemma3"}.get(config["model_type"], config["model_type"])
    tensors = load_file(checkpoint / "model.safetensors")
    tokenizer = json.loads(Tokenizer.from_file(str(checkpoint / "tokenizer.json")).to_str())
    vocab = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in tokenizer["model"]["merges"]]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads

    writer = gguf.GGUFWriter(str(out), architecture)
    writer.add_name(out.stem)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(head_dim)
    if architecture == "gemma3":
        writer.add_sliding_window(config["sliding_window"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in SPECIAL_TOKENS else 1 for token in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    norm_offset = 1.0 if architecture == "gemma3" else 0.0  # llama.cpp stores Gemma's 1 + w

    def add(name: str, values: np.ndarray, kind) -> None:
        if name.endswith("norm.weight"):
            values = values + norm_offset
        if kind is None or values.ndim == 1:
            writer.add_tensor(name, values.astype(np.float32))
        else:
            writer.add_tensor(name, gguf.quants.quantize(values.astype(np.float32), kind), raw_dtype=kind)

    names = _GEMMA3_GGUF_NAMES if architecture == "gemma3" else _GGUF_NAMES
    add("token_embd.weight", tensors["model.embed_tokens.weight"], table_type)
    for index in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{index}."
        for hf_name, values in sorted(tensors.items()):
            if not hf_name.startswith(prefix):
                continue
            suffix = hf_name[len(prefix) :]
            if architecture == "llama" and suffix == "self_attn.q_proj.weight":
                values = _permute_for_gguf(values, heads)
            if architecture == "llama" and suffix == "self_attn.k_proj.weight":
                values = _permute_for_gguf(values, kv_heads)
            add(f"blk.{index}.{names[suffix]}", values, matrix_type)
    add("output_norm.weight", tensors["model.norm.weight"], None)
    if "lm_head.weight" in tensors and not config.get("tie_word_embeddings"):
        add("output.weight", tensors["lm_head.weight"], table_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
