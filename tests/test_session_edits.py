"""Changes a client makes to a stored session without generating (routes/session_edits.py):
renaming it, replacing its metadata, and storing a turn it already holds (the chat page's stopped
answers); and the generation defaults GET /v1/models shows. Both session backends, as in
tests/test_sessions.py."""

from __future__ import annotations

import httpx
import pytest

from tests.test_sessions import create_session, get_session, history, list_sessions, say, server  # noqa: F401 (fixture)


def patch(server, session_id: str, body) -> httpx.Response:  # noqa: F811
    return httpx.patch(f"{server.url}/v1/sessions/{session_id}", json=body, timeout=30)


def append_turn(server, session_id: str, messages: list[dict]) -> httpx.Response:  # noqa: F811
    return httpx.post(f"{server.url}/v1/sessions/{session_id}/turns", json={"messages": messages}, timeout=30)


def test_patch_renames_a_session_and_keeps_the_rest(server):  # noqa: F811
    session = create_session(server, title="before", metadata={"project": "atlas"})

    response = patch(server, session["id"], {"title": "after"})

    assert response.status_code == 200, response.text
    assert (response.json()["title"], response.json()["metadata"]) == ("after", {"project": "atlas"})
    assert get_session(server, session["id"]).json()["title"] == "after"


def test_patch_replaces_the_metadata_whole_and_keeps_the_title(server):  # noqa: F811
    session = create_session(server, title="kept", metadata={"project": "atlas", "old": "x"})

    response = patch(server, session["id"], {"metadata": {"project": "zeus"}})

    stored = get_session(server, session["id"]).json()
    assert response.status_code == 200 and (stored["title"], stored["metadata"]) == ("kept", {"project": "zeus"})


@pytest.mark.parametrize("body, param", [({"title": 3}, "title"), ({"owner": "x"}, None), ({"metadata": {"k": 1}}, "metadata")])
def test_a_bad_patch_is_a_400(server, body, param):  # noqa: F811
    response = patch(server, create_session(server)["id"], body)
    assert response.status_code == 400, response.text
    assert param is None or param in response.json()["error"]["message"]


def test_patch_and_append_on_an_unknown_session_are_404s(server):  # noqa: F811
    assert patch(server, "sess_missing", {"title": "x"}).json()["error"]["code"] == "session_not_found"
    assert append_turn(server, "sess_missing", [{"role": "user", "content": "x"}]).json()["error"]["code"] == "session_not_found"


def test_a_turn_the_client_holds_is_stored_as_the_next_turn_and_found_by_search(server):  # noqa: F811
    session = create_session(server, title="stopped")
    say(server, session["id"], "first question")
    partial = [{"role": "user", "content": "tell me about zanzibarian lighthouses"}, {"role": "assistant", "content": "Once upon"}]

    response = append_turn(server, session["id"], partial)

    assert response.status_code == 201, response.text
    messages = response.json()["messages"]
    assert [(message["turn"], message["role"], message["content"], message["token_count"]) for message in messages[-2:]] == [
        (2, "user", partial[0]["content"], None), (2, "assistant", "Once upon", None),
    ]
    assert history(server, session["id"])[-2:] == partial
    found = list_sessions(server, q="zanzibarian").json()["data"]
    assert [item["id"] for item in found] == [session["id"]]


def test_a_stored_turn_is_in_the_next_prompt(server):  # noqa: F811
    session = create_session(server)
    append_turn(server, session["id"], [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}])

    answer = say(server, session["id"], "again")

    without_history = say(server, create_session(server)["id"], "again")
    assert answer["usage"]["prompt_tokens"] > without_history["usage"]["prompt_tokens"]


def test_an_empty_turn_is_a_400(server):  # noqa: F811
    assert append_turn(server, create_session(server)["id"], []).status_code == 400


def test_a_ready_model_shows_its_generation_defaults(server):  # noqa: F811
    model = httpx.get(f"{server.url}/v1/models/tiny", timeout=30).json()
    assert model["generation_defaults"] == {}
