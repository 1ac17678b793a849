"""llama.cpp single-stream speed via llama-cpp-python; runs in .cache/bench/llama-venv, prints one JSON line.

    llama-venv/bin/python bench/peer_llama_cpp.py --model MODEL.gguf --text FILLER

Measured like bench/engine_speed.py: greedy, a fixed number of new tokens (Llama.generate never
stops at end-of-sequence by itself), prompts cut from the same repeated text to the same token
counts, several runs, peak RSS of this process. The KV cache is reset before every run, so no run
reuses another's prompt. Flash attention is on, as llama-server's default `auto` chooses on CPU.
"""

from __future__ import annotations

import time

import llama_cpp
import numpy as np
from peer_report import measure_prompts, peer_arguments, print_result, read_agreement_task, top1_agreement


def measure(llm: llama_cpp.Llama, prompt: list[int], new_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token, decode tokens per second after it, tokens generated)."""
    llm.reset()
    started = time.perf_counter()
    first = None
    count = 0
    for _ in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        count += 1
        if first is None:
            first = time.perf_counter()
        if count == new_tokens:
            break
    finished = time.perf_counter()
    return first - started, (count - 1) / (finished - first), count


def main() -> None:
    arguments = peer_arguments(__doc__.split("\n")[0])

    started = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=arguments.model,
        n_ctx=2048,
        n_batch=1024,
        n_threads=arguments.threads,
        n_threads_batch=arguments.threads,
        flash_attn=True,
        verbose=False,
    )
    load_seconds = time.perf_counter() - started
    agreement = None
    if (task := read_agreement_task(arguments.agreement)) is not None:
        ids, reference = task
        scorer = llama_cpp.Llama(model_path=arguments.model, n_ctx=2048, n_batch=1024, n_threads=arguments.threads,
                                 flash_attn=True, logits_all=True, verbose=False)
        scorer.eval(ids)
        agreement = top1_agreement(np.asarray(scorer.scores[: len(ids) - 1]).argmax(-1).tolist(), reference)
        del scorer

    def prompt_of(tokens: int) -> list[int]:
        text = (arguments.text * (tokens // 10 + 1)).encode()
        return llm.tokenize(text, add_bos=False, special=False)[:tokens]

    measure(llm, prompt_of(32), 8)  # warm-up
    prompts = measure_prompts(
        lambda prompt, new_tokens: measure(llm, prompt, new_tokens),
        prompt_of,
        arguments.prompt_tokens,
        arguments.new_tokens,
        arguments.repeats,
    )
    print_result("llama.cpp", llama_cpp.__version__, arguments.threads, load_seconds, prompts, top1_agreement=agreement)


if __name__ == "__main__":
    main()
