"""Nothing lost: a stopped answer is stored with its question as a partial turn, marked as such,
shown again when the chat is reopened, and replaced by Regenerate. (An answer cut off by the
server going away is stored once it is back: e2e/test_failures_page.py.)"""

from __future__ import annotations

import uuid

import httpx
import pytest
from playwright.sync_api import expect

from e2e.chat_page import (
    TITLE_LENGTH,
    answer_source,
    current_session_id,
    last_answer,
    open_chat_page,
    session_named,
    stored_messages,
    wait_for_answer,
    wait_until_answer_grows,
)


def stop_an_answer(page, question: str) -> str:
    """Asks `question`, stops the answer once it has grown, and returns its text as shown."""
    page.get_by_test_id("prompt-input").fill(question)
    page.get_by_test_id("send-button").click()
    wait_until_answer_grows(page)
    page.get_by_test_id("stop-button").click()
    expect(last_answer(page).get_by_test_id("partial-note")).to_have_text("partial answer · saved", timeout=10_000)
    return answer_source(last_answer(page))


def answer_briefly(page) -> None:
    """Later answers run to their end quickly: 24 tokens at most."""
    page.get_by_test_id("settings-max-tokens").fill("24")
    page.get_by_test_id("settings-max-tokens").press("Tab")


def session_metadata(service, session_id: str) -> dict:
    return httpx.get(f"{service.url}/v1/sessions/{session_id}", timeout=30).json()["metadata"]


@pytest.mark.parametrize("transport", ["sse", "websocket"])
def test_a_stopped_answer_is_stored_with_its_question_and_marked_partial(page, service, spa_server, transport):
    question = f"Write a very long story about a lighthouse. ({uuid.uuid4().hex[:6]})"
    open_chat_page(page, service, spa_server)
    page.get_by_test_id("transport-select").select_option(transport)

    shown = stop_an_answer(page, question)

    session_id = current_session_id(page, service, question)
    assert shown and stored_messages(service, session_id) == [("user", question), ("assistant", shown)]
    assert session_metadata(service, session_id) == {"partial_turns": "1"}


def test_a_stopped_answer_is_still_there_after_a_reload(page, service, spa_server):
    question = f"Write a very long story about a lighthouse. ({uuid.uuid4().hex[:6]})"
    open_chat_page(page, service, spa_server)
    shown = stop_an_answer(page, question)

    page.reload()
    session_named(page, question[:TITLE_LENGTH]).get_by_test_id("session-open").click()

    expect(page.get_by_test_id("message-user")).to_have_text([question])
    expect(last_answer(page).get_by_test_id("partial-note")).to_have_text("partial answer")
    expect(last_answer(page)).to_have_class("message assistant interrupted")
    assert answer_source(last_answer(page)) == shown


def test_regenerate_replaces_a_stored_partial_answer(page, service, spa_server):
    question = f"Write a very long story about a lighthouse. ({uuid.uuid4().hex[:6]})"
    open_chat_page(page, service, spa_server)
    stop_an_answer(page, question)
    answer_briefly(page)
    session_id = current_session_id(page, service, question)

    last_answer(page).get_by_test_id("regenerate-button").click()
    expect(last_answer(page).get_by_test_id("partial-note")).to_be_hidden(timeout=10_000)
    wait_for_answer(page)

    assert stored_messages(service, session_id) == [("user", question), ("assistant", answer_source(last_answer(page)))]
    assert page.get_by_test_id("message-assistant").count() == 1 and session_metadata(service, session_id) == {}


def test_a_later_turn_follows_the_stored_partial_one(page, service, spa_server):
    question = f"Write a very long story about a lighthouse. ({uuid.uuid4().hex[:6]})"
    open_chat_page(page, service, spa_server)
    shown = stop_an_answer(page, question)
    answer_briefly(page)

    page.get_by_test_id("prompt-input").fill("Now say goodbye.")
    page.get_by_test_id("send-button").click()
    wait_for_answer(page)

    session_id = current_session_id(page, service, question)
    assert stored_messages(service, session_id) == [
        ("user", question), ("assistant", shown), ("user", "Now say goodbye."), ("assistant", answer_source(last_answer(page))),
    ]
    assert session_metadata(service, session_id) == {"partial_turns": "1"}
