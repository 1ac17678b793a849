"""Weight-only quantization of float MatMuls inside a built graph, by onnxruntime.quantization.

GGUF blocks are re-packed without loss elsewhere (gguf_blocks.py); this module is for float
sources quantized to `--quant int4` or `int8`, where ORT's MatMulNBitsQuantizer offers block
sizes and algorithms: "rtn" (round to nearest per block, asymmetric), "k_quant" (ORT's search
for the best block scale) and "hqq" (half-quadratic optimization; needs torch, and writes float
zero points, which ORT's CPU kernels run more slowly).
"""

from __future__ import annotations

import logging

import onnx

from converter.errors import ConversionError

INT4_ALGORITHMS = ("rtn", "k_quant", "hqq")
BLOCK_SIZES = (16, 32, 64, 128, 256)


def quantize_matmuls(
    model: onnx.ModelProto,
    node_names: list[str],
    bits: int,
    block_size: int,
    algorithm: str,
    accuracy_level: int,
) -> onnx.ModelProto:
    """Replaces the named MatMul nodes (constant float weights) with MatMulNBits; returns the model."""
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    if algorithm not in INT4_ALGORITHMS:
        raise ConversionError(f"quantization algorithm {algorithm!r} is not one of {', '.join(INT4_ALGORITHMS)}")
    if block_size not in BLOCK_SIZES:
        raise ConversionError(f"block size {block_size} is not one of {', '.join(map(str, BLOCK_SIZES))}")
    if algorithm == "hqq":
        try:
            import torch  # noqa: F401
        except ImportError as error:
            raise ConversionError("the hqq algorithm needs torch installed") from error
        config = nbits.HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits)
    elif algorithm == "k_quant":
        config = nbits.KQuantWeightOnlyQuantConfig()
    else:
        config = nbits.DefaultWeightOnlyQuantConfig(
            block_size=block_size, is_symmetric=False, accuracy_level=accuracy_level, bits=bits
        )
    config.op_types_to_quantize = ()  # only the nodes named below
    chosen = set(node_names)
    others = [node.name for node in model.graph.node if node.op_type == "MatMul" and node.name not in chosen]
    quantizer = nbits.MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block_size,
        is_symmetric=False,
        accuracy_level=accuracy_level,
        nodes_to_include=node_names,
        nodes_to_exclude=others,  # the k_quant path reads only the exclusions
        algo_config=config,
    )
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    quantizer.process()
    quantized = quantizer.model if isinstance(quantizer.model, onnx.ModelProto) else quantizer.model.model
    _set_accuracy_level(quantized, accuracy_level)
    return quantized


def _set_accuracy_level(model: onnx.ModelProto, level: int) -> None:
    """Every algorithm's MatMulNBits gets the accuracy level the conversion asked for."""
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            for attribute in node.attribute:
                if attribute.name == "accuracy_level":
                    attribute.i = level
                    break
            else:
                node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))
