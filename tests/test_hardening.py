"""Defects an outside probe found (issue 17), each kept fixed by a test against a real server:
hostile searches, input that once gave 500s, clients that leave, a full disk, cross-site pages."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from websockets.sync.client import connect

from tests.support import ServiceProcess
from tests.test_api import assert_error

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, "seed": 1}


@pytest.fixture(scope="module")
def server(tiny_model_dir, artifacts):
    process = ServiceProcess("--model", f"tiny={tiny_model_dir}", log_path=artifacts / "hardening_server.log")
    yield process
    process.stop()


def create_session(server, **body) -> dict:
    response = httpx.post(f"{server.url}/v1/sessions", json=body, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


# 1. One search must not block everyone.


def test_a_search_through_a_long_session_is_quick_and_never_holds_up_other_reads(server):
    create_session(server, system_prompt="w " * 8000)
    other = create_session(server, title="read meanwhile")["id"]
    searched: dict[str, object] = {}

    def search() -> None:
        started = time.monotonic()
        searched["response"] = httpx.get(f"{server.url}/v1/sessions", params={"q": "w " * 10}, timeout=60)
        searched["seconds"] = time.monotonic() - started

    searching = threading.Thread(target=search)
    searching.start()
    time.sleep(0.2)
    started = time.monotonic()
    read = httpx.get(f"{server.url}/v1/sessions/{other}", timeout=60)
    read_seconds = time.monotonic() - started
    searching.join(120)

    assert read.status_code == 200 and read_seconds < 2, read_seconds
    assert searched["response"].status_code == 200 and searched["seconds"] < 5, searched
    assert "**w**" in searched["response"].json()["data"][0]["snippet"]


def test_a_search_with_too_many_words_is_a_400(server):
    response = httpx.get(f"{server.url}/v1/sessions", params={"q": " ".join(f"word{index}" for index in range(17))}, timeout=30)
    assert_error(response, 400, param="q", code="query_too_long")


# 2. Input that used to give 500s.


def test_a_limit_of_unicode_digits_is_a_400(server):
    assert_error(httpx.get(f"{server.url}/v1/sessions?limit=%C2%B2", timeout=30), 400, param="limit")


@pytest.mark.parametrize("key", ["²", "١٢", "-0", "+1", " 1"])
def test_a_logit_bias_key_that_is_not_ascii_digits_is_a_400(server, key):
    response = httpx.post(f"{server.url}/v1/chat/completions", json={**CHAT, "logit_bias": {key: 1}}, timeout=60)
    assert_error(response, 400, param="logit_bias")


def test_a_logit_bias_key_of_unicode_digits_is_an_error_event_over_the_websocket(server):
    with connect(server.url.replace("http://", "ws://", 1) + "/v1/ws", open_timeout=30) as socket:
        socket.send(json.dumps({"type": "chat.completion", "id": "a", **CHAT, "logit_bias": {"²": 1}}))
        event = json.loads(socket.recv(timeout=60))
    assert event["type"] == "error" and event["status"] == 400 and event["error"]["param"] == "logit_bias", event


# 12. A search without words.


@pytest.mark.parametrize("query", [" ", "\x00", " \x00\t "])
def test_a_search_of_only_whitespace_or_nul_matches_nothing(server, query):
    create_session(server, system_prompt="something to find")
    response = httpx.get(f"{server.url}/v1/sessions", params={"q": query}, timeout=30)
    assert response.status_code == 200 and response.json()["data"] == [], response.text
