"""Several replicas over one PostgreSQL database: two real servers share sessions and the model
registry, append to one session at once without losing or mixing turns, answer 503 while the
database is gone and recover when it returns. Plus what only the PostgreSQL store has: search
that matches what SQLite's FTS5 matches, migrations that replicas starting together apply once,
and clear errors for a wrong or unreachable database_url.

tests/test_sessions.py runs every session behaviour against both backends; this file covers
what needs several replicas or a database that can be taken away."""

from __future__ import annotations

import threading
import time

import httpx
import psycopg
import pytest

from service.app import create_app
from service.settings import Settings
from service.storage.backend import open_storage
from service.storage.errors import StorageConfigurationError
from service.storage.postgres import PostgresDatabase
from service.storage.postgres_session_store import PostgresSessionStore
from service.storage.session_store import NewMessage
from tests.support import ServiceProcess, free_port
from tests.test_api import QUESTION, assert_error, chat
from tests.test_registry import register, wait_settled
from tests.test_sessions import create_session, get_session, history, list_sessions, say, storage_settings  # noqa: F401


@pytest.fixture(scope="module")
def database_url(postgres_server) -> str:
    return postgres_server.create_database()


def start_replica(name: str, tiny_model_dir, database_url: str, artifacts, tmp_path_factory) -> ServiceProcess:
    """A tiny-model server with its own data and models folders: only the database is shared."""
    return ServiceProcess(
        "--model", f"tiny={tiny_model_dir}", "--database-url", database_url,
        "--data-dir", str(tmp_path_factory.mktemp(f"{name}-data")),
        "--models-dir", str(tmp_path_factory.mktemp(f"{name}-models")),
        log_path=artifacts / f"postgres_{name}.log",
    )


@pytest.fixture(scope="module")
def replicas(tiny_model_dir, database_url, artifacts, tmp_path_factory):
    first = start_replica("replica-a", tiny_model_dir, database_url, artifacts, tmp_path_factory)
    second = start_replica("replica-b", tiny_model_dir, database_url, artifacts, tmp_path_factory)
    yield first, second
    first.stop()
    second.stop()


# Two replicas, one database.


def test_a_session_created_on_one_replica_is_listed_searched_and_continued_on_the_other(replicas):
    first, second = replicas
    session_id = create_session(first, title="Shared", system_prompt="You are terse.")["id"]
    say(first, session_id, "The platypus lays eggs.")

    listed = [session["id"] for session in list_sessions(second, limit=100).json()["data"]]
    found = list_sessions(second, q="PLATYPUS").json()["data"]
    say(second, session_id, "Continued elsewhere.")

    assert session_id in listed
    assert [session["id"] for session in found] == [session_id] and "**platypus**" in found[0]["snippet"]
    assert [message["content"] for message in history(first, session_id) if message["role"] == "user"] == [
        "The platypus lays eggs.", "Continued elsewhere."
    ]
    assert [(message["turn"], message["role"]) for message in get_session(first, session_id).json()["messages"]] == [
        (0, "system"), (1, "user"), (1, "assistant"), (2, "user"), (2, "assistant")
    ]


