"""The benchmark's own tools: telling other work's load from its own, refusing loaded figures, and
saying where a model's time goes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import onnx
import onnxruntime as ort

from bench.machine_load import machine_busy_seconds, measure_quietly, own_seconds
from bench.op_profile import without_block_minimums
from bench.report import LLAMA_SERVER, OUR_SERVICE, targets

SPIN = "import time\nwhile time.process_time() < {seconds}: pass\n"  # seconds of CPU, however loaded the machine


def test_work_the_benchmark_starts_counts_as_its_own():
    before = own_seconds()

    subprocess.run([sys.executable, "-c", SPIN.format(seconds=1.5)], check=True)

    assert own_seconds() - before > 1.2


def test_a_process_outside_the_benchmark_is_other_work():
    # setsid in a shell that exits at once: the spinner is re-parented away from this process.
    subprocess.run(["sh", "-c", f"setsid {sys.executable} -c '{SPIN.format(seconds=3)}' &"], check=True)
    time.sleep(0.2)
    own, busy = own_seconds(), machine_busy_seconds()

    measured = measure_quietly(lambda: time.sleep(1.5), threads=2, attempts=1, wait_seconds=0)

    assert own_seconds() - own < 0.3 and machine_busy_seconds() - busy > 1.0
    assert measured.foreign_cores > 0.6, measured


def _model(our_16: dict, server_16: dict) -> dict:
    empty = {"runs": [], "error": "not run"}
    return {
        "single": {"this engine (service default)": empty},
        "http": {
            OUR_SERVICE: {"levels": [our_16], "rss_after_load_mib": 300.0},
            LLAMA_SERVER: {"levels": [server_16], "rss_after_load_mib": 250.0},
        },
    }


def test_a_level_measured_under_other_work_gets_no_verdict():
    level = {"streams": 16, "completed": 16, "aggregate_tok_s": 500.0}
    loaded = _model({**level, "foreign_cores": 0.9}, {**level, "aggregate_tok_s": 300.0, "foreign_cores": 0.0})
    quiet = _model({**level, "foreign_cores": 0.1}, {**level, "aggregate_tok_s": 300.0, "foreign_cores": 0.0})

    verdicts = {name: {target.name: target.verdict() for target in targets(model, 0.25)} for name, model in (("loaded", loaded), ("quiet", quiet))}

    key = "HTTP aggregate at 16 streams vs llama-server (equal slots)"
    assert verdicts["loaded"][key] == "not measured" and verdicts["quiet"][key] == "pass"


def test_the_op_profile_splits_each_phase_by_operator_and_times_the_largest_matmul(smollm2_model_dir):
    command = [
        sys.executable, "-m", "bench.op_profile", "--model", str(smollm2_model_dir),
        "--prompt-tokens", "32", "--rows", "1,2", "--steps", "3", "--parts", "profile,kernels",
    ]
    report = json.loads(subprocess.run(command, capture_output=True, text=True, check=True, timeout=300).stdout.splitlines()[-1])

    phases = report["profile"]
    assert {phase: summary["runs"] for phase, summary in phases.items()} == {"prefill 32 tokens": 1, "decode, 1 row": 3, "decode, 2 rows": 3}
    for summary in phases.values():
        assert 0 < summary["kernel_ms_per_run"] <= summary["wall_ms_per_run"], summary
        assert summary["by_operator_ms_per_run"]["MatMulNBits"] > 0, summary
    kernels = report["kernels"]
    assert kernels["matrix"].startswith("lm_head") and kernels["N"] == 49152, kernels
    assert all(kernels[f"{activations} activations, {rows} rows, ms"] > 0 for activations in ("float32", "int8") for rows in (1, 8))


def test_pricing_the_block_minimums_strips_them_and_leaves_the_model_folder_loadable(smollm2_model_dir, tmp_path):
    stripped = without_block_minimums(smollm2_model_dir, tmp_path / "stripped")

    graph = onnx.load(str(stripped), load_external_data=False).graph
    assert not any(node.name.endswith(("/minimums", "/plus_minimums")) for node in graph.node)
    ort.InferenceSession(str(stripped), providers=["CPUExecutionProvider"])  # its copy of the weights is found
    onnx.load(str(smollm2_model_dir / "model.onnx"))  # a hard link to the folder's side file made onnx refuse it
