"""When things go wrong the page says so clearly and recovers: a wrong key, a real rate limit,
and the server killed and started again in the middle of an answer."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import expect

from e2e.chat_page import (
    SMOL,
    TINY,
    answer_source,
    current_session_id,
    last_answer,
    open_chat_page,
    stored_messages,
    wait_for_answer,
    wait_until_answer_grows,
)


def test_a_wrong_api_key_shows_the_bad_key_banner(page, keyed_service, spa_server):
    page.goto(f"{spa_server.url}/?api={keyed_service.url}")
    page.get_by_test_id("settings-api-key").fill("sk-test-not-the-right-key")
    page.get_by_test_id("settings-api-key").press("Enter")
    page.get_by_test_id("settings-api-key").blur()
    expect(page.get_by_test_id("error-banner")).to_contain_text("The API key was refused")


def test_the_right_key_from_the_page_address_is_kept_and_then_dropped_from_the_address(page, keyed_service, spa_server):
    from e2e.conftest import KEYED_SERVICE_KEY

    open_chat_page(page, keyed_service, spa_server, query=f"&key={KEYED_SERVICE_KEY}")

    assert "key=" not in page.url
    expect(page.get_by_test_id("settings-api-key")).to_have_value(KEYED_SERVICE_KEY)
    page.reload()
    expect(page.get_by_test_id("model-select")).to_have_value(SMOL)
    assert not page.get_by_test_id("error-banner").is_visible()


def test_a_real_rate_limit_shows_how_long_to_wait(page, limited_service, spa_server):
    server, key = limited_service
    refusals = []
    page.on("response", lambda response: refusals.append(response) if response.status == 429 else None)
    open_chat_page(page, server, spa_server, model=TINY, query=f"&key={key}")

    page.get_by_test_id("prompt-input").fill("Hello")
    page.get_by_test_id("send-button").click()

    banner = page.get_by_test_id("error-banner")
    expect(banner).to_contain_text("Rate limit reached")
    # The wait shown is the one the service's limiter sent (a key of 3 requests per minute
    # refills one request every 20 seconds).
    retry_after = refusals[0].header_value("retry-after")
    assert 1 <= int(retry_after) <= 20
    expect(banner).to_contain_text(f"wait {retry_after} seconds")
    expect(banner).to_contain_text("requests per minute")


@pytest.mark.parametrize("transport", ["sse", "websocket"])
def test_the_server_restarted_mid_answer_shows_a_banner_and_the_page_works_again(page, restartable_service, spa_server, transport):
    server = restartable_service
    question = f"Write a very long story about a lighthouse keeper and the sea. ({uuid.uuid4().hex[:6]})"
    open_chat_page(page, server, spa_server)
    page.get_by_test_id("transport-select").select_option(transport)
    page.get_by_test_id("prompt-input").fill(question)
    page.get_by_test_id("send-button").click()
    wait_until_answer_grows(page)

    server.kill()

    banner = page.get_by_test_id("error-banner")
    expect(banner).to_contain_text("connection to the server was lost", timeout=10_000)
    expect(last_answer(page)).not_to_have_class(re.compile(r"\bstreaming\b"))
    expect(last_answer(page).get_by_test_id("partial-note")).to_have_text("partial answer · not saved yet")
    expect(page.get_by_test_id("send-button")).to_be_enabled()
    cut_short = answer_source(last_answer(page))

    server.start_again()
    server.wait_ready(120)
    # The page notices the server is back by itself: the banner goes, what arrived before the
    # kill is stored as a partial turn, and a new message is answered.
    expect(banner).to_be_hidden(timeout=30_000)
    expect(page.get_by_test_id("model-select")).to_have_value(SMOL, timeout=30_000)
    expect(last_answer(page).get_by_test_id("partial-note")).to_have_text("partial answer · saved", timeout=30_000)
    assert stored_messages(server, current_session_id(page, server, question)) == [("user", question), ("assistant", cut_short)]
    page.get_by_test_id("prompt-input").fill("Say hello.")
    page.get_by_test_id("send-button").click()
    wait_for_answer(page)
    expect(last_answer(page).get_by_test_id("partial-note")).to_be_hidden()
    assert not banner.is_visible()
