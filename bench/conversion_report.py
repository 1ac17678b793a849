"""Per model and --quant mode: size on disk, conversion time, load time, perplexity and top-1
agreement against the float32 reference; writes docs/conversion.md.

    .venv/bin/python -m bench.conversion_report [--out docs/conversion.md]

The reference is transformers loading the same GGUF in float32 (gguf-py dequantizes it), on the
fixed text of tests/scoring.py. Conversions go to a scratch folder, never to the models/ cache.
Needs the dev extra and the Gemma 3 wheels that deploy/test-local.sh installs.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from converter import CONVERTER_VERSION
from converter.convert import ConversionOptions, convert
from service.engine.decode_loop import decode_loop_for
from service.engine.model_folder import ModelFolder
from service.engine.runtime import choose_placement, create_session
from service.settings import Settings, embedded_default_model
from tests.real_models import gemma3_gguf
from tests.scoring import PARITY_TEXT, perplexity

REPO = Path(__file__).resolve().parent.parent
MODES = {
    "--quant keep": ConversionOptions(),
    "--quant keep --activations int8": ConversionOptions(activations="int8"),
    "--quant int8": ConversionOptions(quant="int8"),
    "--quant int8 --activations int8": ConversionOptions(quant="int8", activations="int8"),
    "--quant int4 (q4_1)": ConversionOptions(quant="int4"),
    "--quant int4 --algorithm hqq": ConversionOptions(quant="int4", algorithm="hqq"),
    "--quant int4 --algorithm rtn": ConversionOptions(quant="int4", algorithm="rtn"),
    "--quant fp16": ConversionOptions(quant="fp16"),
    "--quant fp32": ConversionOptions(quant="fp32"),
}


def reference_logits(source: Path, ids: list[int]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        return model.eval()(torch.tensor([ids])).logits[0].numpy()


def measure(source: Path, options: ConversionOptions, scratch: Path, reference: np.ndarray, ids: list[int]) -> dict:
    started = time.perf_counter()
    out = convert(source, scratch / "model", options, force=True)
    converted = time.perf_counter() - started
    started = time.perf_counter()
    folder = ModelFolder.load(out)
    session = create_session(out / "model.onnx", choose_placement("cpu"))
    loop = decode_loop_for(folder, session, len(ids), "cpu")
    loaded = time.perf_counter() - started
    ours = loop.prompt_logits(ids)
    return {
        "megabytes": sum(path.stat().st_size for path in out.iterdir()) / 1e6,
        "convert_seconds": converted,
        "load_seconds": loaded,
        "perplexity": perplexity(ours, ids),
        "top1": float((ours.argmax(-1) == reference.argmax(-1)).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "conversion.md")
    arguments = parser.parse_args()
    sources = {
        "SmolLM2-135M-Instruct Q4_1": embedded_default_model().source,
        "Gemma 3 270M Q4_K_M": gemma3_gguf(REPO / "models" / "sources"),
    }
    lines = [
        "# Conversion quality and cost",
        "",
        "Written by `.venv/bin/python -m bench.conversion_report`; do not edit by hand.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; onnxruntime {ort.__version__} (CPU); "
        f"converter {CONVERTER_VERSION}. Perplexity is over the fixed text in `tests/scoring.py`; the reference "
        "is transformers reading the same GGUF in float32; top-1 is how often our most likely next token "
        "equals the reference's.",
        "",
        "| model | options | size (MB) | convert (s) | load (s) | perplexity | reference perplexity | top-1 agreement |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    service_default = ConversionOptions(activations=Settings().activations)
    for model_name, source in sources.items():
        with tempfile.TemporaryDirectory() as probe:  # the converted tokenizer gives the token ids
            ids = ModelFolder.load(convert(source, Path(probe) / "probe")).encode(PARITY_TEXT)
        reference = reference_logits(source, ids)
        reference_perplexity = perplexity(reference, ids)
        for mode, options in MODES.items():
            scratch = Path(tempfile.mkdtemp(prefix="conversion-report-"))
            try:
                row = measure(source, options, scratch, reference, ids)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            lines.append(
                f"| {model_name} | {mode}{' (the service default)' if replace(options, activations=options.activation_precision) == service_default else ''} | {row['megabytes']:.0f} | {row['convert_seconds']:.1f} | {row['load_seconds']:.2f} "
                f"| {row['perplexity']:.3f} | {reference_perplexity:.3f} | {row['top1'] * 100:.1f}% |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        f"{len(ids)} tokens of text for the last model; token counts differ by tokenizer. Timings depend on "
        "what else the machine runs; sizes, perplexities and agreement do not.",
        "",
    ]
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
