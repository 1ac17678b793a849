"""Our engine's single-stream speed, printed as one JSON line in the same shape as the peers' scripts.

    .venv/bin/python -m bench.peer_engine [--model FOLDER_OR_GGUF]

The measurement itself is bench/engine_speed.py's (`measure`, `prompt_of`); this wrapper runs it in
a process of its own so that peak RSS is the engine's alone, as it is for each peer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnxruntime as ort

from bench.engine_speed import load_warm_generator, measure, prompt_of
from bench.peer_report import measure_prompts, print_result, read_agreement_task, top1_agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="converted folder or GGUF (default: embedded SmolLM2)")
    parser.add_argument("--activations", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--prompt-tokens", default="32,640")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--agreement", help="see bench/peer_report.py: top-1 agreement with a reference")
    arguments = parser.parse_args()

    path, folder, generator, load_seconds = load_warm_generator(arguments.model, arguments.activations, "cpu", arguments.threads)

    prompts = measure_prompts(
        lambda prompt, new_tokens: measure(generator, prompt, new_tokens),
        lambda tokens: prompt_of(folder, tokens),
        arguments.prompt_tokens,
        arguments.new_tokens,
        arguments.repeats,
    )
    agreement = None
    if (task := read_agreement_task(arguments.agreement)) is not None:
        ids, reference = task
        agreement = top1_agreement(generator.prompt_logits(ids)[:-1].argmax(-1).tolist(), reference)
    print_result(
        "this engine",
        ort.__version__,
        arguments.threads,
        load_seconds,
        prompts,
        model_folder=str(path),
        model_folder_mib=sum(file.stat().st_size for file in path.iterdir() if file.is_file()) / 2**20,
        top1_agreement=agreement,
    )


if __name__ == "__main__":
    main()
