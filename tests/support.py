"""Helpers shared by tests/ and e2e/: tiny checkpoints, GGUF files, real servers on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


def write_tiny_llama(folder: Path, seed: int = 0, tie_word_embeddings: bool = False) -> Path:
    """A random Llama checkpoint written by transformers, with dimensions that fit 32-blocks."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
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
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norms too, so a mixed-up norm weight cannot pass unnoticed
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
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


def write_gguf_from_checkpoint(checkpoint: Path, out: Path, matrix_type=None, table_type=None) -> Path:
    """Writes a llama GGUF as llama.cpp's converter would, with chosen quantization types.

    `matrix_type` applies to the layers' matrices and `table_type` to the embedding table; both
    default to F32. Returns the path and leaves the reference weights to the caller.
    """
    import gguf
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    config = json.loads((checkpoint / "config.json").read_text())
    tensors = load_file(checkpoint / "model.safetensors")
    tokenizer = json.loads(Tokenizer.from_file(str(checkpoint / "tokenizer.json")).to_str())
    vocab = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in tokenizer["model"]["merges"]]
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(out.stem)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(config["hidden_size"] // config["num_attention_heads"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in SPECIAL_TOKENS else 1 for token in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    def add(name: str, values: np.ndarray, kind) -> None:
        if kind is None or values.ndim == 1:
            writer.add_tensor(name, values.astype(np.float32))
        else:
            writer.add_tensor(name, gguf.quants.quantize(values.astype(np.float32), kind), raw_dtype=kind)

    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    add("token_embd.weight", tensors["model.embed_tokens.weight"], table_type)
    for index in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{index}"
        add(f"blk.{index}.attn_norm.weight", tensors[f"{prefix}.input_layernorm.weight"], None)
        add(f"blk.{index}.attn_q.weight", _permute_for_gguf(tensors[f"{prefix}.self_attn.q_proj.weight"], heads), matrix_type)
        add(f"blk.{index}.attn_k.weight", _permute_for_gguf(tensors[f"{prefix}.self_attn.k_proj.weight"], kv_heads), matrix_type)
        add(f"blk.{index}.attn_v.weight", tensors[f"{prefix}.self_attn.v_proj.weight"], matrix_type)
        add(f"blk.{index}.attn_output.weight", tensors[f"{prefix}.self_attn.o_proj.weight"], matrix_type)
        add(f"blk.{index}.ffn_norm.weight", tensors[f"{prefix}.post_attention_layernorm.weight"], None)
        add(f"blk.{index}.ffn_gate.weight", tensors[f"{prefix}.mlp.gate_proj.weight"], matrix_type)
        add(f"blk.{index}.ffn_up.weight", tensors[f"{prefix}.mlp.up_proj.weight"], matrix_type)
        add(f"blk.{index}.ffn_down.weight", tensors[f"{prefix}.mlp.down_proj.weight"], matrix_type)
    add("output_norm.weight", tensors["model.norm.weight"], None)
    if "lm_head.weight" in tensors:
        add("output.weight", tensors["lm_head.weight"], table_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


class ServiceProcess:
    """`python -m service` in a subprocess on a free loopback port, stopped on exit."""

    def __init__(self, *arguments: str, log_path: Path, wait_ready: bool = True, timeout: float = 300) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        environment = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(self.port), *arguments],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        self.wait_listening(timeout)
        if wait_ready:
            self.wait_ready(timeout)

    def _poll(self, path: str, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}:\n{self.log()}")
            try:
                if done(httpx.get(self.url + path, timeout=2)):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the service did not answer {path} in {timeout}s:\n{self.log()}")

    def wait_listening(self, timeout: float) -> None:
        self._poll("/livez", lambda response: response.status_code == 200, timeout)

    def wait_ready(self, timeout: float) -> None:
        """Waits until every model is ready; a model that failed to load fails the wait."""

        def settled(response: httpx.Response) -> bool:
            statuses = response.json()["models"].values()
            if "failed" in statuses:
                raise RuntimeError(f"a model failed to load: {response.text}\n{self.log()}")
            return bool(statuses) and all(status == "ready" for status in statuses)

        self._poll("/readyz", settled, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class StaticServer:
    """Serves a folder over HTTP on loopback, as any static host would serve the SPA."""

    def __init__(self, folder: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1", "--directory", str(folder)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise TimeoutError("the static server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)
        self._log.close()
