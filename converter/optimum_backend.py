"""`--backend optimum`: Hugging Face architectures without a native builder, through optimum's exporter.

optimum (an optional extra: `pip install -e .[optimum]`) traces the checkpoint with torch into a
decoder graph whose past keys and values grow each step; the service runs it with
DynamicCacheGenerator. Its matmuls can then be quantized by onnxruntime.quantization. The native
builder stays the better path where it exists: fused attention, a static in-place KV cache,
lossless GGUF blocks.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from converter import graph_interface as names
from converter.errors import ConversionError
from converter.onnx_quantization import quantize_matmuls
from converter.progress import Progress

GRAPH_INTERFACE = "optimum"


def export(source: Path, progress: Progress = Progress()) -> onnx.ModelProto:
    """The checkpoint as optimum's text-generation-with-past graph, loaded with its weights."""
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as error:
        raise ConversionError("--backend optimum needs the optimum extra: pip install -e '.[optimum]'") from error
    with tempfile.TemporaryDirectory(prefix="optimum-export-") as scratch:
        progress.stage("exporting with optimum (torch tracing)")
        try:
            main_export(
                model_name_or_path=str(source),
                output=scratch,
                task="text-generation-with-past",
                device="cpu",
                do_validation=False,
                local_files_only=True,
            )
        except (ValueError, KeyError, OSError, RuntimeError) as error:
            raise ConversionError(f"optimum could not export {source}: {error}") from error
        return onnx.load(str(Path(scratch) / "model.onnx"), load_external_data=True)


def head_node(model: onnx.ModelProto) -> str | None:
    """The MatMul that produces the logits: it gets 8-bit weights when the rest gets 4."""
    producers = {output: node for node in model.graph.node for output in node.output}
    pending = [names.LOGITS]
    while pending:
        node = producers.get(pending.pop())
        if node is None:
            continue
        if node.op_type == "MatMul":
            return node.name
        pending.extend(node.input)
    return None


def quantize(model: onnx.ModelProto, mode: str, block_size: int, algorithm: str, accuracy_level: int) -> tuple[onnx.ModelProto, dict]:
    """Applies `--quant` to an exported graph; returns it and the manifest's description."""
    if mode in ("keep", "fp32"):
        return model, {"mode": mode, "stored": "float32 as exported"}
    model = as_plain_matmuls(model)
    matmuls = [node.name for node in model.graph.node if node.op_type == "MatMul" and _has_constant_weight(model, node)]
    head = head_node(model)
    if mode == "int8":
        model = quantize_matmuls(model, matmuls, 8, block_size, "rtn", accuracy_level)
        return model, {"mode": mode, "stored": f"int8 blocks of {block_size} (rtn) for every matmul"}
    if mode == "int4":
        body = [name for name in matmuls if name != head]
        model = quantize_matmuls(model, body, 4, block_size, algorithm, accuracy_level)
        if head is not None:
            model = quantize_matmuls(model, [head], 8, block_size, "rtn", accuracy_level)
        return model, {
            "mode": mode,
            "stored": f"int4 blocks of {block_size} ({algorithm}) for the layers; the head as int8 blocks",
        }
    raise ConversionError(f"--quant {mode} is not available with --backend optimum (use keep, fp32, int8 or int4)")


def _has_constant_weight(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    initializers = {initializer.name for initializer in model.graph.initializer}
    return len(node.input) > 1 and node.input[1] in initializers


def as_plain_matmuls(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrites what ORT's quantizer cannot see into MatMuls on initializers: Gemm with a constant
    weight (GPT-2's Conv1D) becomes MatMul + Add, and a MatMul reading Transpose(initializer) (a
    head tied to the embedding) reads a transposed copy. Exact: only the layout changes."""
    initializers = {initializer.name: initializer for initializer in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    nodes = []
    for node in model.graph.node:
        attributes = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
        if (
            node.op_type == "Gemm"
            and node.input[1] in initializers
            and attributes.get("alpha", 1.0) == 1.0
            and attributes.get("beta", 1.0) == 1.0
            and not attributes.get("transA", 0)
        ):
            weight = numpy_helper.to_array(initializers[node.input[1]])
            if attributes.get("transB", 0):
                weight = weight.T
            weight_name = f"{node.input[1]}.matmul"
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), weight_name))
            product = f"{node.output[0]}/matmul"
            nodes.append(onnx.helper.make_node("MatMul", [node.input[0], weight_name], [product if len(node.input) > 2 else node.output[0]], name=f"{node.name}/MatMul"))
            if len(node.input) > 2 and node.input[2]:
                nodes.append(onnx.helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}/Add"))
            continue
        source = producers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if source is not None and source.op_type == "Transpose" and source.input[0] in initializers:
            permutation = next((list(attribute.ints) for attribute in source.attribute if attribute.name == "perm"), None)
            weight = numpy_helper.to_array(initializers[source.input[0]])
            transposed_name = f"{source.input[0]}.transposed_for_{node.name.strip('/').replace('/', '_')}"
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(np.transpose(weight, permutation)), transposed_name))
            node.input[1] = transposed_name
        nodes.append(node)
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    return model

