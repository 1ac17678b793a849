"""Saved chats: the sidebar lists the server's sessions, over either transport, reopens them
after a reload, deletes them."""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import expect

from e2e.chat_page import SMOL, answer_source, answer_text, chat, current_session_id, open_chat_page, session_named, stored_messages


@pytest.mark.parametrize("transport", ["sse", "websocket"])
def test_a_session_survives_a_page_reload(page, service, spa_server, transport):
    first, second = f"Name one colour. ({uuid.uuid4().hex[:6]})", "Name another one."
    open_chat_page(page, service, spa_server)
    page.get_by_test_id("transport-select").select_option(transport)
    chat(page, first)
    chat(page, second)
    rendered = [answer_text(answer) for answer in page.get_by_test_id("message-assistant").all()]
    answers = [answer_source(answer) for answer in page.get_by_test_id("message-assistant").all()]

    page.reload()
    expect(page.get_by_test_id("model-select")).to_have_value(SMOL)
    expect(page.get_by_test_id("transport-select")).to_have_value(transport)
    session_named(page, first).get_by_test_id("session-open").click()

    expect(page.get_by_test_id("message-user")).to_have_text([first, second])
    expect(page.get_by_test_id("message-assistant").locator("> .content")).to_have_text(rendered)
    # The server kept both turns, so the second question was asked with the first in its prompt.
    assert stored_messages(service, current_session_id(page, service, first)) == [
        ("user", first), ("assistant", answers[0]), ("user", second), ("assistant", answers[1]),
    ]


def test_a_reopened_session_goes_on_where_it_left_off(page, service, spa_server):
    question = f"Say one word. ({uuid.uuid4().hex[:6]})"
    open_chat_page(page, service, spa_server)
    chat(page, question)
    page.reload()
    expect(page.get_by_test_id("model-select")).to_have_value(SMOL)
    session_named(page, question).get_by_test_id("session-open").click()

    chat(page, "Say another word.")

    stored = stored_messages(service, current_session_id(page, service, question))
    assert [role for role, _ in stored] == ["user", "assistant", "user", "assistant"] and stored[2] == ("user", "Say another word.")


def test_deleting_a_session_removes_it_from_the_list(page, service, spa_server):
    question = f"Say hello. ({uuid.uuid4().hex[:6]})"
    open_chat_page(page, service, spa_server)
    chat(page, question)
    expect(session_named(page, question)).to_have_count(1)

    session_named(page, question).get_by_test_id("session-delete").click()

    expect(session_named(page, question)).to_have_count(0)
