"""The HTTP API over a real Hypercorn server on loopback: chat, streaming, probes and errors."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from service.engine.model_folder import ModelFolder
from tests.support import ServiceProcess

SMOL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def chat(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)


def sse_payloads(response: httpx.Response) -> list:
    """The data of each SSE event, JSON-decoded except the final [DONE]."""
    events = [block for block in response.text.split("\n\n") if block.strip()]
    assert all(event.startswith("data: ") for event in events), events
    return [event[6:] if event[6:] == "[DONE]" else json.loads(event[6:]) for event in events]


def assert_error(response: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def test_livez_and_readyz_answer_ok_once_models_are_loaded(api_server):
    assert httpx.get(f"{api_server.url}/livez").status_code == 200
    ready = httpx.get(f"{api_server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {"tiny": "ready", SMOL: "ready"}


def test_readyz_is_503_while_the_model_is_still_converting(smollm2_gguf, artifacts, tmp_path):
    server = ServiceProcess(
        "--model", str(smollm2_gguf), "--models-dir", str(tmp_path), log_path=artifacts / "readyz.log", wait_ready=False
    )
    try:
        early = httpx.get(f"{server.url}/readyz")
        server.wait_ready(300)
        late = httpx.get(f"{server.url}/readyz")
    finally:
        server.stop()
    assert (early.status_code, early.json()["status"], late.status_code) == (503, "loading", 200)


def test_models_lists_every_model_with_its_status(api_server):
    body = httpx.get(f"{api_server.url}/v1/models").json()
    assert body["object"] == "list"
    assert {(model["id"], model["object"], model["status"]) for model in body["data"]} == {
        ("tiny", "model", "ready"),
        (SMOL, "model", "ready"),
    }


def test_chat_completion_answers_with_real_smollm2_output(api_server):
    response = chat(api_server, max_tokens=16, seed=1, model=SMOL, messages=QUESTION, temperature=0)
    body = response.json()
    assert response.status_code == 200 and body["object"] == "chat.completion"
    assert "Paris" in body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "stop"


def test_usage_counts_the_templated_prompt_and_the_generated_tokens(api_server, smollm2_model_dir):
    folder = ModelFolder.load(smollm2_model_dir)
    expected_prompt = len(folder.encode(folder.chat_template.render(QUESTION)))

    usage = chat(api_server, seed=1, model=SMOL, messages=QUESTION, temperature=0, max_tokens=3).json()["usage"]

    counts = {key: usage[key] for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert counts == {"prompt_tokens": expected_prompt, "completion_tokens": 3, "total_tokens": expected_prompt + 3}


def test_max_tokens_ends_the_answer_with_finish_reason_length(api_server):
    choice = chat(api_server, seed=1, model="tiny", messages=QUESTION, max_tokens=5, temperature=0).json()["choices"][0]
    assert choice["finish_reason"] == "length"


def test_same_seed_gives_the_same_sampled_answer(api_server):
    request = dict(model=SMOL, messages=QUESTION, temperature=1.0, top_p=0.9, seed=1234, max_tokens=24)
    first = chat(api_server, **request).json()["choices"][0]["message"]["content"]
    second = chat(api_server, **request).json()["choices"][0]["message"]["content"]
    assert first == second


def test_streamed_answer_equals_the_whole_answer(api_server):
    request = dict(seed=1, model=SMOL, messages=QUESTION, temperature=0, max_tokens=40)
    whole = chat(api_server, **request).json()["choices"][0]["message"]["content"]

    streamed = chat(api_server, stream=True, stream_options={"include_usage": True}, **request)
    payloads = sse_payloads(streamed)

    assert streamed.headers["content-type"].startswith("text/event-stream")
    chunks = payloads[:-1]
    assert payloads[-1] == "[DONE]" and all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"])
    finish = [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"]]
    assert text == whole and finish[-1] in ("stop", "length") and chunks[-1]["usage"]["completion_tokens"] > 1


def test_a_client_that_disconnects_frees_the_model_for_the_next_request(api_server):
    with httpx.stream(
        "POST",
        f"{api_server.url}/v1/chat/completions",
        json={"model": SMOL, "messages": [{"role": "user", "content": "Write a very long story."}], "stream": True,
              "max_tokens": 900, "temperature": 1.0, "seed": 1},
        timeout=60,
    ) as stream:
        lines = stream.iter_lines()
        for _ in range(4):
            next(lines)
    started = time.monotonic()
    answer = chat(api_server, seed=1, model=SMOL, messages=QUESTION, temperature=0, max_tokens=4)
    # 900 tokens would take several seconds; a cancelled request gives the engine back at once.
    assert answer.status_code == 200 and time.monotonic() - started < 5


def test_official_openai_client_chats_and_streams(api_server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{api_server.url}/v1", api_key="unused")
    whole = client.chat.completions.create(seed=1, model=SMOL, messages=QUESTION, temperature=0, max_tokens=12)
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(seed=1, model=SMOL, messages=QUESTION, temperature=0, max_tokens=12, stream=True)
        if chunk.choices
    ]
    assert whole.choices[0].message.content == "".join(pieces) and "Paris" in whole.choices[0].message.content


def test_official_openai_client_completes_text_with_logprobs_and_lists_models(api_server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{api_server.url}/v1", api_key="unused")
    completion = client.completions.create(seed=1, model=SMOL, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2)
    streamed = "".join(
        chunk.choices[0].text
        for chunk in client.completions.create(seed=1, model=SMOL, prompt="The capital of France is", max_tokens=4, temperature=0, stream=True)
        if chunk.choices
    )
    scored = client.completions.create(seed=1, model=SMOL, prompt="The capital of France is Paris", max_tokens=0, echo=True, logprobs=0)

    assert "Paris" in completion.choices[0].text and completion.choices[0].text == streamed
    assert len(completion.choices[0].logprobs.top_logprobs[0]) == 2
    assert scored.choices[0].logprobs.token_logprobs[0] is None and all(value < 0 for value in scored.choices[0].logprobs.token_logprobs[1:])
    assert {model.id for model in client.models.list()} == {"tiny", SMOL}


def test_cors_allows_the_spa_on_another_loopback_port(api_server):
    response = httpx.options(
        f"{api_server.url}/v1/chat/completions",
        headers={"Origin": "http://127.0.0.1:8080", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"},
    )
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == "http://127.0.0.1:8080"


# Unhappy paths: each gets the OpenAI error envelope with the right status.


def test_malformed_json_is_a_400(api_server):
    response = httpx.post(f"{api_server.url}/v1/chat/completions", content=b'{"model": "tiny", "messages": [',
                          headers={"content-type": "application/json"})
    assert_error(response, 400, code="invalid_json")


def test_empty_body_is_a_400(api_server):
    assert_error(httpx.post(f"{api_server.url}/v1/chat/completions"), 400, code="invalid_json")


def test_missing_messages_is_a_400_naming_the_field(api_server):
    assert_error(chat(api_server, model="tiny"), 400, param="messages")


def test_empty_messages_is_a_400(api_server):
    assert_error(chat(api_server, max_tokens=16, seed=1, model="tiny", messages=[]), 400, param="messages")


def test_unknown_model_is_a_404(api_server):
    assert_error(chat(api_server, max_tokens=16, seed=1, model="no-such-model", messages=QUESTION), 404, param="model", code="model_not_found")


@pytest.mark.parametrize(
    "override, param",
    [
        ({"model": 7}, "model"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"min_p": 1.5}, "min_p"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"n": 17}, "n"),
        ({"stop": ["a"] * 17}, "stop"),
        ({"stop": [""]}, "stop[0]"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"999999": 1}}, "logit_bias"),
        ({"logit_bias": {"hello": 1}}, "logit_bias"),
        ({"top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_wrong_types_and_ranges_are_400s_naming_the_field(api_server, override, param):
    body = {"max_tokens": 16, "seed": 1, "model": "tiny", "messages": QUESTION, **override}
    assert_error(chat(api_server, **body), 400, param=param)


def test_a_prompt_longer_than_the_context_is_a_400(api_server):
    long_text = "hello world " * 400  # the tiny model's context is 256 tokens
    response = chat(api_server, max_tokens=16, seed=1, model="tiny", messages=[{"role": "user", "content": long_text}])
    assert_error(response, 400, code="context_length_exceeded")


def test_max_tokens_past_the_context_is_a_400(api_server):
    assert_error(chat(api_server, seed=1, model="tiny", messages=QUESTION, max_tokens=10_000), 400, code="context_length_exceeded")


def test_unknown_routes_and_methods_use_the_envelope(api_server):
    assert_error(httpx.get(f"{api_server.url}/v1/nothing"), 404)
    assert_error(httpx.get(f"{api_server.url}/v1/chat/completions"), 405)


def test_unknown_model_id_on_the_model_route_is_a_404(api_server):
    assert_error(httpx.get(f"{api_server.url}/v1/models/nope"), 404, code="model_not_found")
