"""/v1/ws over a real Hypercorn server with a real WebSocket client: streaming chat completions,
several per socket, cancellation, sessions, errors as events and keep-alive."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support import REPO, ServiceProcess

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
    request = dict(seed=1, model=SMOL, messages=QUESTION, temperature=0, max_tokens=24)
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
    request = dict(seed=1, model=SMOL, messages=QUESTION, temperature=0, max_tokens=12)
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
        request_id: rest_chat(api_server, seed=1, model=SMOL, messages=messages, temperature=0, max_tokens=20)["choices"][0]["message"]["content"]
        for request_id, messages in questions.items()
    }

    with open_socket(api_server) as socket:
        for request_id, messages in questions.items():
            send(socket, seed=1, type="chat.completion", id=request_id, model=SMOL, messages=messages, temperature=0, max_tokens=20)
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
        send(socket, seed=1, type="chat.completion", id="next", model=SMOL, messages=QUESTION, temperature=0, max_tokens=3)
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
    answer = rest_chat(api_server, seed=1, model=SMOL, messages=QUESTION, temperature=0, max_tokens=3)
    waited = time.monotonic() - asked

    assert (answer["choices"][0]["finish_reason"], waited < 20) == ("length", True)


def assert_error_event(event: dict, request_id: str | None, param: str | None = None, code: str | None = None) -> None:
    assert event["type"] == "error" and event["id"] == request_id, event
    assert set(event["error"]) == {"message", "type", "param", "code"} and event["error"]["message"], event
    assert (event["error"]["param"], event["error"]["code"]) == (param, code), event


def chat_message(**fields) -> str:
    return json.dumps({"max_tokens": 16, "seed": 1, "type": "chat.completion", "model": "tiny", "messages": QUESTION, **fields})


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
        (chat_message(id="x", session_id="sess_1"), "x", "session_id", "session_not_found"),
    ],
    ids=["invalid-json", "unknown-type", "missing-type", "missing-id", "temperature-5", "unknown-model", "no-messages",
         "cancel-unknown-id", "too-large", "unknown-session"],
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
    body = {"max_tokens": 16, "seed": 1, "model": "tiny", "messages": QUESTION, "temperature": 5}
    rest = httpx.post(f"{api_server.url}/v1/chat/completions", json=body, timeout=30).json()["error"]

    with open_socket(api_server) as socket:
        send(socket, type="chat.completion", id="x", **body)
        event = receive(socket)

    assert (event["status"], event["error"]) == (400, rest)


def test_a_second_request_with_an_id_in_flight_is_refused_and_the_first_runs_on(api_server):
    with open_socket(api_server) as socket:
        send(socket, type="chat.completion", id="a", **LONG)
        receive(socket)  # the role chunk
        send(socket, seed=1, type="chat.completion", id="a", model="tiny", messages=QUESTION, max_tokens=3)
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


def create_session(server, headers: dict | None = None, **fields) -> str:
    response = httpx.post(f"{server.url}/v1/sessions", json=fields, headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def stored_messages(server, session_id: str) -> list[tuple[int, str, str]]:
    response = httpx.get(f"{server.url}/v1/sessions/{session_id}", timeout=30)
    assert response.status_code == 200, response.text
    return [(message["turn"], message["role"], message["content"]) for message in response.json()["messages"]]


def sse_usage(server, **body) -> dict:
    """Streams a chat completion over SSE to its end and returns its usage."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        payloads = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    return payloads[-1]["usage"]


def test_a_session_over_the_socket_keeps_the_same_turns_as_over_sse(api_server):
    over_sse = create_session(api_server, system_prompt="Answer in one short sentence.")
    over_socket = create_session(api_server, system_prompt="Answer in one short sentence.")
    questions = ["My name is Ada. What is the capital of France?", "What is my name?"]
    sse_usages, socket_usages = [], []

    with open_socket(api_server) as socket:
        for turn, question in enumerate(questions):
            request = dict(seed=1, model=SMOL, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=24)
            sse_usages.append(counts(sse_usage(api_server, session_id=over_sse, **request)))
            send(socket, type="chat.completion", id=f"turn-{turn}", session_id=over_socket, **request)
            socket_usages.append(counts(events_until_ended(socket, [f"turn-{turn}"])[f"turn-{turn}"][-1]["usage"]))

    remembered = stored_messages(api_server, over_socket)
    # The second prompt holds the first turn: the socket read the history as well as saving it.
    assert (remembered, socket_usages) == (stored_messages(api_server, over_sse), sse_usages)
    assert [role for _, role, _ in remembered] == ["system", "user", "assistant", "user", "assistant"]


def test_the_answer_a_session_keeps_is_the_text_the_socket_streamed(api_server):
    session_id = create_session(api_server)
    with open_socket(api_server) as socket:
        send(socket, type="chat.completion", id="q", session_id=session_id, model=SMOL, messages=QUESTION, max_tokens=16, seed=3)
        events = events_until_ended(socket, ["q"])["q"]

    assert (events[-1]["type"], stored_messages(api_server, session_id)) == (
        "done", [(1, "user", QUESTION[0]["content"]), (1, "assistant", text_of(events))]
    )


