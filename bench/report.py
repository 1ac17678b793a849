"""docs/benchmarks.md from one run's results: machine, versions, method, per-model tables and
targets with verdicts.

The results are plain dicts as bench/run_all.py collects them, so a report can be re-rendered from
a saved .cache/bench/last-run.json without measuring again:

    .venv/bin/python -m bench.report .cache/bench/last-run.json docs/benchmarks.md
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

OURS = "this engine (service default)"
LLAMA_CPP = "llama.cpp"
GENAI = "onnxruntime-genai"
OUR_SERVICE = "this service"
LLAMA_SERVER = "llama-server"


@dataclass(frozen=True)
class Spread:
    """The median of a figure's runs and their range."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: list[float]) -> Spread | None:
        values = [value for value in values if value is not None]
        return cls(statistics.median(values), min(values), max(values), len(values)) if values else None

    def text(self, digits: int = 1) -> str:
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}–{self.high:.{digits}f})"


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


def _number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _quiet_runs(entry: dict, limit: float) -> list[dict]:
    return [run for run in entry.get("runs") or [] if run.get("foreign_cores", 0) <= limit]


def single_figure(entry: dict, prompt: int, key: str, limit: float) -> Spread | None:
    """A single-stream figure over every run of every quiet round: key "decode_runs" or "first_token_runs"."""
    return Spread.of([value for run in _quiet_runs(entry, limit) for value in run["prompts"][prompt][key]])


def _level(entry: dict, streams: int, limit: float) -> dict | None:
    for level in entry.get("levels") or []:
        if level["streams"] == streams and level["completed"] > 0 and level.get("foreign_cores", 0) <= limit:
            return level
    return None


def targets(model: dict, limit: float) -> list[Target]:
    single, http = model["single"], model["http"]
    decode = {name: single_figure(entry, 0, "decode_runs", limit) for name, entry in single.items()}
    long_first = {name: single_figure(entry, 1, "first_token_runs", limit) for name, entry in single.items()}
    median = lambda spread: spread.median if spread else None  # noqa: E731
    ours_16, server_16 = _level(http.get(OUR_SERVICE, {}), 16, limit), _level(http.get(LLAMA_SERVER, {}), 16, limit)
    ours_rss = http.get(OUR_SERVICE, {}).get("rss_after_load_mib")
    server_rss = http.get(LLAMA_SERVER, {}).get("rss_after_load_mib")
    return [
        Target("single-stream decode vs llama.cpp", _ratio(median(decode.get(OURS)), median(decode.get(LLAMA_CPP))), 1.3, True,
               f"{_number(median(decode.get(OURS)))} / {_number(median(decode.get(LLAMA_CPP)))} tok/s"),
        Target("single-stream decode vs onnxruntime-genai", _ratio(median(decode.get(OURS)), median(decode.get(GENAI))), 1.0, True,
               f"{_number(median(decode.get(OURS)))} / {_number(median(decode.get(GENAI)))} tok/s"),
        Target("first token at 640 tokens vs llama.cpp", _ratio(median(long_first.get(OURS)), median(long_first.get(LLAMA_CPP))),
               0.7, False, f"{_number(median(long_first.get(OURS)), 3)} / {_number(median(long_first.get(LLAMA_CPP)), 3)} s"),
        Target("HTTP aggregate at 16 streams vs llama-server (equal slots)",
               _ratio(ours_16 and ours_16["aggregate_tok_s"], server_16 and server_16["aggregate_tok_s"]), 1.5, True,
               f"{_number(ours_16 and ours_16['aggregate_tok_s'])} / {_number(server_16 and server_16['aggregate_tok_s'])} tok/s"),
        Target("service RSS after the HTTP load vs llama-server's", _ratio(ours_rss, server_rss), 1.3, False,
               f"{_number(ours_rss, 0)} / {_number(server_rss, 0)} MiB"),
    ]


