"""Chat sessions over a real server: the /v1/sessions resource, chat completions that use and
extend a session's history, its memory limit, search, and history that survives restarts and
kills. A few store-level tests cover what HTTP cannot reach yet (owners, schema versions).

Every test but the kill test runs twice: against SQLite files (the default) and against PostgreSQL
(`--database-url`, a real server from tests/postgres_server.py), which must behave the same."""

from __future__ import annotations

import sqlite3
import uuid

import httpx
import psycopg
import pytest

from service.engine.model_folder import ModelFolder
from service.settings import Settings
from service.storage.backend import open_storage
from service.storage.errors import StorageError
from service.storage.session_store import NewMessage, SessionNotFound
from service.storage.sqlite_session_store import DATABASE_FILE
from tests.support import ServiceProcess
from tests.test_api import SMOL, assert_error, chat, sse_payloads

SYSTEM_PROMPT = "You are terse."
BACKENDS = ["sqlite", "postgres"]


def database_arguments(request, backend: str) -> tuple[str, ...]:
    """What makes a server keep its sessions in `backend`: nothing for SQLite, a new database."""
    if backend == "sqlite":
        return ()
    return ("--database-url", request.getfixturevalue("postgres_server").create_database())


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tiny_model_dir, smollm2_model_dir, artifacts, tmp_path_factory):
    """The tiny model and SmolLM2 over SQLite (the shared api_server) or over PostgreSQL."""
    if request.param == "sqlite":
        yield request.getfixturevalue("api_server")
        return
    process = ServiceProcess(
        "--model", f"tiny={tiny_model_dir}", "--model", f"{SMOL}={smollm2_model_dir}",
        "--models-dir", str(tmp_path_factory.mktemp("models")), "--max-context", "1024",
        *database_arguments(request, request.param),
        log_path=artifacts / "sessions_postgres_server.log",
    )
    yield process
    process.stop()


@pytest.fixture(params=BACKENDS)
def storage_settings(request, tmp_path) -> Settings:
    """Settings naming a fresh, empty store of each backend."""
    arguments = database_arguments(request, request.param)
    return Settings(data_dir=tmp_path, database_url=arguments[1] if arguments else None)


@pytest.fixture(scope="module")
def tiny_folder(tiny_model_dir) -> ModelFolder:
    return ModelFolder.load(tiny_model_dir)


