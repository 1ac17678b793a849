"""Source in, model folder out: read, quantize, build the graph, write everything atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from converter import CONVERTER_VERSION, optimum_backend
from converter.blocks import INT8_ACTIVATIONS
from converter.decoder_graph import build_decoder
from converter.errors import ConversionError
from converter.gguf_source import GGUF_MAGIC, read_gguf
from converter.hf_source import read_checkpoint_texts, read_huggingface
from converter.model_config import SourceModel
from converter.onnx_quantization import BLOCK_SIZES, INT4_ALGORITHMS, quantize_matmuls
from converter.progress import Progress
from converter.targets import TARGETS
from converter.quantization import (
    OWN_INT4,
    QUANT_MODES,
    apply_quantization,
    layer_matrix_names,
    quantization_table,
    split_8bit_weights,
)

MANIFEST_FORMAT = 1
NATIVE_INTERFACE = "native"
BACKENDS = ("native", "optimum")
# Weights live in a side file that ONNX Runtime maps instead of reading: a graph read whole sat in
# memory beside the kernels' repacked copies (Gemma 3 270M: 704 MiB resident after loading as one
# file, 468 MiB mapped), and only the pages a gather touches of an embedding table become resident.
# Constants under this many bytes stay in the graph file.
_SIDE_FILE_THRESHOLD = 1024

# How quantized matmuls treat activations (MatMulNBits accuracy_level by weight bits). fp32 is
# exact (8-bit weights run as two 4-bit halves, since ORT has no fast float kernel for them);
# int8 lets ORT quantize activations per block (and lets block minimums fold into the matmul,
# weights.fold_minimums): faster on CPU for a small perplexity cost (docs/conversion.md). fp16 is
# the CUDA target's (converter.targets): its MatMulNBits take float16 inputs as they are.
ACCURACY_LEVELS = {"fp32": {4: 0, 8: 0}, "int8": {4: 4, 8: 4}, "fp16": {4: 0, 8: 0}}
# The activation precisions each target offers; the first is its default.
TARGET_ACTIVATIONS = {"cpu": ("fp32", "int8"), "cuda": ("fp16",)}


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


def read_source(source: Path, progress: Progress = Progress()) -> SourceModel:
    if not source.exists():
        raise ConversionError(f"{source} does not exist")
    if source.is_dir():
        return read_huggingface(source, progress)
    with source.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ConversionError(f"{source} is neither a GGUF file (wrong magic bytes) nor a checkpoint folder")
    return read_gguf(source, progress)


@dataclass(frozen=True)
class ConversionOptions:
    """Everything besides the source that changes what a conversion writes."""

    quant: str = "keep"  # QUANT_MODES
    # ACCURACY_LEVELS: how quantized matmuls treat activations; None: the device's default
    activations: str | None = None
    block_size: int = 32  # for the onnxruntime.quantization algorithms
    # int4: "q4_1" (the converter's own blocks of 32 with float minimums; lossless on Q4_0/Q4_1
    # sources) or one of onnxruntime.quantization's INT4_ALGORITHMS. None: q4_1 for the native
    # backend, rtn for optimum (which only has ORT's).
    algorithm: str | None = None
    backend: str = "native"  # BACKENDS
    device: str = "cpu"  # TARGETS: the graph is built for this device (converter.targets)

    @property
    def activation_precision(self) -> str:
        return self.activations or TARGET_ACTIVATIONS.get(self.device, ("fp32",))[0]

    @property
    def int4_algorithm(self) -> str:
        return self.algorithm or ("rtn" if self.backend == "optimum" else OWN_INT4)

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise ConversionError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.device not in TARGETS:
            raise ConversionError(f"device {self.device!r} is not one of {', '.join(TARGETS)}")
        if self.activation_precision not in TARGET_ACTIVATIONS[self.device]:
            offered = ", ".join(TARGET_ACTIVATIONS[self.device])
            raise ConversionError(f"activation precision {self.activation_precision!r} is not one the {self.device} target offers ({offered})")
        if self.device != "cpu" and self.backend != "native":
            raise ConversionError(f"--device {self.device} builds the native graph; --backend {self.backend} graphs are for the cpu target")
        if self.quant not in QUANT_MODES:
            raise ConversionError(f"--quant {self.quant!r} is not one of {', '.join(QUANT_MODES)}")
        if self.block_size not in BLOCK_SIZES:
            raise ConversionError(f"block size {self.block_size} is not one of {', '.join(map(str, BLOCK_SIZES))}")
        choices = INT4_ALGORITHMS if self.backend == "optimum" else (OWN_INT4, *INT4_ALGORITHMS)
        if self.int4_algorithm not in choices:
            raise ConversionError(f"algorithm {self.int4_algorithm!r} is not one of {', '.join(choices)} for this backend")
        if self.int4_algorithm == OWN_INT4 and self.block_size != 32:
            raise ConversionError("the q4_1 algorithm uses blocks of 32; pick rtn, k_quant or hqq for other block sizes")

    def label(self) -> str:
        """A short name for cache folders: only the options that matter for this mode."""
        parts = [self.quant, self.activation_precision]
        if self.quant == "int4":
            parts += [f"b{self.block_size}", self.int4_algorithm]
        if self.backend != "native":
            parts.append(self.backend)
        if self.device != "cpu":
            parts.append(self.device)
        return "-".join(parts)


@dataclass
class BuiltGraph:
    """A graph and what the manifest says about it, whichever backend made it."""

    model: onnx.ModelProto
    interface: str
    quantization: dict
    architecture: str
    context_length: int
    config: dict
    target: dict


def convert(
    source: Path,
    out: Path,
    options: ConversionOptions = ConversionOptions(),
    force: bool = False,
    progress: Progress = Progress(),
    model_id: str | None = None,
    source_hashes: tuple[str, dict[str, str]] | None = None,
) -> Path:
    """Writes the model folder for `source` at `out` and returns it.

    `source_hashes` is `source_digest(source)` when the caller already computed it.

    The folder is built beside `out` and renamed into place at the end, so a failure or an
    interruption never leaves a half-written model where the service would load it.
    """
    options.check()
    if out.exists() and any(out.iterdir()) and not force:
        raise ConversionError(f"{out} already exists and is not empty (pass --force to replace it)")
    if source_hashes is None and source.exists():
        progress.stage(f"hashing {source}")
        source_hashes = source_digest(source)
    digest, file_hashes = source_hashes or ("", {})
    if options.backend == "optimum":
        texts, built = _build_with_optimum(source, options, progress)
        name = source.name
        source_format = "huggingface"
    else:
        progress.stage("reading weights")
        model = read_source(source, progress)
        built = _build_native(model, options, progress)
        texts = model
        name = model.name
        source_format = model.source_format

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)
    try:
        progress.stage("writing the model folder")
        _save_graph(built.model, staging)
        (staging / "tokenizer.json").write_text(texts.tokenizer_json, encoding="utf-8")
        if texts.chat_template:
            (staging / "chat_template.jinja").write_text(texts.chat_template, encoding="utf-8")
        _write_json(staging / "generation.json", texts.generation.to_json())
        manifest = {
            "format": MANIFEST_FORMAT,
            "model_id": model_id or name,
            "converter_version": CONVERTER_VERSION,
            "source": {"format": source_format, "sha256": digest, "files": file_hashes},
            "graph": built.interface,
            "architecture": built.architecture,
            "context_length": built.context_length,
            "config": built.config,
            "target": built.target,
            "quantization": built.quantization,
            "files": {
                path.name: {"bytes": path.stat().st_size, "sha256": sha256_of(path)} for path in sorted(staging.iterdir())
            },
        }
        _write_json(staging / "manifest.json", manifest)
        _replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress.stage(f"done: {out}")
    return out


def _build_native(model: SourceModel, options: ConversionOptions, progress: Progress) -> BuiltGraph:
    onnx_int4 = options.quant == "int4" and options.int4_algorithm != OWN_INT4
    weights = apply_quantization(model.weights, options.quant, onnx_int4)
    if options.activation_precision == "fp32":
        weights = split_8bit_weights(weights)
    target = TARGETS[options.device]
    progress.stage(f"building the {model.config.architecture} graph ({model.config.num_hidden_layers} layers, {target.compute_name} for {target.device})")
    accuracy = ACCURACY_LEVELS[options.activation_precision]
    graph = build_decoder(model.config, weights, accuracy, progress, target)
    table = quantization_table(weights, fold=accuracy[4] == INT8_ACTIVATIONS)
    if onnx_int4:
        algorithm = options.int4_algorithm
        progress.stage(f"quantizing the layers to int4 ({algorithm}, blocks of {options.block_size})")
        graph = quantize_matmuls(graph, _layer_matmuls(graph), 4, options.block_size, algorithm, accuracy[4])
        stored = f"int4 blocks of {options.block_size} ({algorithm}, onnxruntime.quantization)"
        table.update({name: {**table[name], "stored": stored} for name in layer_matrix_names(weights)})
    return BuiltGraph(
        model=graph,
        interface=NATIVE_INTERFACE,
        quantization={"mode": options.quant, "activation_precision": options.activation_precision, "tensors": table},
        architecture=model.config.architecture,
        context_length=model.config.max_position_embeddings,
        config=model.config.to_json(),
        target=target_description(target),
    )


def target_description(target) -> dict:
    """What the manifest says about the target: the service reads the device and the types it binds."""
    return {"device": target.device, "compute": target.compute_name, "sampling_candidates": target.sampling_candidates}


def _layer_matmuls(graph: onnx.ModelProto) -> list[str]:
    """The layers' float matmul nodes (stacked qkv and gate/up included), not the head's."""
    constants = {initializer.name for initializer in graph.graph.initializer}
    return [
        node.name
        for node in graph.graph.node
        if node.op_type == "MatMul" and node.name.startswith("model.layers.") and node.input[1] in constants
        and not node.name.endswith("/minimums")
    ]


def _build_with_optimum(source: Path, options: ConversionOptions, progress: Progress):
    if not source.is_dir():
        raise ConversionError(f"--backend optimum converts Hugging Face checkpoint folders; {source} is not a folder")
    texts = read_checkpoint_texts(source)
    exported = optimum_backend.export(source, progress)
    progress.stage(f"quantizing ({options.quant})")
    graph, quantization = optimum_backend.quantize(
        exported, options.quant, options.block_size, options.int4_algorithm, ACCURACY_LEVELS[options.activation_precision][4]
    )
    config = texts.config
    context = config.get("max_position_embeddings") or config.get("n_positions") or config.get("max_sequence_length") or 2048
    built = BuiltGraph(
        model=graph,
        interface=optimum_backend.GRAPH_INTERFACE,
        quantization={**quantization, "activation_precision": options.activation_precision},
        architecture=config.get("model_type", "unknown"),
        context_length=int(context),
        config=config,
        target=target_description(TARGETS["cpu"]),
    )
    return texts, built


def _save_graph(graph: onnx.ModelProto, folder: Path) -> None:
    onnx.save_model(
        graph,
        folder / "model.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=_SIDE_FILE_THRESHOLD,
    )
    # onnx creates the side file private (0600); it gets the graph file's mode, so a folder
    # converted by one user can be served by another as before.
    side_file = folder / "model.onnx.data"
    if side_file.exists():  # absent when no constant reaches the threshold
        side_file.chmod((folder / "model.onnx").stat().st_mode & 0o777)


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
