"""Under each answer: Copy puts the model's Markdown on the clipboard, Regenerate asks again and
the saved chat keeps only the new answer."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from playwright.sync_api import expect

from e2e.chat_page import (
    answer_source,
    chat,
    current_session_id,
    last_answer,
    open_chat_page,
    session_named,
    stored_messages,
    wait_for_answer,
    wait_until_answer_grows,
)


def test_copy_puts_the_answer_as_the_model_wrote_it_on_the_clipboard(clipboard_page, service, spa_server):
    page = clipboard_page
    question = f"Write a short list of three fruits. ({uuid.uuid4().hex[:6]})"
    open_chat_page(page, service, spa_server)
    chat(page, question)

    last_answer(page).get_by_test_id("copy-button").click()

    expect(last_answer(page).get_by_test_id("copy-button")).to_have_text("Copied")
    saved_answer = stored_messages(service, current_session_id(page, service, question))[-1]
    assert saved_answer[0] == "assistant" and page.evaluate("() => navigator.clipboard.readText()") == saved_answer[1]


def regenerate(page) -> None:
    """Clicks Regenerate on the last answer and waits for the answer that replaces it."""
    replaced = last_answer(page).element_handle()
    last_answer(page).get_by_test_id("regenerate-button").click()
    replaced.wait_for_element_state("hidden")
    wait_for_answer(page)


def chat_requests(page) -> list[dict]:
    """The chat requests the page sends from now on, over SSE or the WebSocket."""
    requests = []
    page.on("request", lambda request: requests.append(request.post_data_json) if request.url.endswith("/v1/chat/completions") else None)

    def on_frame(payload) -> None:
        message = json.loads(payload)
        if message.get("type") == "chat.completion":
            requests.append(message)

    page.on("websocket", lambda socket: socket.on("framesent", on_frame))
    return requests


def stored_turns(service, session_id: str) -> list[tuple[int, str, str]]:
    messages = httpx.get(f"{service.url}/v1/sessions/{session_id}", timeout=30).json()["messages"]
    return [(message["turn"], message["role"], message["content"]) for message in messages]


@pytest.mark.parametrize("transport", ["sse", "websocket"])
def test_regenerate_replaces_the_last_answer_in_the_same_session(page, service, spa_server, transport):
    first, second = f"Name a colour. ({uuid.uuid4().hex[:6]})", "Name an animal."
    open_chat_page(page, service, spa_server)
    page.get_by_test_id("transport-select").select_option(transport)
    chat(page, first)
    chat(page, second)
    first_answer = answer_source(page.get_by_test_id("message-assistant").first)
    session_id = current_session_id(page, service, first)
    sent = chat_requests(page)

    regenerate(page)

    new_answer = answer_source(last_answer(page))
    # Asked again in the same session, which still remembers the first turn: only the question goes out.
    assert [(request["session_id"], request["messages"]) for request in sent] == [
        (session_id, [{"role": "user", "content": second}])
    ]
    expect(page.locator('[data-testid="session-item"][aria-current="true"]')).to_have_attribute("data-session-id", session_id)
    assert stored_turns(service, session_id) == [
        (1, "user", first), (1, "assistant", first_answer), (2, "user", second), (2, "assistant", new_answer),
    ]
    assert [button.is_visible() for button in page.get_by_test_id("regenerate-button").all()] == [False, True]

    page.reload()
    session_named(page, first).get_by_test_id("session-open").click()

    expect(page.get_by_test_id("message-user")).to_have_text([first, second])
    expect(page.get_by_test_id("message-assistant")).to_have_count(2)
    assert answer_source(last_answer(page)) == new_answer


def test_regenerate_after_stop_asks_once_more_in_the_same_chat(page, service, spa_server):
    question = f"Write a very long story about a lighthouse. ({uuid.uuid4().hex[:6]})"
    open_chat_page(page, service, spa_server)
    page.get_by_test_id("settings-max-tokens").fill("300")
    page.get_by_test_id("prompt-input").fill(question)
    page.get_by_test_id("send-button").click()
    wait_until_answer_grows(page)
    page.get_by_test_id("stop-button").click()
    expect(last_answer(page).get_by_test_id("answer-stats")).to_contain_text("stopped")
    session_id = current_session_id(page, service, question)

    regenerate(page)

    assert page.get_by_test_id("message-assistant").count() == 1
    assert stored_messages(service, session_id) == [("user", question), ("assistant", answer_source(last_answer(page)))]