def _single_table(model: dict, limit: float) -> list[str]:
    lines = [
        "| engine | decode tok/s | first token, 32 tokens (s) | first token, 640 tokens (s) | top-1 agreement "
        "| peak RSS (MiB) | quiet rounds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for engine, entry in model["single"].items():
        if entry.get("error") and not entry.get("runs"):
            lines.append(f"| {engine} | failed: {entry['error']} | | | | | |")
            continue
        runs = entry["runs"]
        quiet = _quiet_runs(entry, limit)
        decode = single_figure(entry, 0, "decode_runs", limit)
        short = single_figure(entry, 0, "first_token_runs", limit)
        long = single_figure(entry, 1, "first_token_runs", limit)
        agreement = next((run.get("top1_agreement") for run in runs if run.get("top1_agreement") is not None), None)
        rss = max((run["peak_rss_mib"] for run in runs), default=None)
        lines.append(
            f"| {engine} | {decode.text() if decode else '—'} | {short.text(3) if short else '—'} | "
            f"{long.text(3) if long else '—'} | {_number(agreement and agreement * 100)}% | {_number(rss, 0)} | "
            f"{len(quiet)} of {len(runs)} |"
        )
    return lines


def _http_table(model: dict, levels: list[int], limit: float) -> list[str]:
    header = "| server | " + " | ".join(f"{streams} stream{'s' if streams > 1 else ''}" for streams in levels)
    lines = [header + " | RSS after the load (MiB) |", "| --- | " + " | ".join("---:" for _ in levels) + " | ---: |"]
    for server, entry in model["http"].items():
        if entry.get("error"):
            lines.append(f"| {server} | failed: {entry['error']} |" + " |" * len(levels))
            continue
        cells = []
        by_streams = {level["streams"]: level for level in entry["levels"]}
        for streams in levels:
            level = by_streams.get(streams)
            if level is None:
                cells.append("—")
            elif level.get("foreign_cores", 0) > limit:
                cells.append(f"not quiet ({level['foreign_cores']:.2f} cores of other work)")
            else:
                spread = Spread.of(level.get("attempt_rates") or [level["aggregate_tok_s"]])
                failed = "" if not level["errors"] else f", {streams - level['completed']} failed"
                cells.append(f"{spread.text()}{failed}; first {_number(level['mean_first_token_s'], 2)} s")
        lines.append(f"| {server} | " + " | ".join(cells) + f" | {_number(entry.get('rss_after_load_mib'), 0)} |")
    return lines


def _model_section(model: dict, results: dict) -> list[str]:
    limit = results["quiet_foreign_cores"]
    title = f"## {model['name']}"
    if model.get("error"):
        return [title, "", f"Not measured: {model['error']}", ""]
    lines = [
        title,
        "",
        f"`{model['gguf']}` ({model['size_mib']:.0f} MiB); this engine's folder `{model['folder']}`. Service and "
        f"llama-server both with {model['slots']} slots of {model['context']} tokens.",
        "",
        *_single_table(model, limit),
        "",
        f"HTTP ({'chat completions' if model.get('endpoint', 'chat') == 'chat' else 'text completions: the GGUF has no chat template'}): "
        "aggregate generated tokens per second over all streams, median (range) of the attempts, and the mean time to first token:",
        "",
        *_http_table(model, results["levels"], limit),
        "",
        "| target | ratio | limit | inputs | verdict |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for target in targets(model, limit):
        sign = "≥" if target.at_least else "≤"
        lines.append(f"| {target.name} | {_number(target.measured, 2)} | {sign} {target.limit:g} | {target.inputs} | {target.verdict()} |")
    return lines + [""] + _memory_settings_lines(model.get("memory_settings")) + _time_section(model.get("time"), limit)


def _memory_settings_lines(settings: list[dict] | None) -> list[str]:
    """The service's RSS after one short request at several slot and context settings."""
    if not settings:
        return []
    cells = [
        f"{entry['slots']} x {entry['context']}: " + (f"{entry['rss_mib']:.0f} MiB" if entry.get("rss_mib") else f"failed ({entry.get('error')})")
        for entry in settings
    ]
    return [f"This service's RSS after loading and one 16-token request, by slots x context per slot: {'; '.join(cells)}.", ""]


# Operators grouped for the profile table; the rest is "other operators".
_PROFILE_COLUMNS = (
    ("quantized matmuls", ("MatMulNBits",)),
    ("attention", ("GroupQueryAttention",)),
    ("block-minimum products (MatMul, ReduceSum)", ("MatMul", "ReduceSum")),
    ("norms", ("SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization")),
)


def _time_section(time: dict | None, limit: float) -> list[str]:
    """Where the default folder's time goes (bench/op_profile.py): the profile by operator, the
    head's kernel with either activation precision, and what was tried."""
    if not time:
        return []
    lines = ["### Where the time goes", ""]
    if time.get("error"):
        return lines + [f"Not measured: {time['error']}", ""]
    if time.get("foreign_cores", 0) > limit:
        lines += [f"Measured while other work took {time['foreign_cores']:.2f} cores.", ""]
    lines += [
        "ONNX Runtime's profile of the service's runner, milliseconds per graph run (profiling adds a few "
        "microseconds to each node, so the sum is above the unprofiled times below):",
        "",
        "| phase | wall | " + " | ".join(name for name, _ in _PROFILE_COLUMNS) + " | other operators | outside kernels |",
        "| --- | ---: | " + " | ".join("---:" for _ in _PROFILE_COLUMNS) + " | ---: | ---: |",
    ]
    for phase, summary in time["profile"].items():
        by_operator = summary["by_operator_ms_per_run"]
        grouped = [sum(by_operator.get(operator, 0.0) for operator in operators) for _, operators in _PROFILE_COLUMNS]
        other = summary["kernel_ms_per_run"] - sum(grouped)
        outside = summary["wall_ms_per_run"] - summary["kernel_ms_per_run"]
        cells = " | ".join(f"{value:.2f}" for value in (*grouped, other, outside))
        lines.append(f"| {phase} | {summary['wall_ms_per_run']:.2f} | {cells} |")
    kernel = time["kernels"]
    fp32_one, fp32_eight = kernel["float32 activations, 1 rows, ms"], kernel["float32 activations, 8 rows, ms"]
    int8_one, int8_eight = kernel["int8 activations, 1 rows, ms"], kernel["int8 activations, 8 rows, ms"]
    lines += [
        "",
        f"The largest matrix alone (`{kernel['matrix']}`, {kernel['N']} x {kernel['K']}, {kernel['bits']}-bit blocks of "
        f"{kernel['block_size']}) in ONNX Runtime's MatMulNBits: with float32 activations (the default conversion) "
        f"{fp32_one:.3f} ms for 1 row and {fp32_eight:.3f} ms for 8; with int8 activations {int8_one:.3f} and "
        f"{int8_eight:.3f} ms. The float32 kernel is {fp32_one / int8_one:.1f}x slower for one row and "
        f"{fp32_eight / int8_eight:.1f}x for eight.",
        "",
        "Tried, unprofiled (median milliseconds; decode rows hold 160 cached tokens each):",
        "",
        "| variant | prefill 640 tokens | decode, 1 row | decode, 8 rows |",
        "| --- | ---: | ---: | ---: |",
    ]
    for tried in time["tries"]:
        lines.append(
            f"| {tried['variant']} | {tried['prefill 640, ms']:.1f} | {tried['decode 1 rows, ms']:.2f} | {tried['decode 8 rows, ms']:.2f} |"
        )
    return lines + [""]


def render(results: dict) -> str:
    machine, versions = results["machine"], results.get("versions", {})
    defaults = results["service_defaults"]
    threads = results["threads"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `.venv/bin/python -m bench.run_all` on {results['started']} "
        f"({results.get('duration_s', 0) / 60:.0f} min); re-run it rather than editing this file.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']} ({', '.join(machine['vector_extensions']) or 'no AVX2'}), {machine['cores']} cores; "
        f"memory {machine['memory_gib']:.0f} GiB; {machine['os']}",
        f"- Load average (1, 5, 15 min) at the start: {machine['load_start']}; at the end: {machine.get('load_end', '?')}.",
        "",
        "## Versions",
        "",
        f"- This engine: onnxruntime {versions.get('onnxruntime', '?')} (CPU execution provider)",
        f"- llama.cpp: llama-cpp-python {versions.get('llama-cpp-python', '?')}, vendored llama.cpp commit "
        f"{versions.get('llama.cpp commit', '?')}; llama-server {versions.get('llama-server', '?')}",
        f"- onnxruntime-genai {versions.get('onnxruntime-genai', '?')} (its own CPU onnxruntime)",
        "",
        "## Method",
        "",
        f"- Every engine runs in a process of its own with {threads} threads, greedy, exactly {results['new_tokens']} new "
        "tokens whatever it predicts. Decode tok/s is the rate after the first token with the 32-token prompt; "
        "first token covers prefill and the first sampled token. Each engine runs "
        f"{results['repeats']} times per prompt in each of {results['rounds']} rounds, engines taken in turn; tables give "
        "the median over all runs of the quiet rounds and the range (min–max).",
        f"- Quiet: a round or HTTP level counts only if other work on the machine took at most "
        f"{results['quiet_foreign_cores']} of a core meanwhile (the machine's busy CPU time minus the benchmark's own "
        "processes', from /proc; bench/machine_load.py). A loaded one is waited out and repeated; one never measured "
        "quietly is shown as such and gets no verdict.",
        "- Top-1 agreement: how often an engine's most likely next token equals the float32-activation graph's "
        "(this converter's exact conversion, equal to transformers' logits within 1e-4) over the ~250-token parity "
        "text of the tests, by teacher forcing; llama.cpp's from `logits_all`, onnxruntime-genai's from its prompt pass.",
        f"- This engine: `bench/peer_engine.py` on the folder the service converts by default (activations "
        f"`{defaults['activations']}`; the targets use this row and this service), and on the folder with the other "
        "activation precision. The reference for top-1 agreement is the fp32 folder.",
        "- llama.cpp: llama-cpp-python built from its sdist with `-DGGML_NATIVE=ON`, flash attention on (what "
        "llama-server's default `auto` picks on CPU), n_ctx 2048, n_batch 1024. onnxruntime-genai: its model "
        "builder's int4 RTN CPU model made from the dequantized GGUF, in `.cache/bench/genai-venv`.",
        "- Models: SmolLM2-135M-Instruct as shipped (Q4_1) and re-quantized by llama.cpp's own `llama-quantize` to "
        "Q4_0 and Q8_0 (the formats with llama.cpp's fastest x86 kernels), and Gemma 3 270M Q4_K_M.",
        f"- HTTP: `bench/http_load.py` starts N streaming chat completions at once (`max_tokens` {results['new_tokens']}, "
        f"`ignore_eos`, temperature 0), {results['http_attempts']} attempts per level. This service runs at its "
        f"defaults (`--max-batch {defaults['max_batch']}`, `--max-context {defaults['max_context']}`) with "
        f"`--threads {threads}`; llama-server at its defaults with the same slots, context per slot and threads "
        f"(`-np {defaults['max_batch']} -c {defaults['max_batch'] * defaults['max_context']} -t {threads} -tb {threads}`). "
        "RSS after the load is each server's resident memory once the last level finished.",
        "",
    ]
    for model in results["models"]:
        lines += _model_section(model, results)
    lines += _constraints_section(results.get("constraints"), results["quiet_foreign_cores"])
    return "\n".join(lines)


def _constraints_section(constraints: dict | None, limit: float) -> list[str]:
    """The decode rate with and without a grammar (bench/constraint_speed.py)."""
    if not constraints:
        return []
    lines = ["## Constrained decoding", ""]
    if constraints.get("error"):
        return lines + [f"Not measured: {constraints['error']}", ""]
    quiet = "" if constraints.get("foreign_cores", 0) <= limit else f" (measured while other work took {constraints['foreign_cores']:.2f} cores)"
    lines += [
        f"The engine's decode rate on `{constraints['model']}` with a grammar that allows long free text (a regex; "
        f"its mask is computed per token as a JSON schema's is) and without one, greedy, median of the runs{quiet}:",
        "",
        "| streams | without a grammar (tok/s) | with a grammar (tok/s) | cost | target |",
        "| ---: | ---: | ---: | ---: | --- |",
    ]
    for streams in (1, 8):
        free, constrained = constraints[f"{streams}_free"], constraints[f"{streams}_grammar"]
        cost = constraints[f"cost_{streams}_stream{'s' if streams > 1 else ''}"]
        verdict = "pass" if cost <= 0.10 else "FAIL"
        lines.append(f"| {streams} | {free:.1f} | {constrained:.1f} | {cost * 100:.1f}% | ≤ 10% slower: {verdict} |")
    return lines + [""]


def main() -> None:
    results = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(render(results))


if __name__ == "__main__":
    main()
