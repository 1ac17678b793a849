"""The hot model registry over HTTP: register while running (folder or GGUF), unload with
requests in flight, per-model settings, a memory budget counting what loads measurably took, and
the errors of each."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ServiceProcess
from tests.test_api import QUESTION, assert_error, chat
from tests.tiny_models import write_gguf_from_checkpoint

BUDGET_MB = 400
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tiny_model_dir, artifacts, tmp_path_factory):
    process = ServiceProcess(
        "--model", f"tiny={tiny_model_dir}",
        "--models-dir", str(tmp_path_factory.mktemp("registry-models")),
        "--memory-budget-mb", str(BUDGET_MB),
        log_path=artifacts / "registry_server.log",
    )
    yield process
    process.stop()


def register(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/models", json=body, timeout=30)


def kv_cache_bytes(model_dir: Path, capacity: int, slots: int) -> int:
    """A key and a value of float32 per layer, KV head and head dimension, for every token of every slot."""
    config = json.loads((model_dir / "manifest.json").read_text())["config"]
    return 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"] * 4 * capacity * slots


def counted_bytes(model: dict) -> int:
    return model["memory_bytes"]["loaded"] + model["memory_bytes"]["kv_cache_max"]


def memory_samples(server, model_id: str) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {
        sample.labels["part"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "llm_model_memory_bytes" and sample.labels["model"] == model_id
    }


def wait_settled(server, model_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = httpx.get(f"{server.url}/v1/models/{model_id}", timeout=10).json()
        if model["status"] in ("ready", "failed"):
            return model
        time.sleep(0.1)
    raise TimeoutError(model)


def test_a_converted_folder_registers_and_serves_with_its_own_settings(server, tiny_model_dir):
    accepted = register(server, id="second", source=str(tiny_model_dir), max_context=128, max_batch=2)
    model = wait_settled(server, "second")
    answer = chat(server, seed=1, model="second", messages=QUESTION, max_tokens=3)

    assert accepted.status_code == 202 and accepted.json()["status"] in ("loading", "ready")
    assert model["status"] == "ready" and model["context_length"] == 128 and model["max_batch"] == 2
    assert answer.status_code == 200


def test_a_gguf_file_is_converted_in_the_background_then_served(server, tiny_checkpoint, tmp_path):
    gguf = write_gguf_from_checkpoint(tiny_checkpoint, tmp_path / "tiny-q8.gguf")
    accepted = register(server, id="from-gguf", source=str(gguf))
    model = wait_settled(server, "from-gguf")

    assert accepted.json()["status"] in ("converting", "loading", "ready")
    assert model["status"] == "ready" and "progress" not in model
    assert chat(server, seed=1, model="from-gguf", messages=QUESTION, max_tokens=3).status_code == 200


def test_unloading_lets_a_stream_in_flight_finish_and_then_the_model_is_gone(server, smollm2_model_dir):
    # SmolLM2 with a small cache fits the budget and streams slowly enough to be caught mid-answer.
    register(server, id="doomed", source=str(smollm2_model_dir), max_context=512, max_batch=1)
    wait_settled(server, "doomed")
    lines: list[str] = []
    first_token = threading.Event()

    def stream() -> None:
        body = {"seed": 1, "model": "doomed", "messages": QUESTION, "max_tokens": 150, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                lines.append(line)
                if len(lines) > 4:
                    first_token.set()

    streaming = threading.Thread(target=stream)
    streaming.start()
    first_token.wait(30)
    deleted = httpx.delete(f"{server.url}/v1/models/doomed", timeout=10)
    after = chat(server, seed=1, model="doomed", messages=QUESTION, max_tokens=2)
    streaming.join(60)
    payloads = [line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]) for line in lines if line.startswith("data: ")]

    assert deleted.json() == {"id": "doomed", "object": "model", "deleted": True}
    assert_error(after, 404, code="model_not_found")
    finish_reasons = [chunk["choices"][0]["finish_reason"] for chunk in payloads[:-1] if chunk["choices"]]
    assert payloads[-1] == "[DONE]" and finish_reasons[-1] == "length"  # all 150 tokens, after the DELETE
    assert_error(httpx.get(f"{server.url}/v1/models/doomed"), 404, code="model_not_found")


def test_a_ready_model_reports_what_its_load_took_and_its_full_kv_cache(server, smollm2_model_dir):
    # SmolLM2 rather than the tiny model, whose load adds less than a page-rounding's noise.
    register(server, id="measured", source=str(smollm2_model_dir), max_context=128, max_batch=2)
    model = wait_settled(server, "measured")

    assert model["memory_bytes"]["loaded"] > 0
    assert model["memory_bytes"]["kv_cache_max"] == kv_cache_bytes(smollm2_model_dir, capacity=128, slots=2)
    assert memory_samples(server, "measured") == {key: float(value) for key, value in model["memory_bytes"].items()}


def test_a_model_past_the_memory_budget_fails_counting_what_the_others_measurably_take(server, smollm2_model_dir):
    models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]
    in_use = sum(counted_bytes(model) for model in models if model["status"] == "ready")
    register(server, id="too-big", source=str(smollm2_model_dir), max_context=4096, max_batch=8)
    model = wait_settled(server, "too-big")

    assert model["status"] == "failed"
    assert f"{in_use // MIB} MB of the {BUDGET_MB} MB memory budget are in use" in model["error"]


def first_load(model_dir: Path, artifacts: Path, name: str, *budget: str) -> dict:
    """The model as a fresh service reports it after loading it first, at 512 x 1."""
    server = ServiceProcess(
        "--model", f"first={model_dir}", "--max-context", "512", "--max-batch", "1", *budget,
        log_path=artifacts / f"registry_{name}_server.log", wait_ready=False,
    )
    try:
        return wait_settled(server, "first")
    finally:
        server.stop()


def test_a_load_that_fits_by_its_files_but_not_by_what_it_took_fails_with_the_measurement(tiny_model_dir, artifacts):
    # A service's first load also carries ONNX Runtime's one-time setup, far more than the tiny
    # model's files. A budget between the two (each with the full KV cache) fits the estimate
    # before loading, not what loading took.
    measured = first_load(tiny_model_dir, artifacts, "unbudgeted")
    files = sum(path.stat().st_size for path in tiny_model_dir.glob("model.onnx*"))
    kv_cache_max = measured["memory_bytes"]["kv_cache_max"]
    assert measured["memory_bytes"]["loaded"] > files + 2 * MIB, measured
    budget_mb = (files + kv_cache_max) // MIB + 1

    model = first_load(tiny_model_dir, artifacts, "budgeted", "--memory-budget-mb", str(budget_mb))
    figure = re.search(r"took (\d+) MB as measured", model.get("error", ""))

    assert model["status"] == "failed" and figure and int(figure[1]) >= budget_mb, model
    assert f"of the {budget_mb} MB memory budget" in model["error"]


@pytest.mark.parametrize(
    "body, status, param, code",
    [
        ({"id": "tiny", "source": "."}, 409, "id", "model_exists"),
        ({"id": "x", "source": "/no/such/file.gguf"}, 400, "source", None),
        ({"id": "bad id!", "source": "."}, 400, "id", None),
        ({"id": "x"}, 400, "source", None),
        ({"id": "x", "source": ".", "quant": "int3"}, 400, "quant", None),
        ({"id": "x", "source": ".", "max_batch": 0}, 400, "max_batch", None),
    ],
)
def test_bad_registrations_are_refused_naming_the_field(server, tiny_model_dir, body, status, param, code):
    body = {**body, "source": str(tiny_model_dir) if body.get("source") == "." else body.get("source")}
    body = {key: value for key, value in body.items() if value is not None}
    assert_error(register(server, **body), status, param=param, code=code)


def test_unloading_an_unknown_model_is_a_404(server):
    assert_error(httpx.delete(f"{server.url}/v1/models/nope", timeout=10), 404, code="model_not_found")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_models_registered_through_the_api_come_back_after_a_restart_and_deleted_ones_do_not(
    request, backend, tiny_model_dir, artifacts, tmp_path
):
    # PostgreSQL: each start gets a new data dir, so only the database carries the models over.
    database = () if backend == "sqlite" else ("--database-url", request.getfixturevalue("postgres_server").create_database())
    starts = iter(range(2))

    def start() -> ServiceProcess:
        data = tmp_path / ("data" if backend == "sqlite" else f"data-{next(starts)}")
        return ServiceProcess(
            "--model", f"tiny={tiny_model_dir}", "--data-dir", str(data), *database,
            log_path=artifacts / f"registry_restart_{backend}.log",
        )

    first = start()
    try:
        register(first, id="kept", source=str(tiny_model_dir), max_context=64)
        register(first, id="dropped", source=str(tiny_model_dir))
        wait_settled(first, "kept"), wait_settled(first, "dropped")
        httpx.delete(f"{first.url}/v1/models/dropped", timeout=10)
    finally:
        first.stop()
    second = start()
    try:
        kept = wait_settled(second, "kept")
        ids = {model["id"] for model in httpx.get(f"{second.url}/v1/models", timeout=10).json()["data"]}
    finally:
        second.stop()

    assert kept["status"] == "ready" and kept["context_length"] == 64
    assert ids == {"tiny", "kept"}
