"""A person's view: open the SPA, pick the model, send a prompt, watch the answer stream in."""

from __future__ import annotations

from playwright.sync_api import expect

# Records the assistant message's text every time the DOM changes, so the test can see growth.
WATCH_ANSWER = """
() => {
  window.answerTexts = [];
  new MutationObserver(() => {
    const answers = document.querySelectorAll('[data-testid="message-assistant"]');
    if (answers.length) window.answerTexts.push(answers[answers.length - 1].firstChild?.textContent ?? "");
  }).observe(document.getElementById("messages"), { childList: true, subtree: true, characterData: true });
}
"""


def test_answer_streams_into_the_page(page, service, spa_server, artifacts):
    page.goto(f"{spa_server.url}/?api={service.url}")
    expect(page.get_by_test_id("model-select")).to_have_value("SmolLM2-135M-Instruct")
    page.evaluate(WATCH_ANSWER)

    page.get_by_test_id("prompt-input").fill("Tell me about the Eiffel Tower in three sentences.")
    page.get_by_test_id("send-button").click()
    answer = page.get_by_test_id("message-assistant")
    expect(answer).not_to_have_class("message assistant streaming", timeout=60_000)
    expect(page.locator(".stats")).to_be_visible()
    page.screenshot(path=str(artifacts / "chat-desktop.png"), full_page=True)

    texts = page.evaluate("window.answerTexts")
    growing = [text for text in dict.fromkeys(texts) if text]
    final = answer.evaluate("element => element.firstChild.textContent")
    assert len(growing) >= 3 and growing[-1] == final and all(final.startswith(text) for text in growing)
    assert page.get_by_test_id("message-user").inner_text() == "Tell me about the Eiffel Tower in three sentences."
    assert not page.get_by_test_id("error-banner").is_visible()


def test_an_unreachable_api_shows_a_banner(page, spa_server):
    page.goto(f"{spa_server.url}/?api=http://127.0.0.1:9")
    expect(page.get_by_test_id("error-banner")).to_contain_text("Cannot reach the API")
