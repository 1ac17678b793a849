"""Observability: /metrics moves by exactly what a request did, request ids reach the logs,
traces nest queue/prefill/decode under the request's span, probes and SIGTERM draining."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from service.app import create_app
from service.settings import ModelSpec, Settings
from tests.support import ServiceProcess
from tests.test_api import assert_error

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics by (sample name, labels)."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def tiny_chat(url: str, **extra) -> httpx.Response:
    body = {"seed": 1, "model": "tiny", "messages": QUESTION, "max_tokens": 8, "temperature": 0, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def test_token_counters_and_histograms_move_by_exactly_one_requests_usage(api_server):
    before = scrape(api_server.url)
    usage = tiny_chat(api_server.url).json()["usage"]
    after = scrape(api_server.url)

    assert {
        "prompt": moved(before, after, "llm_prompt_tokens_total", model="tiny"),
        "generated": moved(before, after, "llm_generation_tokens_total", model="tiny"),
        "ttft": moved(before, after, "llm_time_to_first_token_seconds_count", model="tiny"),
        "e2e": moved(before, after, "llm_e2e_request_latency_seconds_count", model="tiny"),
        "queue": moved(before, after, "llm_request_queue_time_seconds_count", model="tiny"),
        "inter_token": moved(before, after, "llm_inter_token_latency_seconds_count", model="tiny"),
        "prefix_queries": moved(before, after, "llm_prefix_cache_queries_total", model="tiny"),
    } == {
        "prompt": usage["prompt_tokens"],
        "generated": usage["completion_tokens"],
        "ttft": 1,
        "e2e": 1,
        "queue": 1,
        "inter_token": max(usage["completion_tokens"] - 1, 0),
        "prefix_queries": 1,
    }


def test_running_and_waiting_return_to_zero_after_a_stream(api_server):
    with httpx.stream(
        "POST", f"{api_server.url}/v1/chat/completions",
        json={"seed": 1, "model": "tiny", "messages": QUESTION, "max_tokens": 8, "stream": True}, timeout=120,
    ) as response:
        assert response.read().rstrip().endswith(b"data: [DONE]")
    samples = scrape(api_server.url)

    assert [value(samples, name, model="tiny") for name in ("llm_num_requests_running", "llm_num_requests_waiting")] == [0, 0]


def test_http_requests_are_counted_by_route_template_not_raw_path(api_server):
    before = scrape(api_server.url)
    httpx.get(f"{api_server.url}/v1/models/no-such-model", timeout=10)
    after = scrape(api_server.url)

    assert moved(before, after, "llm_http_requests_total", route="/v1/models/{model_id:path}", method="GET", status="404") == 1


def test_model_status_and_batch_size_are_exposed(api_server):
    tiny_chat(api_server.url)
    samples = scrape(api_server.url)

    assert value(samples, "llm_model_status", model="tiny", status="ready") == 1
    assert value(samples, "llm_model_status", model="tiny", status="loading") == 0
    assert value(samples, "llm_model_load_seconds", model="tiny") > 0
    assert value(samples, "llm_batch_size_count", model="tiny") >= 1
    assert ("llm_decode_idle_rows_total", frozenset({("model", "tiny")})) in samples


def logged_requests(server: ServiceProcess, request_id: str, timeout: float = 10) -> list[dict]:
    """The `request` log lines carrying request_id (the line is written once the response ends)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
        found = [line for line in lines if line.get("event") == "request" and line.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_client_request_id_comes_back_and_is_logged_with_the_requests_usage(api_server):
    response = httpx.post(
        f"{api_server.url}/v1/chat/completions",
        json={"seed": 1, "model": "tiny", "messages": QUESTION, "max_tokens": 8, "temperature": 0},
        headers={"X-Request-ID": "observability-test-42"},
        timeout=120,
    )
    usage = response.json()["usage"]

    assert response.headers["X-Request-ID"] == "observability-test-42"
    [line] = logged_requests(api_server, "observability-test-42")
    assert {key: line.get(key) for key in ("model", "status", "prompt_tokens", "completion_tokens", "outcome", "route")} == {
        "model": "tiny",
        "status": 200,
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "outcome": "ok",
        "route": "/v1/chat/completions",
    }
    assert line["seconds"] > 0


@pytest.mark.parametrize(
    "route, body",
    [
        ("/v1/chat/completions", {"seed": 1, "model": "tiny", "messages": QUESTION, "max_tokens": 4}),
        ("/v1/completions", {"seed": 1, "model": "tiny", "prompt": "Hello", "max_tokens": 4}),
        ("/v1/responses", {"seed": 1, "model": "tiny", "input": "Hello", "max_output_tokens": 4, "store": False}),
        ("/v1/embeddings", {"model": "tiny", "input": "Hello"}),
    ],
)
def test_the_end_user_a_request_names_is_on_its_log_line(api_server, route, body):
    request_id = f"end-user{route.replace('/', '-')}"
    response = httpx.post(f"{api_server.url}{route}", json={**body, "user": "alice-42"}, headers={"X-Request-ID": request_id}, timeout=120)

    assert response.status_code == 200, response.text
    [line] = logged_requests(api_server, request_id)
    assert line.get("user") == "alice-42", line


def test_an_end_user_longer_than_256_characters_is_refused_naming_the_field(api_server):
    body = {"seed": 1, "model": "tiny", "messages": QUESTION, "max_tokens": 4, "user": "u" * 257}

    assert_error(httpx.post(f"{api_server.url}/v1/chat/completions", json=body, timeout=30), 400, param="user")


def test_an_unsafe_request_id_is_replaced_by_a_fresh_one(api_server):
    response = httpx.get(f"{api_server.url}/v1/models", headers={"X-Request-ID": "bad id\"with quotes"}, timeout=10)

    assert response.headers["X-Request-ID"] != "bad id\"with quotes" and len(response.headers["X-Request-ID"]) == 32


def in_process_app(tiny_model_dir, tmp_path, provider=None):
    settings = Settings(
        models=(ModelSpec(tiny_model_dir, "tiny"),), models_dir=tmp_path / "models", data_dir=tmp_path / "data", max_context=256,
        allowed_hosts=("testserver",),  # TestClient's Host
    )
    return create_app(settings, tracer_provider=provider)


def wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 120
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.05)