def create_session(server, **body) -> dict:
    response = httpx.post(f"{server.url}/v1/sessions", json=body, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def get_session(server, session_id: str) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/sessions/{session_id}", timeout=30)


def list_sessions(server, **parameters) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/sessions", params=parameters, timeout=30)


def say(server, session_id: str, text: str, **options) -> dict:
    """One turn with the tiny model: a user message in, a short greedy answer out."""
    body = {"seed": 1, "model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 4, "temperature": 0, **options}
    response = chat(server, session_id=session_id, **body)
    assert response.status_code == 200, response.text
    return response.json()


def history(server, session_id: str) -> list[dict]:
    """The stored messages as chat messages."""
    messages = get_session(server, session_id).json()["messages"]
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def delete_last_turn(server, session_id: str, **options) -> httpx.Response:
    return httpx.delete(f"{server.url}/v1/sessions/{session_id}/turns/last", timeout=30, **options)


def prompt_tokens(folder: ModelFolder, messages: list[dict]) -> int:
    return len(folder.encode(folder.chat_template.render(messages)))


# The resource.


def test_create_answers_201_with_the_session_and_its_system_prompt(server):
    session = create_session(server, title="Trip", model="tiny", system_prompt=SYSTEM_PROMPT, max_turns=3,
                             metadata={"project": "atlas"})

    assert session["id"].startswith("sess_") and session["object"] == "session"
    assert {key: session[key] for key in ("title", "model", "max_turns", "max_tokens", "metadata")} == {
        "title": "Trip", "model": "tiny", "max_turns": 3, "max_tokens": None, "metadata": {"project": "atlas"}
    }
    assert [(message["role"], message["content"], message["turn"]) for message in session["messages"]] == [
        ("system", SYSTEM_PROMPT, 0)
    ]


def test_an_empty_body_creates_a_session_with_defaults(server):
    response = httpx.post(f"{server.url}/v1/sessions")
    assert response.status_code == 201 and response.json()["messages"] == [] and response.json()["max_turns"] is None


def test_get_returns_what_create_returned(server):
    session = create_session(server, title="Same", system_prompt=SYSTEM_PROMPT)
    assert get_session(server, session["id"]).json() == session


def test_list_is_newest_first_and_pages_with_the_after_cursor(server):
    ids = [create_session(server, title=f"page {index}")["id"] for index in range(3)]

    first = list_sessions(server, limit=2).json()
    second = list_sessions(server, limit=1, after=first["last_id"]).json()

    assert [session["id"] for session in first["data"]] == [ids[2], ids[1]] and first["has_more"]
    assert [session["id"] for session in second["data"]] == [ids[0]]


def test_the_after_cursor_still_works_once_its_session_is_deleted(server):
    older, cursor = create_session(server)["id"], create_session(server)["id"]
    httpx.delete(f"{server.url}/v1/sessions/{cursor}")
    assert list_sessions(server, limit=1, after=cursor).json()["data"][0]["id"] == older


def test_delete_removes_the_session_with_its_messages(server):
    session_id = create_session(server, system_prompt=SYSTEM_PROMPT)["id"]

    deleted = httpx.delete(f"{server.url}/v1/sessions/{session_id}")

    assert deleted.status_code == 200
    assert deleted.json() == {"id": session_id, "object": "session.deleted", "deleted": True}
    assert_error(get_session(server, session_id), 404, code="session_not_found")


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_an_unknown_session_id_is_a_404(server, method):
    response = httpx.request(method, f"{server.url}/v1/sessions/sess_0000nothing")
    assert_error(response, 404, code="session_not_found")


def test_a_chat_naming_an_unknown_session_is_a_404(server):
    response = chat(server, max_tokens=16, seed=1, model="tiny", messages=[{"role": "user", "content": "hi"}], session_id="sess_0000nothing")
    assert_error(response, 404, param="session_id", code="session_not_found")


@pytest.mark.parametrize(
    "body, param",
    [
        ({"title": 7}, "title"),
        ({"max_turns": -1}, "max_turns"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"system_prompt": ["a"]}, "system_prompt"),
        ({"metadata": {"key": 5}}, "metadata"),
        ({"metadata": {f"key{index}": "v" for index in range(17)}}, "metadata"),
    ],
)
def test_bad_create_bodies_are_400s_naming_the_field(server, body, param):
    assert_error(httpx.post(f"{server.url}/v1/sessions", json=body), 400, param=param)


def test_a_session_for_an_unknown_model_is_a_404(server):
    response = httpx.post(f"{server.url}/v1/sessions", json={"model": "no-such-model"})
    assert_error(response, 404, param="model", code="model_not_found")


@pytest.mark.parametrize("limit", ["0", "101", "ten", "-1"])
def test_a_bad_list_limit_is_a_400(server, limit):
    assert_error(list_sessions(server, limit=limit), 400, param="limit")


# Chat completions with a session.


def test_the_second_turn_is_prompted_with_the_first(server, tiny_folder):
    session_id = create_session(server, system_prompt=SYSTEM_PROMPT)["id"]
    say(server, session_id, "Remember the number forty two.")
    question = {"role": "user", "content": "Which number was it?"}
    expected = prompt_tokens(tiny_folder, history(server, session_id) + [question])

    usage = say(server, session_id, question["content"])["usage"]

    assert usage["prompt_tokens"] == expected


def test_the_history_holds_both_turns_in_order(server):
    session_id = create_session(server, system_prompt=SYSTEM_PROMPT)["id"]
    first = say(server, session_id, "First question.")["choices"][0]["message"]["content"]
    second = say(server, session_id, "Second question.")["choices"][0]["message"]["content"]

    messages = get_session(server, session_id).json()["messages"]

    assert [(message["turn"], message["role"], message["content"]) for message in messages] == [
        (0, "system", SYSTEM_PROMPT),
        (1, "user", "First question."),
        (1, "assistant", first),
        (2, "user", "Second question."),
        (2, "assistant", second),
    ]
    assert [message["position"] for message in messages] == [0, 1, 2, 3, 4]


def test_without_session_id_the_answer_is_the_same_as_before(server):
    body = dict(seed=1, model="tiny", messages=[{"role": "user", "content": "Hello there."}], max_tokens=6, temperature=0)
    plain = chat(server, **body).json()
    session_id = create_session(server)["id"]

    fresh_session = chat(server, session_id=session_id, **body).json()

    assert fresh_session["choices"][0]["message"] == plain["choices"][0]["message"]
    assert fresh_session["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]


def test_a_streamed_chat_appends_its_turn(server):
    session_id = create_session(server)["id"]

    response = chat(server, seed=1, model="tiny", messages=[{"role": "user", "content": "Stream please."}], max_tokens=6,
                    temperature=0, stream=True, session_id=session_id)
    chunks = [payload for payload in sse_payloads(response)[:-1] if payload.get("choices")]
    streamed = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)

    assert history(server, session_id) == [
        {"role": "user", "content": "Stream please."},
        {"role": "assistant", "content": streamed},
    ]


def test_a_stream_the_client_leaves_early_does_not_extend_the_history(server):
    session_id = create_session(server)["id"]
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=60, json={"seed": 1, 
        "model": SMOL, "messages": [{"role": "user", "content": "Write a very long story."}], "stream": True,
        "max_tokens": 900, "ignore_eos": True, "session_id": session_id,
    }) as stream:
        lines = stream.iter_lines()
        for _ in range(4):
            next(lines)
    # Answered only after the server has seen the disconnect (900 tokens would take many seconds).
    chat(server, seed=1, model=SMOL, messages=[{"role": "user", "content": "after"}], max_tokens=2)
    assert history(server, session_id) == []


