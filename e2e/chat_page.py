"""What the e2e tests do to the chat page, in a person's terms."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Page, expect

SMOL = "SmolLM2-135M-Instruct"
TINY = "tiny"  # a random two-layer model: fast gibberish, a second model to switch to
# Records the last assistant message's text every time the DOM changes, so a test can see growth.
WATCH_ANSWER = """
() => {
  window.answerTexts = [];
  new MutationObserver(() => {
    const answers = document.querySelectorAll('[data-testid="message-assistant"]');
    if (answers.length) window.answerTexts.push(answers[answers.length - 1].firstChild?.textContent ?? "");
  }).observe(document.getElementById("messages"), { childList: true, subtree: true, characterData: true });
}
"""
ANSWER_TIMEOUT_MS = 120_000
TITLE_LENGTH = 48  # a chat's title is the start of its first message
# Every generation the tests cause is seeded (the page's Seed setting) and bounded (its max
# tokens, which default to 512): the same test asks the same thing each run.
SEED = 7
SEEDED = f"() => {{ if (localStorage.getItem('seed') === null) localStorage.setItem('seed', '{SEED}'); }}"


def open_chat_page(page: Page, service, spa_server, model: str = SMOL, query: str = "") -> None:
    page.add_init_script(f"({SEEDED})()")
    page.goto(f"{spa_server.url}/?api={service.url}{query}")
    expect(page.get_by_test_id("model-select")).to_have_value(model)


def last_answer(page: Page):
    return page.get_by_test_id("message-assistant").last


def wait_for_answer(page: Page) -> None:
    expect(last_answer(page)).not_to_have_class(re.compile(r"\bstreaming\b"), timeout=ANSWER_TIMEOUT_MS)
    expect(last_answer(page).get_by_test_id("answer-stats")).to_be_visible()


def chat(page: Page, text: str) -> None:
    page.get_by_test_id("prompt-input").fill(text)
    page.get_by_test_id("send-button").click()
    wait_for_answer(page)


def answer_text(answer) -> str:
    """The answer as rendered (Markdown markers gone)."""
    return answer.evaluate("element => element.firstChild.textContent")


def answer_source(answer) -> str:
    """The answer as the model wrote it, which the page keeps for Copy."""
    return answer.get_attribute("data-text")


def wait_until_answer_grows(page: Page, characters: int = 20) -> None:
    page.wait_for_function(
        """(characters) => {
          const answers = document.querySelectorAll('[data-testid="message-assistant"]');
          return (answers[answers.length - 1]?.firstChild?.textContent ?? "").length > characters;
        }""",
        arg=characters,
        timeout=ANSWER_TIMEOUT_MS,
    )


def session_named(page: Page, title: str):
    return page.get_by_test_id("session-item").filter(has_text=title)


def current_session_id(page: Page, service, first_message: str) -> str:
    """The id of the one session the server lists for a chat begun with `first_message`."""
    sessions = httpx.get(f"{service.url}/v1/sessions?limit=100", timeout=30).json()["data"]
    matching = [session["id"] for session in sessions if session["title"] == first_message[:TITLE_LENGTH]]
    assert len(matching) == 1, sessions
    return matching[0]


def stored_messages(service, session_id: str) -> list[tuple[str, str]]:
    response = httpx.get(f"{service.url}/v1/sessions/{session_id}", timeout=30)
    assert response.status_code == 200, response.text
    return [(message["role"], message["content"]) for message in response.json()["messages"]]


def metric(service, name: str, **labels: str) -> float:
    """One sample of the service's /metrics, found by its labels in any order (0 when absent)."""
    for line in httpx.get(f"{service.url}/metrics", timeout=30).text.splitlines():
        sample = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if sample and sample[1] == name and dict(re.findall(r'(\w+)="([^"]*)"', sample[2] or "")) == labels:
            return float(sample[3])
    return 0.0
