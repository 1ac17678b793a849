"""Saved chats: the sidebar lists the server's sessions, reopens them after a reload, deletes them."""

from __future__ import annotations

import uuid

from playwright.sync_api import expect

PHONE = {"width": 390, "height": 844}


def open_chat_page(page, service, spa_server):
    page.goto(f"{spa_server.url}/?api={service.url}")
    expect(page.get_by_test_id("model-select")).to_have_value("SmolLM2-135M-Instruct")


def chat(page, text):
    page.get_by_test_id("prompt-input").fill(text)
    page.get_by_test_id("send-button").click()
    expect(page.get_by_test_id("message-assistant").last).not_to_have_class("message assistant streaming", timeout=60_000)


def session_named(page, title):
    return page.get_by_test_id("session-item").filter(has_text=title)


def test_a_session_survives_a_page_reload(page, service, spa_server, artifacts):
    question = f"Name one colour. ({uuid.uuid4().hex[:6]})"
    open_chat_page(page, service, spa_server)
    chat(page, question)
    answer = page.get_by_test_id("message-assistant").evaluate("element => element.firstChild.textContent")

    page.reload()
    expect(page.get_by_test_id("model-select")).to_have_value("SmolLM2-135M-Instruct")
    session_named(page, question).get_by_test_id("session-open").click()

    expect(page.get_by_test_id("message-user")).to_have_text(question)
    expect(page.get_by_test_id("message-assistant")).to_have_text(answer)
    page.screenshot(path=str(artifacts / "sessions-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(artifacts / "sessions-phone.png"), full_page=True)


def test_deleting_a_session_removes_it_from_the_list(page, service, spa_server):
    question = f"Say hello. ({uuid.uuid4().hex[:6]})"
    open_chat_page(page, service, spa_server)
    chat(page, question)
    expect(session_named(page, question)).to_have_count(1)

    session_named(page, question).get_by_test_id("session-delete").click()

    expect(session_named(page, question)).to_have_count(0)