def test_with_n_above_one_the_session_keeps_choice_zero(server):
    session_id = create_session(server)["id"]

    answer = say(server, session_id, "Pick one.", n=3, seed=5, temperature=1.0)

    assert history(server, session_id)[-1] == {"role": "assistant", "content": answer["choices"][0]["message"]["content"]}


def test_a_refused_chat_leaves_the_history_unchanged(server):
    session_id = create_session(server)["id"]
    say(server, session_id, "Kept.")
    before = history(server, session_id)

    refused = chat(server, seed=1, model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=10_000,
                   session_id=session_id)

    assert_error(refused, 400, code="context_length_exceeded")
    assert history(server, session_id) == before


# The memory limit.


def test_max_turns_keeps_the_system_prompt_and_only_the_newest_turns(server, tiny_folder):
    session_id = create_session(server, system_prompt=SYSTEM_PROMPT, max_turns=1)["id"]
    for text in ("Turn one.", "Turn two.", "Turn three."):
        say(server, session_id, text)
    stored = history(server, session_id)
    question = {"role": "user", "content": "Turn four."}
    # The system prompt and turn three (its question and answer); turns one and two are dropped.
    remembered = [stored[0], *stored[-2:]]

    usage = say(server, session_id, question["content"])["usage"]

    assert usage["prompt_tokens"] == prompt_tokens(tiny_folder, remembered + [question])
    assert len(stored) == 7  # dropped turns stay stored: the limit is on what the model sees


def test_max_turns_zero_remembers_only_the_system_prompt(server, tiny_folder):
    session_id = create_session(server, system_prompt=SYSTEM_PROMPT, max_turns=0)["id"]
    say(server, session_id, "Forget me.")
    question = {"role": "user", "content": "Anything?"}

    usage = say(server, session_id, question["content"])["usage"]

    assert usage["prompt_tokens"] == prompt_tokens(tiny_folder, [{"role": "system", "content": SYSTEM_PROMPT}, question])


