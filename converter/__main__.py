"""python -m converter SRC --out DIR: a GGUF file or HF folder becomes an ONNX Runtime model folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from converter import CONVERTER_VERSION
from converter.convert import BACKENDS, TARGET_ACTIVATIONS, ConversionOptions, convert
from converter.errors import ConversionError
from converter.progress import ConsoleProgress
from converter.onnx_quantization import BLOCK_SIZES, INT4_ALGORITHMS
from converter.quantization import OWN_INT4, QUANT_MODES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m converter",
        description="Convert a GGUF file or a Hugging Face checkpoint folder into a model folder "
        "(model.onnx with a KV cache, tokenizer.json, chat template, generation settings, manifest).",
    )
    parser.add_argument("source", type=Path, help="a .gguf file, or a folder with config.json, safetensors and tokenizer.json")
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    parser.add_argument(
        "--quant",
        choices=QUANT_MODES,
        default="keep",
        help="weight storage: keep = GGUF blocks re-packed without loss (floats stay float32); fp32; "
        "fp16 = float16 matrices (half of fp32 on disk, computed in float32); int8 = 8-bit blocks of 32; "
        "int4 = 4-bit layer matrices (see --algorithm) with 8-bit embeddings and head (default: keep)",
    )
    parser.add_argument(
        "--device",
        choices=tuple(TARGET_ACTIVATIONS),
        default="cpu",
        help="the device the graph is built for: cpu (float32) or cuda (float16 matmuls, attention and "
        "KV cache, float32 residual stream and logits, sampling candidates from the graph; also runs on "
        "the CPU provider, slowly) (default: cpu)",
    )
    parser.add_argument(
        "--activations",
        choices=tuple(dict.fromkeys(precision for choices in TARGET_ACTIVATIONS.values() for precision in choices)),
        default=None,
        help="how quantized matmuls treat activations: fp32 (exact) or int8 blocks (faster, with a "
        "small accuracy loss) on cpu; fp16 on cuda (default: fp32 on cpu, fp16 on cuda)",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        choices=BLOCK_SIZES,
        default=32,
        help="block size for the rtn, k_quant and hqq algorithms and optimum's int8 (default: 32)",
    )
    parser.add_argument(
        "--algorithm",
        choices=(OWN_INT4, *INT4_ALGORITHMS),
        default=None,
        help="int4 algorithm: q4_1 = the converter's own blocks of 32 with float minimums, lossless on "
        "Q4_0/Q4_1 sources (native default); rtn = onnxruntime.quantization's round to nearest per block "
        "(optimum default); k_quant = its scale search; hqq = half-quadratic optimization (needs torch)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="native",
        help="native = this converter's graph (llama, qwen2, qwen3, gemma3; GGUF or HF); optimum = optimum's "
        "ONNX exporter for other Hugging Face architectures (needs the optimum extra) (default: native)",
    )
    parser.add_argument("--model-id", help="the id the service lists the model under (default: the source's name)")
    parser.add_argument("--force", action="store_true", help="replace DIR if it already exists")
    parser.add_argument("--version", action="version", version=f"converter {CONVERTER_VERSION}")
    return parser


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        options = ConversionOptions(
            quant=arguments.quant,
            activations=arguments.activations,
            block_size=arguments.block_size,
            algorithm=arguments.algorithm,
            backend=arguments.backend,
            device=arguments.device,
        )
        convert(arguments.source, arguments.out, options, arguments.force, ConsoleProgress(), arguments.model_id)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