def test_concurrent_turns_from_both_replicas_are_all_kept_whole_and_in_order(replicas):
    first, second = replicas
    session_id = create_session(first)["id"]
    turns_each = 6
    failures: list[str] = []

    def talk(server: ServiceProcess, name: str) -> None:
        for index in range(turns_each):
            response = chat(server, seed=1, model="tiny", session_id=session_id, max_tokens=2, temperature=0,
                            messages=[{"role": "user", "content": f"{name} {index}"}])
            if response.status_code != 200:
                failures.append(response.text)

    threads = [threading.Thread(target=talk, args=(server, name)) for server, name in ((first, "a"), (second, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    messages = get_session(second, session_id).json()["messages"]
    questions = [message["content"] for message in messages if message["role"] == "user"]

    assert failures == []
    assert [message["position"] for message in messages] == list(range(4 * turns_each))
    # Every turn whole: its question then its answer, under one turn number, turns numbered 1, 2, ...
    assert [(message["turn"], message["role"]) for message in messages] == [
        (turn, role) for turn in range(1, 2 * turns_each + 1) for role in ("user", "assistant")
    ]
    # Every question kept once, each replica's in the order it asked them.
    assert sorted(questions) == sorted(f"{name} {index}" for name in "ab" for index in range(turns_each))
    for name in "ab":
        assert [text for text in questions if text.startswith(name)] == [f"{name} {index}" for index in range(turns_each)]


def test_a_model_registered_on_one_replica_is_served_by_the_other_after_its_restart(
    tiny_model_dir, database_url, artifacts, tmp_path_factory
):
    first = start_replica("registry-a", tiny_model_dir, database_url, artifacts, tmp_path_factory)
    second = start_replica("registry-b", tiny_model_dir, database_url, artifacts, tmp_path_factory)
    try:
        assert register(first, id="shared-model", source=str(tiny_model_dir), max_context=64).status_code == 202
        before_restart = httpx.get(f"{second.url}/v1/models/shared-model", timeout=10)
        second.stop()
        second = start_replica("registry-b-again", tiny_model_dir, database_url, artifacts, tmp_path_factory)
        model = wait_settled(second, "shared-model")
        answer = chat(second, seed=1, model="shared-model", messages=QUESTION, max_tokens=2)
    finally:
        first.stop()
        second.stop()

    assert before_restart.status_code == 404  # running replicas learn of it at their next start
    assert model["status"] == "ready" and model["context_length"] == 64
    assert answer.status_code == 200


def test_text_postgresql_cannot_store_is_a_400_not_a_500(replicas):
    first, _ = replicas
    response = httpx.post(f"{first.url}/v1/sessions", json={"title": "nul \u0000 inside"}, timeout=30)
    assert_error(response, 400, code="unstorable_value")


# The database going away.


def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_while_the_database_is_gone_sessions_answer_503_and_recover_when_it_returns(replicas, postgres_server):
    first, _ = replicas
    session_id = create_session(first)["id"]
    postgres_server.stop()
    try:
        listed = list_sessions(first)
        created = httpx.post(f"{first.url}/v1/sessions", json={}, timeout=30)
        continued = chat(first, seed=1, model="tiny", session_id=session_id, max_tokens=2, messages=QUESTION)
        plain = chat(first, seed=1, model="tiny", max_tokens=2, messages=QUESTION)
        started = time.monotonic()
        readiness = httpx.get(f"{first.url}/readyz", timeout=30)
        readiness_seconds = time.monotonic() - started
    finally:
        postgres_server.start()

    for refused in (listed, created, continued):
        assert_error(refused, 503, code="database_unavailable")
        assert refused.headers["Retry-After"]
    assert plain.status_code == 200  # completions without a session do not need the database
    assert (readiness.status_code, readiness.json()["database"]) == (200, "unavailable")
    assert readiness_seconds < 3  # within a probe's timeout
    wait_until(lambda: list_sessions(first).status_code == 200)
    assert httpx.get(f"{first.url}/readyz", timeout=30).json()["database"] == "ok"
    assert say(first, session_id, "Back again.")["choices"]


def test_an_unreachable_database_at_startup_stops_the_service_with_a_clear_message(tiny_model_dir, artifacts):
    port = free_port()  # nothing listens there
    url = f"postgresql://someone:sekrit-password@127.0.0.1:{port}/nowhere"

    with pytest.raises(RuntimeError, match="exited") as failure:
        ServiceProcess("--model", f"tiny={tiny_model_dir}", "--database-url", url, log_path=artifacts / "postgres_unreachable.log",
                       timeout=60)

    assert f"cannot connect to the database at postgresql://someone@127.0.0.1:{port}/nowhere" in str(failure.value)
    assert "sekrit-password" not in str(failure.value)


@pytest.mark.parametrize("url", ["mysql://user@host/db", "sqlite:///data/sessions.sqlite3", "localhost:5432/db"])
def test_a_database_url_that_is_not_postgresql_is_a_configuration_error_naming_it(url):
    with pytest.raises(StorageConfigurationError, match="database_url must be a postgresql:// or postgres:// URL"):
        create_app(Settings(database_url=url))


# The PostgreSQL store itself.


def test_replicas_starting_together_migrate_the_schema_once(postgres_server):
    url = postgres_server.create_database()
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        barrier.wait()
        try:
            open_storage(Settings(database_url=url)).close()
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with psycopg.connect(url) as connection:
        versions = connection.execute("SELECT component, version FROM schema_versions ORDER BY component").fetchall()

    assert errors == []
    assert versions == [("registry", 1), ("sessions", 1)]


def test_appends_through_separate_pools_never_share_a_position(postgres_server):
    url = postgres_server.create_database()
    databases = [PostgresDatabase(url) for _ in range(2)]
    stores = [PostgresSessionStore(database) for database in databases]
    session = stores[0].create()

    def append(store: PostgresSessionStore, name: str) -> None:
        for index in range(25):
            store.append_turn(session.id, [NewMessage("user", f"{name}{index}"), NewMessage("assistant", "ok")])

    threads = [threading.Thread(target=append, args=(store, name)) for store, name in zip(stores, "ab")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    _, messages = stores[1].get_with_messages(session.id)
    for database in databases:
        database.close()

    assert [message.position for message in messages] == list(range(100))
    assert [(message.turn, message.role) for message in messages] == [
        (turn, role) for turn in range(1, 51) for role in ("user", "assistant")
    ]


# Search: the same answers from both backends.


def search(store, query: str) -> list[str | None]:
    return [session.snippet for session in store.list_sessions(query=query)[0]]


@pytest.fixture
def searchable(storage_settings):  # noqa: F811 - the fixture imported above
    storage = open_storage(storage_settings)
    texts = ("Un café à Paris, s'il vous plaît.", "Somewhere far, nowhere-else.", "Else nowhere to be found.", "Nowhere nowhere else.")
    for text in texts:
        session = storage.sessions.create()
        storage.sessions.append_turn(session.id, [NewMessage("user", text)])
    yield storage.sessions
    storage.close()


@pytest.mark.parametrize(
    "query, snippets",
    [
        ("CAFE paris", ["Un **café** à **Paris**, s'il vous plaît."]),
        ("plait", ["Un café à Paris, s'il vous **plaît**."]),
        ("caf", []),  # whole words only
        # A term's words adjacent and in order, highlighted as one.
        ("nowhere-else", ["Nowhere **nowhere else**.", "Somewhere far, **nowhere-else**."]),
        ("else nowhere", ["**Nowhere** **nowhere** **else**.", "**Else** **nowhere** to be found.", "Somewhere far, **nowhere**-**else**."]),
        ("* (", []),  # terms without a word match nothing
        ("café *", ["Un **café** à Paris, s'il vous plaît."]),  # and are ignored beside words
    ],
)
def test_search_folds_case_and_accents_and_matches_whole_words(searchable, query, snippets):
    assert search(searchable, query) == snippets


def test_a_long_message_gets_a_window_around_its_hit(storage_settings):  # noqa: F811
    storage = open_storage(storage_settings)
    session = storage.sessions.create()
    words = [f"word{index}" for index in range(60)]
    words[40] = "echidna"
    storage.sessions.append_turn(session.id, [NewMessage("user", " ".join(words))])

    [snippet] = search(storage.sessions, "echidna")
    storage.close()

    assert snippet.startswith("…") and snippet.endswith("…") and "**echidna**" in snippet
    assert len(snippet.strip("…").split()) == 16