def test_a_chat_request_span_holds_queue_prefill_and_decode_with_genai_attributes(tiny_model_dir, tmp_path):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with TestClient(in_process_app(tiny_model_dir, tmp_path, provider)) as client:
        wait_ready(client)
        usage = client.post(
            "/v1/chat/completions",
            json={"seed": 1, "model": "tiny", "messages": QUESTION, "max_tokens": 6, "temperature": 0.5, "user": "alice-42"},
        ).json()["usage"]
    spans = exporter.get_finished_spans()
    [request_span] = [span for span in spans if span.name == "chat tiny"]
    children = {span.name: span for span in spans if span.parent is not None and span.parent.span_id == request_span.context.span_id}

    assert sorted(children) == ["decode", "prefill", "queue"]
    assert all(request_span.start_time <= child.start_time <= child.end_time <= request_span.end_time for child in children.values())
    assert children["queue"].end_time <= children["prefill"].start_time <= children["prefill"].end_time <= children["decode"].start_time
    assert {key: request_span.attributes[key] for key in (
        "gen_ai.system", "gen_ai.request.model", "gen_ai.request.max_tokens", "gen_ai.request.temperature",
        "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.response.finish_reasons", "enduser.id",
    )} == {
        "gen_ai.system": "llm-service",
        "gen_ai.request.model": "tiny",
        "gen_ai.request.max_tokens": 6,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.usage.input_tokens": usage["prompt_tokens"],
        "gen_ai.usage.output_tokens": usage["completion_tokens"],
        "gen_ai.response.finish_reasons": ("length",) if usage["completion_tokens"] == 6 else ("stop",),
        "enduser.id": "alice-42",
    }


def test_startupz_is_503_until_startup_has_registered_the_models(tiny_model_dir, tmp_path):
    app = in_process_app(tiny_model_dir, tmp_path)
    before = TestClient(app).get("/startupz").status_code  # no lifespan: startup has not run
    with TestClient(app) as client:
        after = client.get("/startupz").status_code

    assert (before, after) == (503, 200)


def test_sigterm_lets_a_running_stream_finish_while_refusing_new_work_then_exits_0(smollm2_model_dir, artifacts):
    server = ServiceProcess(
        "--model", f"smol={smollm2_model_dir}", "--max-context", "512", "--drain-seconds", "60",
        log_path=artifacts / "drain.log",
    )
    stream_body = {"seed": 1, "model": "smol", "messages": QUESTION, "max_tokens": 300, "ignore_eos": True, "stream": True}
    first_chunk = threading.Event()
    received: list[bytes] = []

    def consume() -> None:
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=stream_body, timeout=120) as response:
            for chunk in response.iter_raw():
                received.append(chunk)
                first_chunk.set()

    reader = threading.Thread(target=consume)
    try:
        reader.start()
        assert first_chunk.wait(60)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        readiness = httpx.get(f"{server.url}/readyz", timeout=10)
        refused = httpx.post(f"{server.url}/v1/chat/completions", json={**stream_body, "stream": False}, timeout=10)
        reader.join(120)
        exit_code = server.process.wait(60)
    finally:
        server.stop()

    assert (readiness.status_code, readiness.json()["status"]) == (503, "draining")
    assert (refused.status_code, refused.json()["error"]["code"]) == (503, "draining")
    assert b"".join(received).rstrip().endswith(b"data: [DONE]")
    assert exit_code == 0
