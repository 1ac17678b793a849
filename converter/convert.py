"""Source in, model folder out: read, quantize, build the graph, write everything atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import onnx

from converter import CONVERTER_VERSION
from converter.decoder_graph import build_decoder
from converter.errors import ConversionError
from converter.gguf_source import GGUF_MAGIC, read_gguf
from converter.hf_source import read_huggingface
from converter.model_config import SourceModel
from converter.progress import Progress
from converter.quantization import QUANT_MODES, apply_quantization, quantization_table, split_8bit_weights

MANIFEST_FORMAT = 1
# Protobuf caps one file at 2 GiB; larger graphs keep their weights in a side file.
_SINGLE_FILE_LIMIT = 1_800_000_000

# How quantized matmuls treat activations (MatMulNBits accuracy_level by weight bits). fp32 is
# exact (8-bit weights run as two 4-bit halves, since ORT has no fast float kernel for them);
# int8 lets ORT quantize activations per block, which on SmolLM2-135M Q4_1 was about 25% faster
# and cost 2.7% perplexity.
ACCURACY_LEVELS = {"fp32": {4: 0, 8: 0}, "int8": {4: 4, 8: 4}}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_digest(source: Path) -> tuple[str, dict[str, str]]:
    """One sha256 for the source (a file, or a folder's files in name order) plus each file's."""
    if source.is_file():
        digest = sha256_of(source)
        return digest, {source.name: digest}
    files = {path.name: sha256_of(path) for path in sorted(source.iterdir()) if path.is_file()}
    combined = hashlib.sha256("".join(f"{name}:{digest}\n" for name, digest in files.items()).encode())
    return combined.hexdigest(), files


def read_source(source: Path, file_hashes: dict[str, str], progress: Progress = Progress()) -> SourceModel:
    if not source.exists():
        raise ConversionError(f"{source} does not exist")
    if source.is_dir():
        return read_huggingface(source, file_hashes, progress)
    with source.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ConversionError(f"{source} is neither a GGUF file (wrong magic bytes) nor a checkpoint folder")
    return read_gguf(source, file_hashes[source.name], progress)


def convert(
    source: Path,
    out: Path,
    quant: str = "keep",
    force: bool = False,
    progress: Progress = Progress(),
    model_id: str | None = None,
    activation_precision: str = "fp32",
    source_hashes: tuple[str, dict[str, str]] | None = None,
) -> Path:
    """Writes the model folder for `source` at `out` and returns it.

    `source_hashes` is `source_digest(source)` when the caller already computed it.

    The folder is built beside `out` and renamed into place at the end, so a failure or an
    interruption never leaves a half-written model where the service would load it.
    """
    if activation_precision not in ACCURACY_LEVELS:
        raise ConversionError(f"activation precision {activation_precision!r} is not one of {', '.join(ACCURACY_LEVELS)}")
    if quant not in QUANT_MODES:
        raise ConversionError(f"--quant {quant!r} is not one of {', '.join(QUANT_MODES)}")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConversionError(f"{out} already exists and is not empty (pass --force to replace it)")
    if source_hashes is None and source.exists():
        progress.stage(f"hashing {source}")
        source_hashes = source_digest(source)
    digest, file_hashes = source_hashes or ("", {})
    progress.stage("reading weights")
    model = read_source(source, file_hashes, progress)
    weights = apply_quantization(model.weights, quant)
    if activation_precision == "fp32":
        weights = split_8bit_weights(weights)
    progress.stage(f"building the {model.config.architecture} graph ({model.config.num_hidden_layers} layers)")
    graph = build_decoder(model.config, weights, ACCURACY_LEVELS[activation_precision], progress)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)
    try:
        progress.stage("writing the model folder")
        quantization = {
            "mode": quant,
            "activation_precision": activation_precision,
            "tensors": quantization_table(weights),
        }
        _write_folder(staging, model, graph, quantization, digest, model_id or model.name)
        _replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress.stage(f"done: {out}")
    return out


def _write_folder(
    folder: Path, model: SourceModel, graph: onnx.ModelProto, quantization: dict, digest: str, model_id: str
) -> None:
    large = graph.ByteSize() > _SINGLE_FILE_LIMIT
    onnx.save_model(
        graph,
        folder / "model.onnx",
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
    )
    (folder / "tokenizer.json").write_text(model.tokenizer_json, encoding="utf-8")
    if model.chat_template:
        (folder / "chat_template.jinja").write_text(model.chat_template, encoding="utf-8")
    _write_json(folder / "generation.json", model.generation.to_json())
    manifest = {
        "format": MANIFEST_FORMAT,
        "model_id": model_id,
        "converter_version": CONVERTER_VERSION,
        "source": {"format": model.source_format, "sha256": digest, "files": model.source_files},
        "architecture": model.config.architecture,
        "context_length": model.config.max_position_embeddings,
        "config": model.config.to_json(),
        "quantization": quantization,
        "files": {
            path.name: {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
            for path in sorted(folder.iterdir())
        },
    }
    _write_json(folder / "manifest.json", manifest)


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _replace(staging: Path, out: Path) -> None:
    """Moves the finished folder into place; an existing one is moved aside first, then removed."""
    if out.exists():
        aside = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, aside)
        os.replace(staging, out)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staging, out)
