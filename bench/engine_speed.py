"""Single-stream engine speed on this machine: load time, time to first token, decode tok/s, RSS.

    .venv/bin/python -m bench.engine_speed [--model FOLDER_OR_GGUF] [--activations fp32|int8]

Runs the engine directly (no HTTP), greedy, ignoring end-of-sequence so every run decodes the same
number of tokens. Comparisons with llama.cpp and HTTP concurrency belong to the full benchmark.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import onnxruntime as ort

from bench.peer_report import peak_rss_mib
from converter.cache import cached_conversion
from converter.convert import ConversionOptions
from service.engine.decode_loop import Generator, ModelShape
from service.engine.model_folder import ModelFolder
from service.engine.runtime import choose_placement, create_session
from service.engine.sampler import Sampler, SamplingParams
from service.settings import embedded_default_model

REPO = Path(__file__).resolve().parent.parent
FILLER = "The history of the city goes back many centuries, and its streets remember every one of them. "


def prompt_of(folder: ModelFolder, tokens: int) -> list[int]:
    ids = folder.encode(FILLER * (tokens // 10 + 1))
    return ids[:tokens]


def measure(generator: Generator, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, decode tokens per second after it)."""
    started = time.perf_counter()
    first = None
    count = 0
    for _ in generator.generate(prompt, new_tokens, Sampler(SamplingParams(temperature=0)), stop_ids=set()):
        count += 1
        if first is None:
            first = time.perf_counter()
    finished = time.perf_counter()
    return first - started, (count - 1) / (finished - first)


def load_warm_generator(
    model: Path | None, activations: str, device: str = "auto", threads: int | None = None
) -> tuple[Path, ModelFolder, Generator, float]:
    """(folder path, folder, generator, load seconds) for a converted folder or a source to convert
    (default: the embedded SmolLM2), warmed up with one short generation."""
    source = model or embedded_default_model().source
    path = source if (source / "manifest.json").is_file() else cached_conversion(
        source, REPO / "models", ConversionOptions(activations=activations)
    )
    folder = ModelFolder.load(path)
    started = time.perf_counter()
    session = create_session(path / "model.onnx", choose_placement(device), threads=threads)
    generator = Generator(session, ModelShape.from_config(folder.config), capacity=2048)
    load_seconds = time.perf_counter() - started
    measure(generator, prompt_of(folder, 32), 8)
    return path, folder, generator, load_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="converted folder or GGUF (default: embedded SmolLM2)")
    parser.add_argument("--activations", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--tokens", type=int, default=128, help="tokens decoded per run")
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()

    path, folder, generator, load_seconds = load_warm_generator(arguments.model, arguments.activations)
    session = generator.session

    rows = []
    for prompt_tokens in (32, 640):
        runs = [measure(generator, prompt_of(folder, prompt_tokens), arguments.tokens) for _ in range(arguments.repeats)]
        rows.append((prompt_tokens, min(run[0] for run in runs), max(run[1] for run in runs)))
    peak_megabytes = peak_rss_mib()
    folder_megabytes = sum(file.stat().st_size for file in path.iterdir()) / 1e6

    print(f"model {folder.model_id} ({path.name}), onnxruntime {ort.__version__}, {session.get_providers()[0]}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, threads: all cores")
    print(f"load {load_seconds:.2f} s, peak RSS {peak_megabytes:.0f} MB, folder {folder_megabytes:.0f} MB")
    print("| prompt tokens | time to first token (s) | decode tok/s |")
    print("| --- | --- | --- |")
    for prompt_tokens, first, rate in rows:
        print(f"| {prompt_tokens} | {first:.3f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
