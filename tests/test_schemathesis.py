"""Schemathesis generates requests from /openapi.json against a real server of its own: no input
it can build, valid or not, may produce a 5xx, and every error keeps the OpenAI envelope."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support import ServiceProcess

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def fuzzed_server(tiny_model_dir, artifacts):
    """The tiny model only, small limits: generated requests may register and unload models."""
    server = ServiceProcess(
        "--model", f"tiny={tiny_model_dir}", "--max-batch", "4", "--max-waiting", "8", "--queue-timeout", "5",
        log_path=artifacts / "schemathesis_server.log",
    )
    yield server
    server.stop()


def test_no_generated_request_is_a_server_error(fuzzed_server):
    schema = schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case):
            response = case.call(base_url=fuzzed_server.url, timeout=60)
            tried.append(response.status_code)
            assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text[:300])
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}, response.text[:300]

        call()

    assert len(tried) >= EXAMPLES_PER_OPERATION  # the generator really ran
