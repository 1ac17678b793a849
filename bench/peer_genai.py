"""onnxruntime-genai single-stream speed; runs in .cache/bench/genai-venv and prints one JSON line.

    genai-venv/bin/python bench/peer_genai.py --model GENAI_FOLDER --text FILLER

Measured like bench/engine_speed.py: greedy, a fixed number of new tokens whatever the model
predicts (min_length holds end-of-sequence back), prompts cut from the same repeated text to the
same token counts, best of a few runs, peak RSS of this process.
"""

from __future__ import annotations

import json
import time

import numpy as np
import onnxruntime_genai as og
from peer_report import measure_prompts, peer_arguments, print_result, read_agreement_task, top1_agreement


def measure(model: og.Model, prompt: list[int], new_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token, decode tokens per second after it, tokens generated)."""
    params = og.GeneratorParams(model)
    length = len(prompt) + new_tokens
    params.set_search_options(do_sample=False, max_length=length, min_length=length)
    generator = og.Generator(model, params)
    started = time.perf_counter()
    generator.append_tokens(prompt)
    first = None
    count = 0
    while count < new_tokens and not generator.is_done():
        generator.generate_next_token()
        generator.get_next_tokens()
        count += 1
        if first is None:
            first = time.perf_counter()
    finished = time.perf_counter()
    return first - started, (count - 1) / (finished - first), count


def main() -> None:
    arguments = peer_arguments(__doc__.split("\n")[0])

    started = time.perf_counter()
    config = og.Config(arguments.model)
    threads = {"intra_op_num_threads": arguments.threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": threads}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    load_seconds = time.perf_counter() - started

    def prompt_of(tokens: int) -> list[int]:
        return [int(token) for token in tokenizer.encode(arguments.text * (tokens // 10 + 1))[:tokens]]

    measure(model, prompt_of(32), 8)  # warm-up
    prompts = measure_prompts(
        lambda prompt, new_tokens: measure(model, prompt, new_tokens),
        prompt_of,
        arguments.prompt_tokens,
        arguments.new_tokens,
        arguments.repeats,
    )
    agreement = None
    if (task := read_agreement_task(arguments.agreement)) is not None:
        agreement = top1_agreement(prompt_top1(model, task[0]), task[1])
    print_result("onnxruntime-genai", og.__version__, arguments.threads, load_seconds, prompts, top1_agreement=agreement)


def prompt_top1(model: og.Model, ids: list[int]) -> list[int]:
    """The most likely next token after each position but the last, from one prompt pass."""
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + 1)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    logits = np.asarray(generator.get_output("logits"))
    return logits.reshape(-1, logits.shape[-1])[-len(ids) :][:-1].argmax(-1).tolist()


if __name__ == "__main__":
    main()
