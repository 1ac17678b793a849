"""The GPU check: is the CUDA path correct, and how fast is it? Prints one JSON document.

    python -m bench.cuda_check [--model FILE.gguf] [--out FILE.json] [--models-dir DIR]

For a machine with a CUDA GPU and no network (only the installed dependencies). It converts the
source twice, for the CPU in float32 (the reference) and for CUDA (`--device cuda`), then reports:
where ORT places the CUDA graph's nodes; parity with the reference (max logit difference after a
640-token prefill, top-1 agreement and perplexity under teacher forcing over 512 tokens, greedy
answers to 8 prompts); time to first token at 32 and 640 prompt tokens; single-stream decode
through the engine; aggregate tokens per second through HTTP at 1, 8, 32, 64 and 128 streams;
GPU memory. Each part records its error instead of stopping the run, and parts left when the time
budget (default 280 s) runs out are reported as skipped, so the document always comes out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.engine_speed import prompt_of
from bench.http_load import run_level
from converter.cache import cached_conversion
from converter.convert import ConversionOptions
from service.engine.decode_loop import Generator, ModelShape
from service.engine.engine import Engine, EngineLimits, GenerationRequest, TextDelta
from service.engine.model_folder import ModelFolder
from service.engine.runtime import choose_placement, create_session, node_placements
from service.engine.sampler import Sampler, SamplingParams
from service.settings import embedded_default_model

REPO = Path(__file__).resolve().parent.parent
PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "To make a cup of tea, first",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "import numpy as np\n\n# Multiply two matrices",
)
HTTP_LEVELS = (1, 8, 32, 64, 128)
GREEDY = SamplingParams(temperature=0)


class Check:
    """Runs the parts in order within a time budget; each part's result or error lands in `report`."""

    def __init__(self, budget_seconds: float) -> None:
        self.deadline = time.monotonic() + budget_seconds
        self.report: dict = {}

    def part(self, name: str, run: Callable[[], object]) -> None:
        if time.monotonic() > self.deadline:
            self.report[name] = {"skipped": "time budget spent"}
            return
        started = time.monotonic()
        try:
            self.report[name] = run()
        except Exception as error:  # a part that fails is reported; the others still run
            self.report[name] = {"error": f"{type(error).__name__}: {error}"}
        print(f"{name}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


def gpu_memory() -> dict | None:
    """Used and total MiB of the first GPU, from nvidia-smi when it is there."""
    if shutil.which("nvidia-smi") is None:
        return None
    line = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()[0]
    name, used, total = (part.strip() for part in line.split(","))
    return {"gpu": name, "used_mib": int(used), "total_mib": int(total)}


def prompt_logits(folder: ModelFolder, device: str, ids: list[int]) -> np.ndarray:
    session = create_session(folder.path / "model.onnx", choose_placement(device))
    return Generator(session, ModelShape.from_config(folder.config), capacity=len(ids) + 8, device=device).prompt_logits(ids)


def last_logits(folder: ModelFolder, device: str, ids: list[int]) -> np.ndarray:
    session = create_session(folder.path / "model.onnx", choose_placement(device))
    generator = Generator(session, ModelShape.from_config(folder.config), capacity=len(ids) + 8, device=device)
    return generator.prefill(ids).copy()


def parity(reference: ModelFolder, target: ModelFolder, device: str) -> dict:
    long_prompt = prompt_of(target, 640)
    ours, theirs = last_logits(target, device, long_prompt), last_logits(reference, "cpu", long_prompt)
    text = (REPO / "README.md").read_text(encoding="utf-8")
    ids = target.encode(text)[:513]
    ours_all, theirs_all = prompt_logits(target, device, ids), prompt_logits(reference, "cpu", ids)
    return {
        "max_logit_difference_after_640_tokens": float(np.abs(ours - theirs).max()),
        "teacher_forcing_tokens": len(ids) - 1,
        "top1_agreement": float((ours_all[:-1].argmax(-1) == theirs_all[:-1].argmax(-1)).mean()),
        "perplexity": {"cuda": _perplexity(ours_all, ids), "cpu_float32": _perplexity(theirs_all, ids)},
    }


def _perplexity(logits: np.ndarray, ids: list[int]) -> float:
    scores = logits[:-1].astype(np.float64)
    peak = scores.max(-1, keepdims=True)
    normalizer = np.log(np.exp(scores - peak).sum(-1)) + peak[:, 0]
    return float(np.exp(-(scores[np.arange(len(scores)), ids[1:]] - normalizer).mean()))


async def _answer(engine: Engine, request: GenerationRequest) -> tuple[list[int], float, float]:
    """Token ids, seconds to the first one, seconds in all."""
    started = time.perf_counter()
    tokens, first = [], None
    async for event in engine.submit(request).events():
        if isinstance(event, TextDelta):
            first = first or time.perf_counter() - started
            tokens.append(event.token.token_id)
    return tokens, first or 0.0, time.perf_counter() - started


def greedy_answers(reference: ModelFolder, target: ModelFolder, device: str, capacity: int) -> dict:
    """The 8 prompts answered greedily by the CUDA engine (all at once) and the CPU reference."""
    prompts = [target.encode(text) for text in PROMPTS]
    session = create_session(reference.path / "model.onnx", choose_placement("cpu"))
    generator = Generator(session, ModelShape.from_config(reference.config), capacity=capacity)
    expected = [list(generator.generate(prompt, 32, Sampler(GREEDY), set())) for prompt in prompts]
    engine = Engine(target, choose_placement(device), capacity, limits=EngineLimits(slots=8))
    try:
        requests = [GenerationRequest(prompt, 32, GREEDY, ignore_eos=True) for prompt in prompts]

        async def all_at_once():
            return await asyncio.gather(*(_answer(engine, request) for request in requests))

        answers = [tokens for tokens, _, _ in asyncio.run(all_at_once())]
    finally:
        engine.close()
    equal = [ours == theirs for ours, theirs in zip(answers, expected, strict=True)]
    first_difference = [
        next((index for index, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        for ours, theirs in zip(answers, expected, strict=True)
    ]
    return {"equal": sum(equal), "of": len(equal), "first_differing_token": first_difference}


def engine_speed(target: ModelFolder, device: str, capacity: int) -> dict:
    """Time to first token at 32 and 640 prompt tokens, and single-stream decode, through the engine."""
    engine = Engine(target, choose_placement(device), capacity, limits=EngineLimits(slots=8))
    try:
        result = {}
        for length in (32, 640):
            prompt = prompt_of(target, length)
            runs = [asyncio.run(_answer(engine, GenerationRequest(prompt, 2, GREEDY, ignore_eos=True)))[1] for _ in range(5)]
            result[f"first_token_ms_at_{length}"] = round(min(runs) * 1000, 2)
        prompt = prompt_of(target, 32)
        rates = []
        for _ in range(3):
            tokens, first, total = asyncio.run(_answer(engine, GenerationRequest(prompt, 256, GREEDY, ignore_eos=True)))
            rates.append((len(tokens) - 1) / (total - first))
        result["decode_tok_s_1_stream"] = round(max(rates), 1)
        result["cuda_graphs"] = getattr(engine.runner, "cuda_graphs", False)
        # 1: rows batch freely; 2: steps run at least two rows (a lone row is computed apart);
        # None: rows one at a time, which loses batching (see Engine._fewest_independent_rows).
        result["fewest_decode_rows"] = engine._fewest_rows
        return result
    finally:
        engine.close()


def http_levels(target: ModelFolder, device: str, deadline: float) -> dict:
    """Aggregate tokens per second through the service at each level (128 tokens a stream)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data_dir = tempfile.mkdtemp(prefix="cuda-check-")
    command = [
        sys.executable, "-m", "service", "--model", f"{target.model_id}={target.path}", "--device", device,
        "--max-batch", str(max(HTTP_LEVELS)), "--max-context", "1024", "--port", str(port), "--data-dir", data_dir,
    ]
    log = open(Path(data_dir) / "service.log", "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"the service exited: {(Path(data_dir) / 'service.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        levels = {}

        async def measure_levels():
            await run_level(base_url, "chat", target.model_id, 1, 8, 60)  # warm-up (captures graphs)
            for streams in HTTP_LEVELS:
                if time.monotonic() > deadline:
                    levels[str(streams)] = {"skipped": "time budget spent"}
                    continue
                result = await run_level(base_url, "chat", target.model_id, streams, 128, 60)
                levels[str(streams)] = {
                    "aggregate_tok_s": round(result.aggregate_tok_s, 1),
                    "mean_first_token_s": result.mean_first_token_s,
                    "errors": result.errors[:3],
                }

        asyncio.run(measure_levels())
        levels["gpu_memory_under_load"] = gpu_memory()
        return levels
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a GGUF file or checkpoint folder (default: the embedded SmolLM2)")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models", help="where conversions are cached")
    parser.add_argument("--out", type=Path, help="also write the JSON document here")
    parser.add_argument("--budget-seconds", type=float, default=280.0, help="parts left after this are skipped")
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda",
        help="where the CUDA-target graph runs: cuda, or cpu to try this script on a machine without a GPU",
    )
    arguments = parser.parse_args()
    check = Check(arguments.budget_seconds)
    source = arguments.model or embedded_default_model().source
    check.report["machine"] = {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "cpus": os.cpu_count(),
        "gpu_before_load": gpu_memory(),
        "source": str(source),
    }
    folders: dict[str, ModelFolder] = {}

    def convert_both() -> dict:
        started = time.monotonic()
        folders["reference"] = ModelFolder.load(cached_conversion(source, arguments.models_dir, ConversionOptions(activations="fp32")))
        folders["target"] = ModelFolder.load(cached_conversion(source, arguments.models_dir, ConversionOptions(device="cuda")))
        return {"seconds": round(time.monotonic() - started, 1), "target": folders["target"].manifest["target"]}

    check.part("conversion", convert_both)
    if "target" in folders:
        reference, target, device = folders["reference"], folders["target"], arguments.device
        check.part(
            "placement",
            lambda: {
                provider: {"nodes": group.count, "named": group.names[:20]}
                for provider, group in node_placements(target.path / "model.onnx", choose_placement(device)).items()
            },
        )
        check.part("parity", lambda: parity(reference, target, device))
        check.part("greedy_answers", lambda: greedy_answers(reference, target, device, 1024))
        check.part("engine", lambda: engine_speed(target, device, 1024))
        check.part("http", lambda: http_levels(target, device, check.deadline))
    document = json.dumps(check.report, indent=2)
    print(document)
    if arguments.out:
        arguments.out.write_text(document + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
