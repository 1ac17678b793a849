"""/v1/ws over a real Hypercorn server with a real WebSocket client: streaming chat completions,
several per socket, cancellation, errors as events and keep-alive."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

SMOL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# Runs for minutes unless stopped: the engine is busy with it until it is cancelled.
LONG = dict(model=SMOL, messages=[{"role": "user", "content": "Write a very long story."}], max_tokens=900,
            ignore_eos=True, temperature=1.0, seed=1)
SLOTS = 8  # the engine's default --max-batch, which the api_server fixture keeps
ENDINGS = ("done", "cancelled", "error")


@contextmanager
def open_socket(server, **options):
    with connect(server.url.replace("http://", "ws://", 1) + "/v1/ws", open_timeout=30, **options) as socket:
        yield socket


def send(socket: ClientConnection, **message) -> None:
    socket.send(json.dumps(message))


def receive(socket: ClientConnection, timeout: float = 120) -> dict:
    return json.loads(socket.recv(timeout=timeout))


def events_until_ended(socket: ClientConnection, ids: list[str], timeout: float = 120) -> dict[str, list[dict]]:
    """Every event of each request, read until each has ended; an event for any other id fails."""
    events: dict[str, list[dict]] = {request_id: [] for request_id in ids}
    running = set(ids)
    while running:
        event = receive(socket, timeout)
        assert event.get("id") in running, f"unexpected event {event} while waiting for {sorted(running)}"
        events[event["id"]].append(event)
        if event["type"] in ENDINGS:
            running.discard(event["id"])
    return events


def wait_until_streaming(socket: ClientConnection, ids: list[str]) -> None:
    """Reads events until each request has sent one: a request streams once it has a slot."""
    waiting = set(ids)
    while waiting:
        waiting.discard(receive(socket)["id"])


def text_of(events: list[dict]) -> str:
    chunks = [event["chunk"] for event in events if event["type"] == "chat.completion.chunk"]
    return "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)


def rest_chat(server, **body) -> dict:
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def counts(usage: dict) -> tuple[int, int, int]:
    return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]


def test_a_greedy_chat_over_the_socket_equals_the_rest_answer_and_its_usage(api_server):
    request = dict(model=SMOL, messages=QUESTION, temperature=0, max_tokens=24)
    rest = rest_chat(api_server, **request)

    with open_socket(api_server) as socket:
        send(socket, type="chat.completion", id="q1", **request)
        events = events_until_ended(socket, ["q1"])["q1"]

    done = events[-1]
    assert (text_of(events), done["type"], done["finish_reasons"], counts(done["usage"])) == (
        rest["choices"][0]["message"]["content"],
        "done",
        [rest["choices"][0]["finish_reason"]],
        counts(rest["usage"]),
    )


def test_the_socket_sends_the_same_chunks_as_the_sse_stream(api_server):
    request = dict(model=SMOL, messages=QUESTION, temperature=0, max_tokens=12)
    with httpx.stream("POST", f"{api_server.url}/v1/chat/completions", json={**request, "stream": True}, timeout=120) as response:
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    sse_chunks = [json.loads(line) for line in lines if line != "[DONE]"]

    with open_socket(api_server) as socket:
        send(socket, type="chat.completion", id="c", **request)
        socket_chunks = [event["chunk"] for event in events_until_ended(socket, ["c"])["c"][:-1]]

    def shape(chunks: list[dict]) -> list:
        return [(chunk["object"], chunk["model"], chunk["choices"]) for chunk in chunks]

    assert shape(socket_chunks) == shape(sse_chunks)


def test_two_requests_on_one_socket_run_at_once_and_each_gets_its_own_answer(api_server):
    questions = {
        "france": [{"role": "user", "content": "What is the capital of France?"}],
        "colour": [{"role": "user", "content": "What colour is the sky on a clear day?"}],
    }
    expected = {
        request_id: rest_chat(api_server, model=SMOL, messages=messages, temperature=0, max_tokens=20)["choices"][0]["message"]["content"]
        for request_id, messages in questions.items()
    }

    with open_socket(api_server) as socket:
        for request_id, messages in questions.items():
            send(socket, type="chat.completion", id=request_id, model=SMOL, messages=messages, temperature=0, max_tokens=20)
        events = events_until_ended(socket, list(questions))

    assert {request_id: (text_of(events[request_id]), events[request_id][-1]["type"]) for request_id in questions} == {
        request_id: (text, "done") for request_id, text in expected.items()
    }


def test_cancel_stops_requests_at_once_and_frees_the_engine_for_the_next_one(api_server):
    running = [f"long-{index}" for index in range(SLOTS)]
    with open_socket(api_server) as socket:
        for request_id in running:
            send(socket, type="chat.completion", id=request_id, **LONG)
        wait_until_streaming(socket, running)
        asked = time.monotonic()
        for request_id in running:
            send(socket, type="cancel", id=request_id)
        endings = {request_id: events[-1] for request_id, events in events_until_ended(socket, running).items()}
        cancelled_after = time.monotonic() - asked
        # Were the cancelled requests still running, this one would wait minutes for a slot.
        send(socket, type="chat.completion", id="next", model=SMOL, messages=QUESTION, temperature=0, max_tokens=3)
        following = events_until_ended(socket, ["next"])["next"][-1]
        answered_after = time.monotonic() - asked

    assert endings == {request_id: {"type": "cancelled", "id": request_id} for request_id in running}
    assert (cancelled_after < 5, following["type"], answered_after < 20) == (True, "done", True)


def test_closing_the_socket_mid_stream_frees_every_slot_of_the_engine(api_server):
    with open_socket(api_server) as socket:
        for index in range(SLOTS):
            send(socket, type="chat.completion", id=f"long-{index}", **LONG)
        wait_until_streaming(socket, [f"long-{index}" for index in range(SLOTS)])
    # Were the long requests still running, this one would wait minutes for a slot.
    asked = time.monotonic()
    answer = rest_chat(api_server, model=SMOL, messages=QUESTION, temperature=0, max_tokens=3)
    waited = time.monotonic() - asked

    assert (answer["choices"][0]["finish_reason"], waited < 20) == ("length", True)


def assert_error_event(event: dict, request_id: str | None, param: str | None = None, code: str | None = None) -> None:
    assert event["type"] == "error" and event["id"] == request_id, event
    assert set(event["error"]) == {"message", "type", "param", "code"} and event["error"]["message"], event
    assert (event["error"]["param"], event["error"]["code"]) == (param, code), event


def chat_message(**fields) -> str:
    return json.dumps({"type": "chat.completion", "model": "tiny", "messages": QUESTION, **fields})


@pytest.mark.parametrize(
    "message, request_id, param, code",
    [
        ('{"type": "chat.completion", "id": "x", ', None, None, "invalid_json"),
        ('{"type": "translate", "id": "x"}', "x", "type", "unknown_message_type"),
        ('{"id": "x", "model": "tiny"}', None, "type", "invalid_value"),
        (chat_message(), None, "id", "invalid_value"),
        (chat_message(id="x", temperature=5), "x", "temperature", "invalid_value"),
        (chat_message(id="x", model="no-such-model"), "x", "model", "model_not_found"),
        (chat_message(id="x", messages=[]), "x", "messages", "invalid_value"),
        ('{"type": "cancel", "id": "never-sent"}', "never-sent", "id", "request_not_found"),
        (json.dumps({"type": "ping", "padding": "x" * (1024 * 1024)}), None, None, "message_too_large"),
        (chat_message(id="x", session_id="sess_1"), "x", "session_id", "unsupported_parameter"),
    ],
    ids=["invalid-json", "unknown-type", "missing-type", "missing-id", "temperature-5", "unknown-model", "no-messages",
         "cancel-unknown-id", "too-large", "session-id"],
)
def test_a_bad_message_is_answered_with_an_error_event_and_the_socket_stays_open(api_server, message, request_id, param, code):
    with open_socket(api_server) as socket:
        socket.send(message)
        error = receive(socket)
        send(socket, type="ping")
        after = receive(socket)

    assert_error_event(error, request_id, param, code)
    assert after == {"type": "pong", "id": None}


def test_validation_errors_read_as_the_rest_api_words_them(api_server):
    body = {"model": "tiny", "messages": QUESTION, "temperature": 5}
    rest = httpx.post(f"{api_server.url}/v1/chat/completions", json=body, timeout=30).json()["error"]

    with open_socket(api_server) as socket:
        send(socket, type="chat.completion", id="x", **body)
        event = receive(socket)

    assert (event["status"], event["error"]) == (400, rest)


def test_a_second_request_with_an_id_in_flight_is_refused_and_the_first_runs_on(api_server):
    with open_socket(api_server) as socket:
        send(socket, type="chat.completion", id="a", **LONG)
        receive(socket)  # the role chunk
        send(socket, type="chat.completion", id="a", model="tiny", messages=QUESTION, max_tokens=3)
        event = receive(socket)
        while event["type"] == "chat.completion.chunk":
            event = receive(socket)
        send(socket, type="cancel", id="a")
        ending = events_until_ended(socket, ["a"])["a"][-1]

    assert_error_event(event, "a", "id", "duplicate_id")
    assert ending == {"type": "cancelled", "id": "a"}


def test_a_socket_runs_at_most_sixteen_requests_at_once(api_server):
    with open_socket(api_server) as socket:
        for index in range(17):
            send(socket, type="chat.completion", id=f"r{index}", **LONG)
        event = receive(socket)
        while event["type"] != "error":
            event = receive(socket)

    assert_error_event(event, "r16", None, "too_many_requests")


def test_ping_is_answered_with_pong_carrying_its_id(api_server):
    with open_socket(api_server) as socket:
        send(socket, type="ping", id="p-1")
        answer = receive(socket, timeout=5)
        protocol_pong = socket.ping()
        answered = protocol_pong.wait(timeout=5)

    assert (answer, answered) == ({"type": "pong", "id": "p-1"}, True)


def test_a_page_from_a_foreign_origin_is_refused_and_a_loopback_page_is_served(api_server):
    with pytest.raises(InvalidStatus) as refused:
        with open_socket(api_server, origin="https://evil.example"):
            pass
    with open_socket(api_server, origin="http://localhost:5173") as socket:
        send(socket, type="ping")
        answer = receive(socket, timeout=5)

    assert (refused.value.response.status_code, answer["type"]) == (403, "pong")
