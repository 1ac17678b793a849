"""Where a model's time goes on this machine, and what was tried against it. Prints one JSON document.

    .venv/bin/python -m bench.op_profile [--model FOLDER_OR_GGUF] [--activations fp32|int8] [--rows 1,8]

Three parts, so that a speed figure in docs/benchmarks.md can say which kernel it waits on:
- profile: ONNX Runtime's own profile of the engine's BatchRunner (the service's binding and
  cache), a prefill of `--prompt-tokens` then `--steps` decode steps of each row count, summed by
  operator type, with the largest nodes. Profiling adds a few microseconds to every node.
- kernels: MatMulNBits alone on the model's largest matrix (its head) at 1 and 8 rows, with
  float32 activations (accuracy_level 0, the default conversion) and int8 ones (level 4).
- tries: unprofiled step times with the session options and graph changes within reach, each
  beside the service's own settings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from bench.engine_speed import prompt_of
from converter.cache import cached_conversion
from converter.convert import ConversionOptions
from service.engine.batch_runner import BatchRunner, ModelShape
from service.engine.model_folder import ModelFolder
from service.engine.runtime import session_options, choose_placement
from service.settings import embedded_default_model

REPO = Path(__file__).resolve().parent.parent


def model_folder(model: Path | None, activations: str) -> Path:
    source = model or embedded_default_model().source
    if (source / "manifest.json").is_file():
        return source
    return cached_conversion(source, REPO / "models", ConversionOptions(activations=activations))


def session_for(path: Path, threads: int, config: dict[str, str], profile: bool = False) -> ort.InferenceSession:
    """A CPU session with the service's options, then `config`'s entries ("opt" sets the graph
    optimization level by name)."""
    options = session_options(threads)
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = "/tmp/op_profile"
    for key, value in config.items():
        if key == "opt":
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, value)
        else:
            options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), options, providers=choose_placement("cpu").providers)


def phase_summary(runs: list[tuple[float, float]], nodes: list[dict], top: int) -> dict:
    """Sums the node events that fall inside `runs` (start, end in µs) by operator type."""
    by_op: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    for event in nodes:
        start = event["ts"]
        if any(first <= start <= last for first, last in runs):
            operator = event["args"].get("op_name", "?")
            by_op[operator] += event["dur"]
            by_node[f"{operator} {event['name'].removesuffix('_kernel_time')}"] += event["dur"]
    wall = sum(last - first for first, last in runs)
    kernels = sum(by_op.values())
    per_run = 1000.0 * len(runs)  # µs summed over runs -> ms per run
    return {
        "runs": len(runs),
        "wall_ms_per_run": round(wall / per_run, 3),
        "kernel_ms_per_run": round(kernels / per_run, 3),
        "outside_kernels_share": round(1 - kernels / wall, 3) if wall else None,
        "by_operator_ms_per_run": {
            name: round(value / per_run, 3) for name, value in sorted(by_op.items(), key=lambda item: -item[1])
        },
        "largest_nodes_ms_per_run": {
            name: round(value / per_run, 3) for name, value in sorted(by_node.items(), key=lambda item: -item[1])[:top]
        },
    }


def profile(path: Path, folder: ModelFolder, arguments: argparse.Namespace) -> dict:
    """The profile part: prefill, then decode steps at each row count, summed by operator."""
    row_counts = [int(part) for part in arguments.rows.split(",")]
    session = session_for(path / "model.onnx", arguments.threads, {}, profile=True)
    prompt = prompt_of(folder, arguments.prompt_tokens)
    runner = BatchRunner(session, ModelShape.from_config(folder.config), len(prompt) + arguments.steps + 8, max(row_counts))
    marks: list[str] = []  # the phase of each graph run, in order
    for slot in range(max(row_counts)):
        runner.prefill(slot, prompt, 0)
        marks.append(f"prefill {len(prompt)} tokens" if slot == 0 else "other")
    token = folder.encode("a")[0]
    for rows in row_counts:
        for step in range(arguments.steps + 2):  # two warm-up steps per row count, not counted
            runner.decode([token] * rows, [len(prompt) + step] * rows)
            marks.append(f"decode, {rows} row{'s' if rows > 1 else ''}" if step >= 2 else "other")
    profile_file = Path(session.end_profiling())
    events = json.loads(profile_file.read_text())
    profile_file.unlink()
    runs = [event for event in events if event.get("cat") == "Session" and event["name"] == "model_run"]
    nodes = [event for event in events if event.get("cat") == "Node" and event["name"].endswith("_kernel_time")]
    if len(runs) != len(marks):
        raise SystemExit(f"expected {len(marks)} model_run events in the profile, found {len(runs)}")
    phases: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for phase, event in zip(marks, runs, strict=True):
        phases[phase].append((event["ts"], event["ts"] + event["dur"]))
    return {phase: phase_summary(spans, nodes, arguments.top) for phase, spans in phases.items() if phase != "other"}


def _median_ms(action: Callable[[], object], runs: int) -> float:
    action()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 3)


def kernels(path: Path, threads: int) -> dict:
    """MatMulNBits alone on the graph's largest matrix, float32 against int8 activations, 1 and 8
    rows: the kernels the two conversions run, without the rest of the graph."""
    graph = onnx.load(str(path / "model.onnx"), load_external_data=False).graph
    largest = max((node for node in graph.node if node.op_type == "MatMulNBits"), key=lambda node: _attribute(node, "N") * _attribute(node, "K"))
    n, k, bits, block = (_attribute(largest, name) for name in ("N", "K", "bits", "block_size"))
    generator = np.random.default_rng(0)
    levels = generator.integers(0, 256, (n, k // block, block * bits // 8), dtype=np.uint8)
    scales = (generator.random(n * (k // block), dtype=np.float32) * 0.01).astype(np.float32)
    result = {"matrix": largest.name, "N": n, "K": k, "bits": bits, "block_size": block}
    for label, level in (("float32 activations", 0), ("int8 activations", 4)):
        node = helper.make_node("MatMulNBits", ["x", "levels", "scales"], ["y"], domain="com.microsoft", K=k, N=n, bits=bits, block_size=block, accuracy_level=level)
        model = helper.make_model(
            helper.make_graph(
                [node], "kernel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
                [onnx.numpy_helper.from_array(levels, "levels"), onnx.numpy_helper.from_array(scales, "scales")],
            ),
            opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
            ir_version=10,
        )
        options = session_options(threads)
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for rows in (1, 8):
            x = generator.random((rows, k), dtype=np.float32)
            result[f"{label}, {rows} rows, ms"] = _median_ms(lambda x=x: session.run(None, {"x": x}), 30)
    return result


def _attribute(node: onnx.NodeProto, name: str) -> int:
    return next(helper.get_attribute_value(attribute) for attribute in node.attribute if attribute.name == name)


def step_times(graph: Path, folder: ModelFolder, threads: int, config: dict[str, str], chunk: int) -> dict:
    """Unprofiled: prefill of 640 tokens in chunks of `chunk`, and decode steps at 1 and 8 rows
    with 160 tokens cached per row."""
    session = session_for(graph, threads, config)
    runner = BatchRunner(session, ModelShape.from_config(folder.config), 1024, 8)
    long_prompt, prompt = prompt_of(folder, 640), prompt_of(folder, 160)

    def prefill_long() -> None:
        for start in range(0, len(long_prompt), chunk):
            runner.prefill(0, long_prompt[start : start + chunk], start)

    times = {"prefill 640, ms": _median_ms(prefill_long, 3)}
    for slot in range(8):
        runner.prefill(slot, prompt, 0)
    token = folder.encode("a")[0]
    for rows in (1, 8):
        position = iter(range(len(prompt), 1024))
        times[f"decode {rows} rows, ms"] = _median_ms(lambda rows=rows: runner.decode([token] * rows, [next(position)] * rows), 24)
    return times


def without_block_minimums(path: Path, scratch: Path) -> Path | None:
    """A copy of the graph with the exact block-minimum terms (Q4_1 and K-quant weights) cut out:
    its output is wrong, its time says what those terms cost. None when the graph has none."""
    model = onnx.load(str(path / "model.onnx"), load_external_data=False)
    nodes = list(model.graph.node)
    added = {node.output[0]: node.input[0] for node in nodes if node.op_type == "Add" and node.name.endswith("/plus_minimums")}
    if not added:
        return None
    kept = [node for node in nodes if node.output[0] not in added and not node.name.endswith("/minimums")]
    for node in kept:
        for index, name in enumerate(node.input):
            node.input[index] = added.get(name, name)
    model.graph.ClearField("node")
    model.graph.node.extend(kept)
    scratch.mkdir(parents=True, exist_ok=True)
    # A copy: ONNX Runtime refuses a side file that resolves outside the graph's folder (a
    # symlink), and onnx refuses one with several hard links, the model folder's own included.
    shutil.copyfile(path / "model.onnx.data", scratch / "model.onnx.data")
    onnx.save_model(model, scratch / "model.onnx")
    return scratch / "model.onnx"


def tries(path: Path, folder: ModelFolder, threads: int) -> list[dict]:
    """Each change within reach beside the service's settings (prefill chunk 512, as the engine
    runs a prompt alone)."""
    graph = path / "model.onnx"
    variants: list[tuple[str, Path, int, dict[str, str], int]] = [
        ("the service's settings", graph, threads, {}, 512),
        ("thread pool without spinning", graph, threads, {"session.intra_op.allow_spinning": "0"}, 512),
        ("dynamic block base 4", graph, threads, {"session.dynamic_block_base": "4"}, 512),
        ("graph optimizations: extended, not all", graph, threads, {"opt": "ORT_ENABLE_EXTENDED"}, 512),
        ("one thread", graph, 1, {}, 512),
        ("prefill chunk 128", graph, threads, {}, 128),
        ("prefill chunk 256", graph, threads, {}, 256),
        ("prefill in one chunk", graph, threads, {}, 640),
    ]
    scratch = REPO / ".cache" / "bench" / "without-minimums"
    stripped = without_block_minimums(path, scratch)
    if stripped is not None:
        variants.append(("block-minimum terms removed (wrong output; prices them)", stripped, threads, {}, 512))
    variants.append(("the service's settings again (the spread between runs)", graph, threads, {}, 512))
    try:
        return [{"variant": name, **step_times(graph, folder, count, config, chunk)} for name, graph, count, config, chunk in variants]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="converted folder or GGUF (default: embedded SmolLM2)")
    parser.add_argument("--activations", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=640)
    parser.add_argument("--rows", default="1,8", help="decode row counts, comma-separated")
    parser.add_argument("--steps", type=int, default=32, help="decode steps profiled per row count")
    parser.add_argument("--top", type=int, default=6, help="largest nodes listed per phase")
    parser.add_argument("--parts", default="profile,kernels,tries", help="which parts, comma-separated")
    arguments = parser.parse_args()

    path = model_folder(arguments.model, arguments.activations)
    folder = ModelFolder.load(path)
    parts = arguments.parts.split(",")
    report: dict = {"model_folder": path.name, "onnxruntime": ort.__version__, "threads": arguments.threads}
    if "profile" in parts:
        report["profile"] = profile(path, folder, arguments)
    if "kernels" in parts:
        report["kernels"] = kernels(path, arguments.threads)
    if "tries" in parts:
        report["tries"] = tries(path, folder, arguments.threads)
    print(json.dumps(report))  # one line: bench/peers.measure_script reads the last


if __name__ == "__main__":
    main()
