"""The whole benchmark in one go: this engine against llama.cpp and onnxruntime-genai, then docs/benchmarks.md.

    .venv/bin/python -m bench.run_all [--levels 1,4,8,16] [--repeats 3] [--output docs/benchmarks.md]

Single stream: this engine, llama.cpp (llama-cpp-python) and onnxruntime-genai, each in its own
process. HTTP: concurrent streams against llama-server and against this service. The peers are
installed and built on first use under .cache/bench/ (about half an hour on 2 cores), then cached.
A part that fails is marked as failed in the report; the rest still runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from bench import peers
from bench.engine_speed import FILLER
from bench.http_load import run_levels
from bench.report import GENAI, LLAMA_CPP, LLAMA_SERVER, OUR_SERVICE, OURS, OURS_EXACT, render
from converter.cache import cached_conversion
from converter.convert import ConversionOptions
from service.settings import embedded_default_model

REPO = peers.REPO


def load_average() -> str:
    return " ".join(f"{load:.1f}" for load in os.getloadavg())


def machine_facts() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_kib / 2**20,
        "os": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "load_start": load_average(),
    }


def best_of(runs: list[dict]) -> dict:
    """Several rounds of one engine merged as each round merges its repeats: fastest rates, highest RSS."""
    merged = dict(runs[0])
    merged["peak_rss_mib"] = max(run["peak_rss_mib"] for run in runs)
    merged["prompts"] = [
        dict(prompts[0],
             first_token_s=min(prompt["first_token_s"] for prompt in prompts),
             decode_tok_s=max(prompt["decode_tok_s"] for prompt in prompts))
        for prompts in zip(*(run["prompts"] for run in runs))
    ]
    merged["rounds"] = len(runs)
    return merged


def measure_single(
    gguf: Path, folders: dict[str, Path], prompt_tokens: tuple[int, ...], new_tokens: int, repeats: int, rounds: int
) -> dict:
    """Every engine once per round, in turn, so a burst of other work on the machine hits one round
    of an engine rather than all of its runs. `folders`: our converted folder per row name."""

    def engine_command(folder: Path) -> list[str]:
        return [
            str(REPO / ".venv" / "bin" / "python"), "-m", "bench.peer_engine",
            "--model", str(folder), "--prompt-tokens", ",".join(str(count) for count in prompt_tokens),
            "--new-tokens", str(new_tokens), "--repeats", str(repeats), "--threads", str(peers.THREADS),
        ]

    runs: dict[str, list[dict]] = {**{name: [] for name in folders}, LLAMA_CPP: [], GENAI: []}
    errors: dict[str, str] = {}
    for _ in range(rounds):
        for measurement in (
            *(peers.measure_script(name, engine_command(folder), 900) for name, folder in folders.items()),
            peers.measure_llama_cpp(gguf, FILLER, prompt_tokens, new_tokens, repeats),
            peers.measure_genai(gguf, FILLER, prompt_tokens, new_tokens, repeats),
        ):
            print(f"{measurement.name}: {measurement.error or json.dumps(measurement.values)}", flush=True)
            if measurement.error:
                errors[measurement.name] = measurement.error
            else:
                runs[measurement.name].append(measurement.values)
    return {
        name: {"values": best_of(found), "error": None} if found else {"values": {}, "error": errors.get(name)}
        for name, found in runs.items()
    }


def measure_http(server: peers.LoopbackServer, levels: tuple[int, ...], new_tokens: int, attempts: int) -> dict:
    """Load one server at each level; a server that will not start is a result, not a crash."""
    load_before = load_average()
    try:
        with server:
            results = asyncio.run(run_levels(server.base_url, levels, "chat", new_tokens, 300, attempts))
            peak = server.peak_rss_mib()
    except (peers.PeerError, OSError) as error:
        print(f"{server.name}: {error}", flush=True)
        return {"levels": [], "error": str(error), "load_before": load_before}
    for result in results:
        print(f"{server.name}: {json.dumps(asdict(result))}", flush=True)
    return {"levels": [asdict(result) for result in results], "error": None, "peak_rss_mib": peak, "load_before": load_before}


def versions(single: dict) -> dict:
    found = {
        "onnxruntime": (single[OURS]["values"] or {}).get("version"),
        "llama-cpp-python": (single[LLAMA_CPP]["values"] or {}).get("version") or peers.LLAMA_CPP_PYTHON_VERSION,
        "onnxruntime-genai": (single[GENAI]["values"] or {}).get("version") or peers.GENAI_VERSION,
    }
    try:
        found["llama.cpp commit"] = peers.llama_cpp_commit()
        found["llama-server"] = peers.llama_server_version()
    except (peers.PeerError, OSError) as error:
        found.setdefault("llama-server", f"unavailable ({error})")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="1,4,8,16", help="concurrent HTTP streams, comma-separated")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="runs per prompt length inside each measuring process")
    parser.add_argument("--rounds", type=int, default=2, help="measuring processes per engine, taken in turn")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    arguments = parser.parse_args()
    levels = tuple(int(level) for level in arguments.levels.split(","))
    gguf = embedded_default_model().source
    # Converted here, before anything is measured, so no measured process pays for a conversion.
    folder = cached_conversion(gguf, REPO / "models", ConversionOptions(activations="int8"))  # the service's default
    exact_folder = cached_conversion(gguf, REPO / "models", ConversionOptions(activations="fp32"))

    started = time.monotonic()
    results: dict = {
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_facts(),
        "model": {"gguf": gguf.name, "size_mib": gguf.stat().st_size / 2**20},
        "levels": list(levels),
        "new_tokens": arguments.new_tokens,
        "repeats": arguments.repeats,
        "rounds": arguments.rounds,
        # As many runs per HTTP level as single-stream runs per engine, so the best of each compares.
        "http_attempts": arguments.repeats * arguments.rounds,
    }
    results["single"] = measure_single(
        gguf, {OURS: folder, OURS_EXACT: exact_folder}, (32, 640), arguments.new_tokens, arguments.repeats, arguments.rounds
    )
    try:
        server = peers.llama_server(gguf)
        results["http"] = {LLAMA_SERVER: measure_http(server, levels, arguments.new_tokens, results["http_attempts"])}
    except peers.PeerError as error:
        results["http"] = {LLAMA_SERVER: {"levels": [], "error": str(error)}}
    results["http"][OUR_SERVICE] = measure_http(peers.our_server(folder), levels, arguments.new_tokens, results["http_attempts"])
    results["versions"] = versions(results["single"])
    results["machine"]["load_end"] = load_average()
    results["duration_s"] = time.monotonic() - started

    saved = peers.CACHE / "last-run.json"
    saved.write_text(json.dumps(results, indent=2))
    arguments.output.write_text(render(results))
    print(f"wrote {arguments.output} (raw results in {saved})")


if __name__ == "__main__":
    main()