def test_max_tokens_keeps_the_newest_turns_that_fit_in_it(server, tiny_folder):
    text = "the quick brown fox jumps over the lazy dog " * 3
    user_tokens = len(tiny_folder.tokenizer.encode(text, add_special_tokens=False).ids)
    # Two turns (two questions and two answers of at most a few tokens) fit; three do not.
    session_id = create_session(server, system_prompt=SYSTEM_PROMPT, max_tokens=2 * user_tokens + 12)["id"]
    for _ in range(3):
        say(server, session_id, text, max_tokens=3)
    stored = history(server, session_id)
    question = {"role": "user", "content": "Now?"}

    usage = say(server, session_id, question["content"])["usage"]

    # The system prompt (never counted) and turns two and three.
    assert usage["prompt_tokens"] == prompt_tokens(tiny_folder, [stored[0], *stored[-4:], question])


def test_a_long_history_is_trimmed_to_fit_the_context_never_refused(server, tiny_folder):
    # The tiny model's context is 256 tokens; each turn here takes about 70 of them.
    session_id = create_session(server)["id"]
    text = "hello world " * 7
    for _ in range(5):
        usage = say(server, session_id, text, max_tokens=8)["usage"]
    stored = history(server, session_id)[:-2]  # what the fifth request saw, before its turn
    question = {"role": "user", "content": text}
    newest_turns = [stored[2 * dropped :] for dropped in range(len(stored) // 2 + 1)]
    fitting = [kept for kept in newest_turns if prompt_tokens(tiny_folder, kept + [question]) + 8 <= 256]

    # The fewest oldest turns were dropped: the longest remembered history that leaves 8 tokens.
    assert usage["prompt_tokens"] == prompt_tokens(tiny_folder, fitting[0] + [question])
    assert 2 <= len(fitting[0]) < len(stored)  # some turns were remembered, some dropped


# Search.


def test_search_finds_a_session_by_a_word_from_its_messages_with_a_snippet(server):
    word = f"quokka{uuid.uuid4().hex[:8]}"
    session_id = create_session(server)["id"]
    say(server, session_id, f"Tell me about the {word} of Rottnest.")
    create_session(server)

    found = list_sessions(server, q=word.upper()).json()

    assert [session["id"] for session in found["data"]] == [session_id]
    assert f"**{word}**" in found["data"][0]["snippet"]


def test_search_needs_every_word(server):
    word = f"wombat{uuid.uuid4().hex[:8]}"
    session_id = create_session(server)["id"]
    say(server, session_id, f"A {word} digs.")
    assert list_sessions(server, q=f"{word} nowhere-else").json()["data"] == []


@pytest.mark.parametrize("query", ['"', "*", "AND(", "NEAR(a b", "a OR", "title:x", "'; DROP TABLE sessions; --", "\\", "^", "-"])
def test_any_query_text_is_a_valid_search(server, query):
    response = list_sessions(server, q=query)
    assert response.status_code == 200 and isinstance(response.json()["data"], list)


def test_deleted_sessions_are_no_longer_found(server):
    word = f"numbat{uuid.uuid4().hex[:8]}"
    session_id = create_session(server)["id"]
    say(server, session_id, f"The {word} eats termites.")
    httpx.delete(f"{server.url}/v1/sessions/{session_id}")
    assert list_sessions(server, q=word).json()["data"] == []


# Taking back the last turn.


def test_deleting_the_last_turn_removes_it_and_answers_with_its_messages(server):
    session_id = create_session(server, system_prompt=SYSTEM_PROMPT)["id"]
    say(server, session_id, "Kept question.")
    say(server, session_id, "Taken back question.")
    before = get_session(server, session_id).json()

    deleted = delete_last_turn(server, session_id)

    assert deleted.status_code == 200, deleted.text
    after = get_session(server, session_id).json()
    assert deleted.json() == {
        "object": "session.turn.deleted",
        "session_id": session_id,
        "turn": 2,
        "deleted": True,
        "messages": before["messages"][3:],
        "session": {key: value for key, value in after.items() if key != "messages"},
    }
    assert after["messages"] == before["messages"][:3]


def test_a_deleted_turn_is_no_longer_found_by_search(server):
    kept, taken_back = f"kept{uuid.uuid4().hex[:8]}", f"gone{uuid.uuid4().hex[:8]}"
    session_id = create_session(server)["id"]
    say(server, session_id, f"The {kept} stays.")
    say(server, session_id, f"The {taken_back} goes.")

    delete_last_turn(server, session_id)

    assert list_sessions(server, q=taken_back).json()["data"] == []
    assert [session["id"] for session in list_sessions(server, q=kept).json()["data"]] == [session_id]


def test_the_turn_after_a_deleted_one_continues_from_the_earlier_history(server, tiny_folder):
    session_id = create_session(server, system_prompt=SYSTEM_PROMPT, max_turns=1)["id"]
    say(server, session_id, "Turn one.")
    remembered = history(server, session_id)  # the system prompt and turn one
    say(server, session_id, "Turn two, taken back.")
    delete_last_turn(server, session_id)
    question = {"role": "user", "content": "Turn two, asked again."}

    usage = say(server, session_id, question["content"])["usage"]

    # max_turns=1 remembers the newest turn, which is turn one again.
    assert usage["prompt_tokens"] == prompt_tokens(tiny_folder, remembered + [question])
    stored = [(message["position"], message["turn"], message["role"]) for message in get_session(server, session_id).json()["messages"]]
    assert stored == [(0, 0, "system"), (1, 1, "user"), (2, 1, "assistant"), (3, 2, "user"), (4, 2, "assistant")]


def test_deleting_the_last_turn_of_an_unknown_session_is_a_404(server):
    assert_error(delete_last_turn(server, "sess_0000nothing"), 404, code="session_not_found")


@pytest.mark.parametrize("system_prompt", [None, SYSTEM_PROMPT])
def test_a_session_without_turns_has_no_last_turn_to_delete_a_409(server, system_prompt):
    session = create_session(server, system_prompt=system_prompt)

    response = delete_last_turn(server, session["id"])

    assert_error(response, 409, code="session_empty")
    assert get_session(server, session["id"]).json() == session  # the system prompt stays


OWNER_KEY, STRANGER_KEY = "sk-test-sessions-owner", "sk-test-sessions-stranger"


@pytest.fixture(scope="module", params=BACKENDS)
def keyed_server(request, tiny_model_dir, artifacts, tmp_path_factory):
    """The tiny model behind two API keys, over each backend."""
    process = ServiceProcess(
        "--model", f"tiny={tiny_model_dir}", "--models-dir", str(tmp_path_factory.mktemp("models")),
        "--data-dir", str(tmp_path_factory.mktemp("data")), "--api-key", OWNER_KEY, "--api-key", STRANGER_KEY,
        *database_arguments(request, request.param), log_path=artifacts / f"sessions_keyed_{request.param}_server.log",
    )
    yield process
    process.stop()


def test_another_keys_last_turn_is_not_found_and_stays(keyed_server):
    owner, stranger = ({"Authorization": f"Bearer {key}"} for key in (OWNER_KEY, STRANGER_KEY))
    session_id = httpx.post(f"{keyed_server.url}/v1/sessions", json={}, headers=owner, timeout=30).json()["id"]
    body = {"seed": 1, "model": "tiny", "messages": [{"role": "user", "content": "Mine."}], "max_tokens": 2, "session_id": session_id}
    assert httpx.post(f"{keyed_server.url}/v1/chat/completions", json=body, headers=owner, timeout=60).status_code == 200

    response = delete_last_turn(keyed_server, session_id, headers=stranger)

    assert_error(response, 404, code="session_not_found")
    messages = httpx.get(f"{keyed_server.url}/v1/sessions/{session_id}", headers=owner, timeout=30).json()["messages"]
    assert [(message["role"], message["turn"]) for message in messages] == [("user", 1), ("assistant", 1)]


# Durability.


@pytest.fixture
def restartable(request, tiny_model_dir, artifacts, tmp_path):
    """Starts tiny-model servers over one store, one after another: one data dir (SQLite, the
    default), or one PostgreSQL database with a new data dir each time (`indirect` parameter)."""
    backend = getattr(request, "param", "sqlite")
    database = database_arguments(request, backend)
    servers: list[ServiceProcess] = []

    def start() -> ServiceProcess:
        data = tmp_path / ("data" if backend == "sqlite" else f"data-{len(servers)}")
        server = ServiceProcess("--model", f"tiny={tiny_model_dir}", "--data-dir", str(data), *database,
                                "--models-dir", str(tmp_path / "models"), log_path=artifacts / f"sessions-{len(servers)}.log")
        servers.append(server)
        return server

    yield start, tmp_path / "data" / DATABASE_FILE
    for server in servers:
        server.stop()


@pytest.mark.parametrize("restartable", BACKENDS, indirect=True)
def test_history_survives_a_restart(restartable):
    start, _ = restartable
    first = start()
    session_id = create_session(first, title="Durable", system_prompt=SYSTEM_PROMPT)["id"]
    say(first, session_id, "Before the restart.")
    before = get_session(first, session_id).json()
    first.stop()

    second = start()

    assert get_session(second, session_id).json() == before


def test_history_survives_a_kill_right_after_an_answer(restartable):
    """SQLite's WAL under a kill; PostgreSQL's commits live in another process."""
    start, database = restartable
    server = start()
    session_id = create_session(server)["id"]
    answer = say(server, session_id, "Answered, then killed.")["choices"][0]["message"]["content"]
    server.process.kill()
    server.process.wait()

    with sqlite3.connect(database) as connection:
        integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
        stored = connection.execute(
            "SELECT role, content FROM messages WHERE session_id = ? ORDER BY position", (session_id,)
        ).fetchall()
    connection.close()

    assert integrity == "ok"
    assert stored == [("user", "Answered, then killed."), ("assistant", answer)]
    assert history(start(), session_id)[-1] == {"role": "assistant", "content": answer}


# The store itself.


def test_every_store_query_filters_on_the_owner(storage_settings):
    storage = open_storage(storage_settings)
    store = storage.sessions
    mine = store.create(owner="key-a")
    anonymous = store.create()
    store.append_turn(anonymous.id, [NewMessage("user", "anonymous turn")])

    visible = {
        "list": [session.id for session in store.list_sessions(owner="key-a")[0]],
        "get other": store.get(anonymous.id, owner="key-a"),
        "delete other": store.delete(anonymous.id, owner="key-a"),
        "append other": _refused(lambda: store.append_turn(anonymous.id, [NewMessage("user", "x")], owner="key-a")),
        "delete last turn of other": _refused(lambda: store.delete_last_turn(anonymous.id, owner="key-a")),
        "anonymous list": [session.id for session in store.list_sessions()[0]],
    }
    anonymous_messages = [message.content for message in store.get_with_messages(anonymous.id)[1]]
    storage.close()

    assert visible == {
        "list": [mine.id], "get other": None, "delete other": False, "append other": True,
        "delete last turn of other": True, "anonymous list": [anonymous.id],
    }
    assert anonymous_messages == ["anonymous turn"]



def _refused(action) -> bool:
    try:
        action()
    except SessionNotFound:
        return True
    return False


def set_sessions_schema_version(settings: Settings, version: int) -> None:
    if settings.database_url is None:
        with sqlite3.connect(settings.data_dir / DATABASE_FILE) as connection:
            connection.execute("UPDATE schema_version SET version = ?", (version,))
        connection.close()
    else:
        with psycopg.connect(settings.database_url, autocommit=True) as connection:
            connection.execute("UPDATE schema_versions SET version = %s WHERE component = 'sessions'", (version,))


def test_sessions_created_back_to_back_list_in_creation_order(storage_settings):
    """Many land in the same millisecond; the list and its cursor still follow creation."""
    storage = open_storage(storage_settings)
    created = [storage.sessions.create(title=str(index)).id for index in range(200)]
    listed, cursor = [], None
    while True:
        page, has_more = storage.sessions.list_sessions(limit=50, after=cursor)
        listed += [session.id for session in page]
        if not has_more:
            break
        cursor = page[-1].id
    storage.close()

    assert listed == created[::-1]


def test_a_database_from_a_newer_schema_is_refused(storage_settings):
    open_storage(storage_settings).close()
    set_sessions_schema_version(storage_settings, 99)

    with pytest.raises(StorageError, match="schema version 99"):
        open_storage(storage_settings)
