"""What every single-stream measuring script shares: best-of-N per prompt length, one JSON line.

Standard library only: it also runs inside the peers' own virtualenvs, imported from beside the
script that measures (bench/ is that script's first import path).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def peer_arguments(description: str) -> argparse.Namespace:
    """The flags every peer script takes: its model, the filler text and the measurement's shape."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True)
    parser.add_argument("--text", required=True, help="filler text, repeated and cut to each prompt length")
    parser.add_argument("--prompt-tokens", default="32,640")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--agreement", help="a JSON file {ids, reference_top1}: report how often this engine's most likely next "
        "token equals the reference's at each position (teacher forcing)",
    )
    return parser.parse_args()


def read_agreement_task(path: str | None) -> tuple[list[int], list[int]] | None:
    """(token ids, the reference's most likely next token after each), or None when not asked."""
    if path is None:
        return None
    task = json.loads(Path(path).read_text())
    return task["ids"], task["reference_top1"]


def top1_agreement(predicted: list[int], reference: list[int]) -> float:
    return sum(ours == theirs for ours, theirs in zip(predicted, reference, strict=True)) / len(reference)


def measure_prompts(
    measure: Callable[[list[int], int], tuple],
    prompt_of: Callable[[int], list[int]],
    prompt_tokens: str,
    new_tokens: int,
    repeats: int,
) -> list[dict]:
    """For each prompt length ("32,640"): every run's first token and decode rate (the report takes
    medians and ranges over all runs of all rounds), and the fastest of them.
    `measure(prompt, new_tokens)` returns (first token seconds, decode tok/s[, tokens generated])."""
    prompts = []
    for tokens in (int(count) for count in prompt_tokens.split(",")):
        prompt = prompt_of(tokens)
        runs = [measure(prompt, new_tokens) for _ in range(repeats)]
        prompts.append({
            "prompt_tokens": len(prompt),
            "first_token_s": min(run[0] for run in runs),
            "decode_tok_s": max(run[1] for run in runs),
            "first_token_runs": [run[0] for run in runs],
            "decode_runs": [run[1] for run in runs],
            "generated_tokens": min(run[2] if len(run) > 2 else new_tokens for run in runs),
        })
    return prompts


def peak_rss_mib() -> float:
    """This process's resident high-water mark (VmHWM). Not ru_maxrss: Linux carries that across
    exec, so a child forked from a big parent (the benchmark, after converting a model) reports
    the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def print_result(engine: str, version: str, threads: int, load_seconds: float, prompts: list[dict], **extra) -> None:
    print(json.dumps({
        "engine": engine,
        "version": version,
        **extra,
        "threads": threads,
        "load_s": load_seconds,
        "peak_rss_mib": peak_rss_mib(),
        "prompts": prompts,
    }))
