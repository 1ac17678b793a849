"""Our engine's single-stream speed, printed as one JSON line in the same shape as the peers' scripts.

    .venv/bin/python -m bench.peer_engine [--model FOLDER_OR_GGUF]

The measurement itself is bench/engine_speed.py's (`measure`, `prompt_of`); this wrapper runs it in
a process of its own so that peak RSS is the engine's alone, as it is for each peer.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import onnxruntime as ort

from bench.engine_speed import REPO, measure, prompt_of
from converter.cache import cached_conversion
from converter.convert import ConversionOptions
from service.generator import Generator, ModelShape
from service.model_folder import ModelFolder
from service.runtime import choose_placement, create_session
from service.settings import embedded_default_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="converted folder or GGUF (default: embedded SmolLM2)")
    parser.add_argument("--activations", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--prompt-tokens", default="32,640")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()

    source = arguments.model or embedded_default_model().source
    path = source if (source / "manifest.json").is_file() else cached_conversion(
        source, REPO / "models", ConversionOptions(activations=arguments.activations)
    )
    folder = ModelFolder.load(path)
    started = time.perf_counter()
    session = create_session(path / "model.onnx", choose_placement("cpu"), threads=arguments.threads)
    generator = Generator(session, ModelShape.from_config(folder.config), capacity=2048)
    load_seconds = time.perf_counter() - started
    measure(generator, prompt_of(folder, 32), 8)  # warm-up

    prompts = []
    for tokens in (int(count) for count in arguments.prompt_tokens.split(",")):
        prompt = prompt_of(folder, tokens)
        runs = [measure(generator, prompt, arguments.new_tokens) for _ in range(arguments.repeats)]
        prompts.append({
            "prompt_tokens": len(prompt),
            "first_token_s": min(run[0] for run in runs),
            "decode_tok_s": max(run[1] for run in runs),
            "generated_tokens": arguments.new_tokens,
        })
    print(json.dumps({
        "engine": "this engine",
        "version": ort.__version__,
        "model_folder": str(path),
        "model_folder_mib": sum(file.stat().st_size for file in path.iterdir() if file.is_file()) / 2**20,
        "threads": arguments.threads,
        "load_s": load_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "prompts": prompts,
    }))


if __name__ == "__main__":
    main()
