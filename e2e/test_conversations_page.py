"""Conversations in the sidebar and the chat: search with highlighted snippets, rename, delete
with undo, edit a question and send it again (later turns replaced), export as Markdown and JSON."""

from __future__ import annotations

import json
import uuid

import httpx
from playwright.sync_api import expect

from e2e.chat_page import (
    answer_source,
    chat,
    current_session_id,
    open_chat_page,
    session_named,
    stored_messages,
)

UNDO_SECONDS = 6  # spa/app.js UNDO_MS


def saved_chat(service, title: str, turns: list[tuple[str, str]], **session) -> str:
    """A session holding `turns` (question, answer), stored as the page stores turns it holds."""
    session_id = httpx.post(f"{service.url}/v1/sessions", json={"title": title, **session}, timeout=30).json()["id"]
    for question, answer in turns:
        httpx.post(f"{service.url}/v1/sessions/{session_id}/turns", timeout=30, json={
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        }).raise_for_status()
    return session_id


def brief_answers(page) -> None:
    page.get_by_test_id("settings-max-tokens").fill("16")
    page.get_by_test_id("settings-max-tokens").press("Tab")


def test_search_lists_only_matching_chats_with_the_hit_highlighted(page, service, spa_server):
    word = f"quokka{uuid.uuid4().hex[:6]}"
    saved_chat(service, f"animals {word}", [("Tell me about marsupials.", f"The {word} lives on Rottnest Island.")])
    saved_chat(service, f"other {word[6:]}", [("Tell me about birds.", "Crows are clever.")])
    open_chat_page(page, service, spa_server)

    page.get_by_test_id("session-search").fill(word)

    expect(page.get_by_test_id("session-item")).to_have_count(1)
    expect(page.get_by_test_id("session-item").get_by_test_id("session-snippet")).to_have_text(f"The {word} lives on Rottnest Island.")
    expect(page.get_by_test_id("session-snippet").locator("mark")).to_have_text(word)
    page.get_by_test_id("session-search").fill("")
    expect(session_named(page, word[6:])).to_have_count(1)


def test_ctrl_k_puts_the_cursor_in_the_search_box(page, service, spa_server):
    open_chat_page(page, service, spa_server)
    page.get_by_test_id("prompt-input").focus()

    page.keyboard.press("Control+k")

    expect(page.get_by_test_id("session-search")).to_be_focused()


def test_rename_changes_the_title_on_the_server(page, service, spa_server):
    title = f"before {uuid.uuid4().hex[:6]}"
    session_id = saved_chat(service, title, [("Hi", "Hello.")])
    open_chat_page(page, service, spa_server)

    session_named(page, title).get_by_test_id("session-rename").click()
    page.get_by_test_id("session-rename-input").fill(f"after {title}")
    page.get_by_test_id("session-rename-input").press("Enter")

    expect(session_named(page, f"after {title}")).to_have_count(1)
    assert httpx.get(f"{service.url}/v1/sessions/{session_id}", timeout=30).json()["title"] == f"after {title}"


def test_a_deleted_chat_comes_back_with_undo(page, service, spa_server):
    title = f"keep me {uuid.uuid4().hex[:6]}"
    session_id = saved_chat(service, title, [("Hi", "Hello.")])
    open_chat_page(page, service, spa_server)

    session_named(page, title).get_by_test_id("session-delete").click()
    expect(session_named(page, title)).to_have_count(0)
    page.get_by_test_id("undo-delete").click()

    expect(session_named(page, title)).to_have_count(1)
    page.wait_for_timeout((UNDO_SECONDS + 1) * 1000)
    assert httpx.get(f"{service.url}/v1/sessions/{session_id}", timeout=30).status_code == 200


def test_a_deleted_chat_is_gone_from_the_server_once_undo_has_passed(page, service, spa_server):
    title = f"delete me {uuid.uuid4().hex[:6]}"
    session_id = saved_chat(service, title, [("Hi", "Hello.")])
    open_chat_page(page, service, spa_server)

    session_named(page, title).get_by_test_id("session-delete").click()
    expect(page.get_by_test_id("undo-bar")).to_be_visible()
    assert httpx.get(f"{service.url}/v1/sessions/{session_id}", timeout=30).status_code == 200  # still undoable

    expect(page.get_by_test_id("undo-bar")).to_be_hidden(timeout=(UNDO_SECONDS + 5) * 1000)
    assert httpx.get(f"{service.url}/v1/sessions/{session_id}", timeout=30).status_code == 404


def test_an_edited_question_is_asked_again_and_replaces_the_turns_after_it(page, service, spa_server):
    first = f"Name a colour. ({uuid.uuid4().hex[:6]})"
    open_chat_page(page, service, spa_server)
    brief_answers(page)
    chat(page, first)
    chat(page, "Name an animal.")
    chat(page, "Name a city.")
    session_id = current_session_id(page, service, first)

    page.get_by_test_id("edit-button").nth(1).click()
    page.get_by_test_id("edit-input").fill("Name a fruit.")
    page.get_by_test_id("edit-send").click()
    expect(page.get_by_test_id("message-user")).to_have_text([first, "Name a fruit."])
    expect(page.get_by_test_id("message-assistant")).to_have_count(2)
    expect(page.get_by_test_id("message-assistant").last.get_by_test_id("answer-stats")).to_be_visible(timeout=120_000)

    answers = [answer_source(answer) for answer in page.get_by_test_id("message-assistant").all()]
    assert stored_messages(service, session_id) == [
        ("user", first), ("assistant", answers[0]), ("user", "Name a fruit."), ("assistant", answers[1]),
    ]


EXPECTED_MARKDOWN = """# {title}

## System prompt

Be brief.

## User

What is **2+2**?

## Assistant

It is `4`.

## User

And 3+3?

## Assistant (partial)

It is
"""


def test_export_as_markdown_and_json(page, service, spa_server, tmp_path):
    title = f"export {uuid.uuid4().hex[:6]}"
    session_id = saved_chat(service, title, [("What is **2+2**?", "It is `4`."), ("And 3+3?", "It is")], system_prompt="Be brief.")
    httpx.patch(f"{service.url}/v1/sessions/{session_id}", json={"metadata": {"partial_turns": "2"}}, timeout=30).raise_for_status()
    open_chat_page(page, service, spa_server)
    session_named(page, title).get_by_test_id("session-open").click()

    with page.expect_download() as markdown_download:
        page.get_by_test_id("export-markdown").click()
    with page.expect_download() as json_download:
        page.get_by_test_id("export-json").click()

    markdown_file, json_file = markdown_download.value, json_download.value
    assert (markdown_file.suggested_filename, json_file.suggested_filename) == (f"{title.replace(' ', '-')}.md", f"{title.replace(' ', '-')}.json")
    assert open(markdown_file.path(), encoding="utf-8").read() == EXPECTED_MARKDOWN.format(title=title)
    assert json.load(open(json_file.path(), encoding="utf-8")) == httpx.get(f"{service.url}/v1/sessions/{session_id}", timeout=30).json()
