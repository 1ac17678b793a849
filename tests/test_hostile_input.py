"""Hostile and malformed requests on a real server: each gets a 4xx in the OpenAI envelope,
never a 5xx, a hang or a dropped connection, and the server keeps answering."""

from __future__ import annotations

import httpx
import pytest

from tests.test_api import QUESTION, SMOL, chat

ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/sessions"]
BODIES = {
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "invalid utf-8": b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "huge number": b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1' + b"0" * 400 + b"}",
    "float max_tokens": b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e308}',
    "nan temperature": b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    "not an object": b'"just a string"',
    "null bytes": b'{"model": "tiny\x00", "messages": []}',
    "duplicate keys": b'{"model": "tiny", "model": 5, "messages": [{"role": "user", "content": "hi"}]}',
    "truncated": b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"',
}


def post_raw(server, route: str, body: bytes, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(f"{server.url}{route}", content=body, headers={"Content-Type": content_type}, timeout=60)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", list(BODIES))
def test_malformed_bodies_are_client_errors_in_the_envelope(api_server, route, name):
    response = post_raw(api_server, route, BODIES[name])

    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
def test_a_form_or_text_body_is_a_client_error(api_server, content_type):
    response = post_raw(api_server, "/v1/chat/completions", b"model=tiny&messages=hi", content_type)

    assert 400 <= response.status_code < 500 and response.json()["error"]["message"]


def test_an_oversized_body_is_a_413_and_the_server_keeps_answering(api_server):
    huge = b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"a" * (3 * 1024 * 1024) + b'"}]}'
    response = post_raw(api_server, "/v1/chat/completions", huge)

    assert response.status_code == 413 and response.json()["error"]["message"]
    assert chat(api_server, seed=1, model="tiny", messages=QUESTION, max_tokens=2).status_code == 200


def test_unicode_edge_cases_in_content_are_answered(api_server):
    content = "\u202e\u200b\ufeff" + "🧑‍🚀" * 20 + "\U0010ffff" + "a\u0301" * 20 + "\x00\x07"
    response = chat(api_server, seed=1, model=SMOL, messages=[{"role": "user", "content": content}], max_tokens=3)

    assert response.status_code == 200