def test_a_cancelled_request_leaves_its_session_as_it_was(api_server):
    session_id = create_session(api_server, system_prompt="Be brief.")
    before = stored_messages(api_server, session_id)
    with open_socket(api_server) as socket:
        send(socket, type="chat.completion", id="long", session_id=session_id, **LONG)
        wait_until_streaming(socket, ["long"])
        send(socket, type="cancel", id="long")
        ending = events_until_ended(socket, ["long"])["long"][-1]

    assert (ending["type"], stored_messages(api_server, session_id)) == ("cancelled", before)


def test_a_session_deleted_while_answering_ends_the_request_with_session_not_found(api_server):
    session_id = create_session(api_server)
    with open_socket(api_server) as socket:
        send(socket, seed=1, type="chat.completion", id="q", session_id=session_id, model=SMOL, messages=QUESTION,
             max_tokens=200, ignore_eos=True, temperature=0)
        wait_until_streaming(socket, ["q"])
        assert httpx.delete(f"{api_server.url}/v1/sessions/{session_id}", timeout=30).status_code == 200
        events = events_until_ended(socket, ["q"])["q"]

    assert_error_event(events[-1], "q", "session_id", "session_not_found")
    assert events[-1]["status"] == 404 and text_of(events)


OWNER_KEY, STRANGER_KEY = "sk-test-ws-owner", "sk-test-ws-stranger"


@pytest.fixture(scope="module")
def keyed_server(tiny_model_dir, artifacts, tmp_path_factory):
    server = ServiceProcess(
        "--model", f"tiny={tiny_model_dir}", "--models-dir", str(tmp_path_factory.mktemp("models")),
        "--api-key", OWNER_KEY, "--api-key", STRANGER_KEY, log_path=artifacts / "ws_keyed_server.log",
    )
    yield server
    server.stop()


def test_a_socket_reaches_only_the_sessions_of_its_own_key(keyed_server):
    session_id = create_session(keyed_server, headers={"Authorization": f"Bearer {OWNER_KEY}"})
    request = dict(seed=1, type="chat.completion", session_id=session_id, model="tiny", messages=QUESTION, max_tokens=4)
    endings = {}
    for key in (STRANGER_KEY, OWNER_KEY):
        with open_socket(keyed_server, additional_headers={"Authorization": f"Bearer {key}"}) as socket:
            send(socket, id=key, **request)
            endings[key] = events_until_ended(socket, [key])[key][-1]

    assert_error_event(endings[STRANGER_KEY], STRANGER_KEY, "session_id", "session_not_found")
    assert endings[OWNER_KEY]["type"] == "done"


def metric_value(server, name: str, model: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_socket_generations_are_counted_in_the_metrics(api_server):
    before = metric_value(api_server, "llm_time_to_first_token_seconds_count", "tiny")
    tokens_before = metric_value(api_server, "llm_generation_tokens_total", "tiny")
    with open_socket(api_server) as socket:
        socket.send(chat_message(id="counted", max_tokens=5, ignore_eos=True))
        done = events_until_ended(socket, ["counted"])["counted"][-1]
    assert done["type"] == "done"
    assert metric_value(api_server, "llm_time_to_first_token_seconds_count", "tiny") == before + 1
    assert metric_value(api_server, "llm_generation_tokens_total", "tiny") == tokens_before + 5


@pytest.fixture(scope="module")
def rate_limited_server(tiny_model_dir, artifacts, tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("ws-keys") / "keys.json"
    result = subprocess.run(
        [sys.executable, "-m", "service", "keys", "--keys-file", str(keys_file), "create", "--name", "ws", "--rpm", "3"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    server = ServiceProcess(
        "--model", f"tiny={tiny_model_dir}", "--models-dir", str(tmp_path_factory.mktemp("models")),
        "--keys-file", str(keys_file), log_path=artifacts / "ws_rate_limited_server.log",
    )
    yield server, result.stdout.strip()
    server.stop()


def test_requests_per_minute_count_each_chat_on_a_socket_not_only_its_handshake(rate_limited_server):
    server, key = rate_limited_server
    endings = []
    with open_socket(server, additional_headers={"Authorization": f"Bearer {key}"}) as socket:
        for number in range(4):  # the handshake pays for the first; rpm 3 allows two more
            socket.send(chat_message(id=f"r{number}", max_tokens=2))
            endings.append(events_until_ended(socket, [f"r{number}"])[f"r{number}"][-1])
    assert [ending["type"] for ending in endings] == ["done", "done", "done", "error"]
    assert_error_event(endings[3], "r3", None, "requests_per_minute")
    assert endings[3]["status"] == 429


def test_a_draining_server_refuses_new_socket_requests_and_finishes_the_running_one(smollm2_model_dir, artifacts):
    server = ServiceProcess(
        "--model", f"{SMOL}={smollm2_model_dir}", "--max-context", "1024", "--drain-seconds", "60",
        log_path=artifacts / "ws_drain.log",
    )
    try:
        with open_socket(server) as socket:
            send(socket, type="chat.completion", id="running", **{**LONG, "max_tokens": 400})
            wait_until_streaming(socket, ["running"])
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            send(socket, seed=1, type="chat.completion", id="late", model=SMOL, messages=QUESTION, max_tokens=2)
            events = events_until_ended(socket, ["running", "late"], timeout=180)
        exit_code = server.process.wait(60)
    finally:
        server.stop()
    assert_error_event(events["late"][-1], "late", None, "draining")
    assert events["late"][-1]["status"] == 503
    assert events["running"][-1]["type"] == "done" and events["running"][-1]["usage"]["completion_tokens"] == 400
    assert exit_code == 0
