"""docs/benchmarks.md from one run's results: machine, versions, method, tables, targets with verdicts.

The results are plain dicts as bench/run_all.py collects them, so a report can be re-rendered from
a saved .cache/bench/last-run.json without measuring again:

    .venv/bin/python -m bench.report .cache/bench/last-run.json docs/benchmarks.md
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

OURS = "this engine (service default, int8 activations)"
OURS_EXACT = "this engine, --activations fp32 (exact)"
LLAMA_CPP = "llama.cpp"
GENAI = "onnxruntime-genai"
OUR_SERVICE = "this service"
LLAMA_SERVER = "llama-server"


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None  # the ratio as measured, None when an input is missing
    limit: float
    at_least: bool  # True: measured must be >= limit; False: <= limit
    inputs: str

    def verdict(self) -> str:
        if self.measured is None:
            return "not measured"
        passed = self.measured >= self.limit if self.at_least else self.measured <= self.limit
        return "pass" if passed else "FAIL"


def _prompt(single: dict, engine: str, index: int) -> dict | None:
    values = single.get(engine, {}).get("values") or {}
    prompts = values.get("prompts") or []
    return prompts[index] if len(prompts) > index else None


def _decode(single: dict, engine: str) -> float | None:
    prompt = _prompt(single, engine, 0)
    return prompt["decode_tok_s"] if prompt else None


def _first_token(single: dict, engine: str, index: int) -> float | None:
    prompt = _prompt(single, engine, index)
    return prompt["first_token_s"] if prompt else None


def _level(http: dict, server: str, streams: int) -> dict | None:
    for level in http.get(server, {}).get("levels") or []:
        if level["streams"] == streams and level["completed"] > 0:
            return level
    return None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def targets(results: dict) -> list[Target]:
    single, http = results["single"], results["http"]
    ours_decode, llama_decode = _decode(single, OURS), _decode(single, LLAMA_CPP)
    ours_long, llama_long = _first_token(single, OURS, 1), _first_token(single, LLAMA_CPP, 1)
    ours_1, ours_8 = _level(http, OUR_SERVICE, 1), _level(http, OUR_SERVICE, 8)
    server_8 = _level(http, LLAMA_SERVER, 8)
    aggregate_1 = ours_1["aggregate_tok_s"] if ours_1 else None
    aggregate_8 = ours_8["aggregate_tok_s"] if ours_8 else None
    stream_1 = ours_1["mean_stream_decode_tok_s"] if ours_1 else None
    engine = single.get(OURS, {}).get("values") or {}
    return [
        Target("single-stream decode vs llama.cpp", _ratio(ours_decode, llama_decode), 1.3, True,
               f"{_number(ours_decode)} / {_number(llama_decode)} tok/s"),
        Target("time to first token, long prompt, vs llama.cpp", _ratio(ours_long, llama_long), 0.6, False,
               f"{_number(ours_long, 3)} / {_number(llama_long, 3)} s"),
        Target("HTTP aggregate at 8 streams vs our 1 stream", _ratio(aggregate_8, aggregate_1), 4.0, True,
               f"{_number(aggregate_8)} / {_number(aggregate_1)} tok/s"),
        Target("HTTP aggregate at 8 streams vs llama-server at 8", _ratio(aggregate_8, server_8 and server_8["aggregate_tok_s"]),
               1.5, True, f"{_number(aggregate_8)} / {_number(server_8 and server_8['aggregate_tok_s'])} tok/s"),
        Target("one HTTP stream's decode rate vs the raw engine (cost ≤ 5%)", _ratio(stream_1, ours_decode), 0.95, True,
               f"{_number(stream_1)} / {_number(ours_decode)} tok/s"),
        Target("engine peak RSS vs converted model folder", _ratio(engine.get("peak_rss_mib"), engine.get("model_folder_mib")),
               1.5, False, f"{_number(engine.get('peak_rss_mib'), 0)} / {_number(engine.get('model_folder_mib'), 0)} MiB"),
    ]


def _single_table(results: dict) -> list[str]:
    single = results["single"]
    lines = [
        "| engine | decode tok/s | first token, short prompt (s) | first token, long prompt (s) | prompt tokens "
        "| decode tok/s after the long prompt | peak RSS (MiB) | load (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for engine, entry in single.items():
        values = entry.get("values") or {}
        if entry.get("error"):
            lines.append(f"| {engine} | failed: {entry['error']} | | | | | | |")
            continue
        prompts = values["prompts"]
        counts = " / ".join(str(prompt["prompt_tokens"]) for prompt in prompts)
        lines.append(
            f"| {engine} | {_number(prompts[0]['decode_tok_s'])} | {_number(prompts[0]['first_token_s'], 3)} | "
            f"{_number(prompts[-1]['first_token_s'], 3)} | {counts} | {_number(prompts[-1]['decode_tok_s'])} | "
            f"{_number(values['peak_rss_mib'], 0)} | "
            f"{_number(values['load_s'], 2)} |"
        )
    return lines


def _http_tables(results: dict) -> list[str]:
    http = results["http"]
    levels = results["levels"]
    header = "| server | " + " | ".join(f"{streams} stream{'s' if streams > 1 else ''}" for streams in levels) + " |"
    rule = "| --- | " + " | ".join("---:" for _ in levels) + " |"
    aggregate, detail = [header, rule], [header, rule]
    for server, entry in http.items():
        if entry.get("error"):
            aggregate.append(f"| {server} | failed: {entry['error']} |" + " |" * (len(levels) - 1))
            continue
        by_streams = {level["streams"]: level for level in entry["levels"]}
        cells, details = [], []
        for streams in levels:
            level = by_streams.get(streams)
            if level is None:
                cells.append("—")
                details.append("—")
                continue
            mark = "" if not level["errors"] else f" ({streams - level['completed']} failed)"
            cells.append(f"{level['aggregate_tok_s']:.1f}{mark}")
            details.append(
                f"{_number(level['mean_stream_decode_tok_s'])} tok/s, first {_number(level['mean_first_token_s'], 2)} s"
            )
        aggregate.append(f"| {server} | " + " | ".join(cells) + " |")
        detail.append(f"| {server} | " + " | ".join(details) + " |")
    return [
        "Aggregate generated tokens per second over all streams (wall time from the first request to the last "
        "token):",
        "",
        *aggregate,
        "",
        "Per stream: mean decode rate after the first token, and mean time to first token:",
        "",
        *detail,
    ]


def _errors(results: dict) -> list[str]:
    lines = [f"- {engine}: {entry['error']}" for engine, entry in results["single"].items() if entry.get("error")]
    for server, entry in results["http"].items():
        for level in entry.get("levels") or []:
            for error in sorted(set(level["errors"])):
                lines.append(f"- {server}, {level['streams']} streams: {error}")
        if entry.get("error"):
            lines.append(f"- {server}: {entry['error']}")
    return lines


def render(results: dict) -> str:
    machine, versions = results["machine"], results["versions"]
    single = results["single"]
    http_rss = ", ".join(
        f"{server} {_number(entry.get('peak_rss_mib'), 0)} MiB" for server, entry in results["http"].items()
        if entry.get("peak_rss_mib") is not None
    )
    loads = "; ".join(
        f"before {server}: {entry['load_before']}" for server, entry in results["http"].items() if entry.get("load_before")
    )
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `.venv/bin/python -m bench.run_all` on {results['started']} ({results['duration_s'] / 60:.0f} min); "
        "re-run it rather than editing this file.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores; memory {machine['memory_gib']:.0f} GiB; {machine['os']}",
        f"- Load average (1, 5, 15 min) at the start: {machine['load_start']}; {loads}; at the end: "
        f"{machine['load_end']}. The machine is shared with other work: a load well above 2 (the benchmark's own "
        "2 threads) means someone else's work competed for the 2 cores, and rates measured then are low "
        "(llama.cpp's spinning threads suffer most). Each engine runs alone, one after another, on the same 2 threads.",
        "",
        "## Versions",
        "",
        f"- This engine: onnxruntime {versions.get('onnxruntime', '?')} (CPU execution provider), model folder "
        f"`{Path(single.get(OURS, {}).get('values', {}).get('model_folder', '?')).name}`",
        f"- llama.cpp: llama-cpp-python {versions.get('llama-cpp-python', '?')}, vendored llama.cpp commit "
        f"{versions.get('llama.cpp commit', '?')}; llama-server {versions.get('llama-server', '?')}",
        f"- onnxruntime-genai {versions.get('onnxruntime-genai', '?')} (its own CPU onnxruntime)",
        f"- Model: `{results['model']['gguf']}` ({results['model']['size_mib']:.0f} MiB), the embedded SmolLM2-135M-Instruct",
        "",
        "## Method",
        "",
        "- Every engine runs in a process of its own, one after another, with 2 threads (all cores), greedy "
        f"decoding, and exactly {results['new_tokens']} new tokens whatever it predicts (end-of-sequence is "
        "ignored). Decode tok/s is the rate after the first token with the short prompt; time to first "
        "token covers prefill and the first sampled token. Each figure is the best of "
        f"{results['repeats']} runs after a warm-up, in each of {results.get('rounds', 1)} rounds (every engine "
        "once per round, in turn). Peak RSS is the process's high-water mark (VmHWM), the highest of the rounds.",
        "- Prompts: the same filler text as `bench/engine_speed.py`, repeated and cut to 32 and 640 tokens. All "
        "three tokenizers read the same GGUF vocabulary, so the prompts are the same token ids.",
        "- This engine: `bench/peer_engine.py`, which reuses `bench/engine_speed.py`'s measurement on the "
        "folder the service converts by default: the GGUF's own Q4_1 blocks re-packed without loss, with "
        "ONNX Runtime quantizing activations to int8 per block of 32, as llama.cpp quantizes them for its own "
        "dot products (perplexity within 0.2% of float32 activations' on SmolLM2, 0.5% above it on Gemma 3, docs/conversion.md). The targets use "
        "this row and this service as it runs by default. The `--activations fp32` row keeps activations in "
        "float32 and reproduces transformers' logits; ONNX Runtime has no fast batched kernel for it.",
        "- llama.cpp: llama-cpp-python built from its sdist as a CPU wheel with `-DGGML_NATIVE=ON` (tuned for this "
        "CPU, fine for a same-machine comparison), in `.cache/bench/llama-venv`; `bench/peer_llama_cpp.py` "
        "drives `Llama.generate` on the GGUF as is (Q4_1), n_ctx 2048, n_batch 1024.",
        "- onnxruntime-genai: in `.cache/bench/genai-venv` (never in `.venv`: it needs the CPU `onnxruntime`, which "
        "must not share an environment with `onnxruntime-gpu`). Its model builder reads only float GGUF and "
        "otherwise wants the hub, so `bench/genai_model.py` dequantizes the GGUF with transformers into a "
        "Hugging Face folder and runs `python -m onnxruntime_genai.models.builder -i HF_FOLDER -p int4 -e cpu` "
        "(int4 round-to-nearest, block 32, default accuracy level); `bench/peer_genai.py` measures it.",
        "- HTTP: `bench/http_load.py` starts N streaming chat completions at once (`max_tokens` "
        f"{results['new_tokens']}, `ignore_eos`, temperature 0) and counts tokens from the usage chunk; each "
        f"level runs {results.get('http_attempts', 2)} times after a warm-up request (as many runs as each single-stream "
        "figure is the best of) and the fastest complete attempt counts. The client is a bare "
        "HTTP/1.1 reader of chunked SSE lines, since it shares the 2 cores with the server it measures and httpx "
        "spent about 1 ms of CPU per streamed chunk there. "
        "llama-server is built with cmake from the same vendored llama.cpp (`-DGGML_NATIVE=ON`, static) and run "
        "with `-np 16 -c 16384 -t 2 -tb 2` (16 slots, continuous batching); this service runs as "
        "`python -m service --model CONVERTED_FOLDER --max-context 2048 --threads 2`. Both on 127.0.0.1.",
        "",
        "## Single stream",
        "",
        *_single_table(results),
        "",
        "## HTTP, concurrent streams",
        "",
        *_http_tables(results),
        "",
    ]
    if http_rss:
        lines += [f"Server peak RSS over the whole load run: {http_rss}.", ""]
    lines += [
        "## Targets",
        "",
        "| target | ratio | limit | inputs | verdict |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for target in targets(results):
        sign = "≥" if target.at_least else "≤"
        lines.append(
            f"| {target.name} | {_number(target.measured, 2)} | {sign} {target.limit:g} | {target.inputs} | {target.verdict()} |"
        )
    errors = _errors(results)
    if errors:
        lines += ["", "## Failures during the run", "", *errors]
    return "\n".join(lines) + "\n"


def main() -> None:
    results = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(render(results))


if __name__ == "__main__":
    main()
