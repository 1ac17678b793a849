"""Look and feel: dark mode following prefers-color-scheme with a remembered toggle, Esc stops an
answer, every control named; and screenshots of a rich answer at desktop and phone width, light
and dark, in test-artifacts/."""

from __future__ import annotations

import uuid

import httpx
import pytest
from playwright.sync_api import expect

from e2e.chat_page import last_answer, open_chat_page, session_named, wait_until_answer_grows
from e2e.test_layout_page import UNNAMED_CONTROLS, overflow

BACKGROUND = {"light": "rgb(255, 255, 255)", "dark": "rgb(21, 23, 28)"}  # style.css --background
VIEWPORTS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True},
}
RICH_ANSWER = (
    "Here is a plan:\n\n1. Measure the room\n\n2. Buy paint\n\n3. Paint\n\n"
    "| colour | litres |\n|:--|--:|\n| white | 4 |\n| blue | 2 |\n\n> Two coats look better.\n\n"
    "```python\ndef litres(area, coats=2):\n    return area * coats / 10\n```\n\n"
    "For a room of side $s$, the wall area is $$A = 4 s h$$"
)


def background(page) -> str:
    return page.evaluate("() => getComputedStyle(document.body).backgroundColor")


@pytest.fixture
def open_page(browser):
    contexts = []

    def open_page(scheme: str, size: str = "desktop"):
        context = browser.new_context(color_scheme=scheme, **VIEWPORTS[size])
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_page_follows_the_systems_colour_scheme(open_page, service, spa_server, scheme):
    page = open_page(scheme)

    open_chat_page(page, service, spa_server)

    assert background(page) == BACKGROUND[scheme]
    expect(page.get_by_test_id("theme-toggle")).to_have_attribute("aria-pressed", str(scheme == "dark").lower())


def test_the_toggle_switches_the_scheme_and_is_remembered(open_page, service, spa_server):
    page = open_page("light")
    open_chat_page(page, service, spa_server)

    page.get_by_test_id("theme-toggle").click()
    assert background(page) == BACKGROUND["dark"]
    page.reload()
    expect(page.get_by_test_id("theme-toggle")).to_have_attribute("aria-pressed", "true")

    page.get_by_test_id("theme-toggle").click()
    assert background(page) == BACKGROUND["light"]


def test_escape_stops_the_answer(page, service, spa_server):
    open_chat_page(page, service, spa_server)
    page.get_by_test_id("prompt-input").fill(f"Write a very long story about a lighthouse. ({uuid.uuid4().hex[:6]})")
    page.get_by_test_id("prompt-input").press("Enter")
    wait_until_answer_grows(page)

    page.keyboard.press("Escape")

    expect(last_answer(page).get_by_test_id("answer-stats")).to_contain_text("stopped", timeout=10_000)


@pytest.mark.parametrize("size", ["desktop", "phone"])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_a_rich_answer_fits_the_screen_in_both_schemes(open_page, service, spa_server, artifacts, size, scheme):
    title = f"Painting {uuid.uuid4().hex[:6]}"
    session_id = httpx.post(f"{service.url}/v1/sessions", json={"title": title}, timeout=30).json()["id"]
    httpx.post(f"{service.url}/v1/sessions/{session_id}/turns", timeout=30, json={
        "messages": [{"role": "user", "content": "How do I paint a room?"}, {"role": "assistant", "content": RICH_ANSWER}],
    }).raise_for_status()
    page = open_page(scheme, size)
    open_chat_page(page, service, spa_server)

    session_named(page, title).get_by_test_id("session-open").click()
    expect(page.locator(".katex").first).to_be_visible()
    page.screenshot(path=str(artifacts / f"chat-{size}-{scheme}.png"))

    assert (background(page), overflow(page)) == (BACKGROUND[scheme], 0)
    assert page.evaluate(UNNAMED_CONTROLS) == []
