"""What a grammar costs while decoding: the engine's decode rate with and without one, at 1 and 8
streams, on the service's default conversion. Prints one JSON line.

    .venv/bin/python -m bench.constraint_speed [--model FOLDER_OR_GGUF] [--tokens 96]

The grammar allows any text of letters, digits, spaces, commas and full stops (a JSON schema's
mask is computed the same way, per token).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import time
from pathlib import Path

from bench.engine_speed import REPO, prompt_of
from converter.cache import cached_conversion
from converter.convert import ConversionOptions
from service.engine.constraints import Grammar, compile_grammar
from service.engine.engine import Engine, EngineLimits, Finished, GenerationRequest, TextDelta
from service.engine.model_folder import ModelFolder
from service.engine.runtime import choose_placement
from service.engine.sampler import SamplingParams
from service.settings import Settings, embedded_default_model

# Text, then a NUL character the model never writes: the grammar allows no end of sequence, so
# constrained and free answers run the same number of tokens and only the masks' cost differs.
FREE_TEXT = r"[a-zA-Z0-9 ,.]+\x00"


async def _rate(engine: Engine, requests: list[GenerationRequest]) -> float:
    """Generated tokens per second over all requests, from the first token to the last."""
    started = None

    async def one(request):
        nonlocal started
        count = 0
        async for event in engine.submit(request).events():
            if isinstance(event, TextDelta):
                started = started or time.perf_counter()
                count += 1
            elif isinstance(event, Finished):
                return count
        return count

    counts = await asyncio.gather(*(one(request) for request in requests))
    return sum(counts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a GGUF file or checkpoint folder (default: the embedded SmolLM2)")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    activations = next(field.default for field in dataclasses.fields(Settings) if field.name == "activations")
    source = arguments.model or embedded_default_model().source
    path = cached_conversion(source, REPO / "models", ConversionOptions(activations=activations))
    folder = ModelFolder.load(path)
    grammar = compile_grammar(Grammar("regex", FREE_TEXT), folder.grammar_tokenizer, folder.config["vocab_size"])
    engine = Engine(folder, choose_placement("cpu"), 1024, threads=2, limits=EngineLimits(slots=8))
    prompts = [prompt_of(folder, 32 + index) for index in range(8)]
    results = {}
    try:
        for streams in (1, 8):
            for constrained in (False, True):
                def requests():
                    return [
                        GenerationRequest(prompt, arguments.tokens, SamplingParams(temperature=0), ignore_eos=True,
                                          grammar=grammar if constrained else None)
                        for prompt in prompts[:streams]
                    ]
                rates = [asyncio.run(_rate(engine, requests())) for _ in range(arguments.repeats)]
                results[f"{streams}_{'grammar' if constrained else 'free'}"] = statistics.median(rates)
    finally:
        engine.close()
    results["cost_1_stream"] = 1 - results["1_grammar"] / results["1_free"]
    results["cost_8_streams"] = 1 - results["8_grammar"] / results["8_free"]
    print(json.dumps({"model": path.name, "activations": activations, **results}))


if __name__ == "__main__":
    main()
