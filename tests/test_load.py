"""Load and misbehaving clients on a real server: 64 concurrent streams end either complete or
refused with an intended 429/503, clients that vanish mid-stream cost nothing, and the server
is idle and answering afterwards. Bounded in count and time; loopback only."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.support import ServiceProcess
from tests.test_api import QUESTION, chat
from tests.test_observability import scrape, value

CLIENTS = 64


@pytest.fixture(scope="module")
def busy_server(tiny_model_dir, artifacts):
    server = ServiceProcess(
        "--model", f"tiny={tiny_model_dir}", "--max-batch", "8", "--max-waiting", "24", "--queue-timeout", "20",
        log_path=artifacts / "load_server.log",
    )
    yield server
    server.stop()


async def stream_once(client: httpx.AsyncClient, url: str, index: int) -> tuple[int, str | None, str]:
    """(status, finish reason or error code, last SSE data) of one streaming chat."""
    body = {"model": "tiny", "messages": QUESTION, "max_tokens": 40, "ignore_eos": True, "stream": True, "seed": index}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            error = json.loads(await response.aread())["error"]
            return response.status_code, error["code"], ""
        finish, last = None, ""
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                last = line[6:]
                if last != "[DONE]":
                    chunk = json.loads(last)
                    if chunk["choices"] and chunk["choices"][0]["finish_reason"]:
                        finish = chunk["choices"][0]["finish_reason"]
        return 200, finish, last


def test_sixty_four_concurrent_streams_complete_or_are_refused_as_intended(busy_server):
    async def all_clients():
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            return await asyncio.gather(*(stream_once(client, busy_server.url, index) for index in range(CLIENTS)))

    results = asyncio.run(asyncio.wait_for(all_clients(), 300))
    completed = [result for result in results if result[0] == 200]
    refused = [result for result in results if result[0] != 200]

    assert all(result[1] == "length" and result[2] == "[DONE]" for result in completed), completed
    assert all((status, code) in {(429, "server_busy"), (503, "queue_timeout")} for status, code, _ in refused), refused
    assert len(completed) >= 8 + 24  # every slot and every waiting place served
    samples = scrape(busy_server.url)
    assert value(samples, "llm_num_requests_running", model="tiny") == 0
    assert value(samples, "llm_num_requests_waiting", model="tiny") == 0
    assert chat(busy_server, seed=1, model="tiny", messages=QUESTION, max_tokens=3).status_code == 200


def test_clients_that_vanish_mid_stream_leave_the_server_idle_and_answering(busy_server):
    async def vanish(client: httpx.AsyncClient) -> None:
        body = {"seed": 1, "model": "tiny", "messages": QUESTION, "max_tokens": 200, "ignore_eos": True, "stream": True}
        async with client.stream("POST", f"{busy_server.url}/v1/chat/completions", json=body) as response:
            async for _ in response.aiter_lines():
                break  # gone after the first line

    async def many():
        async with httpx.AsyncClient(timeout=60) as client:
            await asyncio.gather(*(vanish(client) for _ in range(16)))

    asyncio.run(asyncio.wait_for(many(), 120))
    # Every slot was given back: eight requests at once are admitted without waiting for a timeout.
    async def eight():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(stream_once(client, busy_server.url, index) for index in range(8)))

    results = asyncio.run(asyncio.wait_for(eight(), 60))
    assert all(status == 200 and finish == "length" for status, finish, _ in results), results
