"""A person's view: open the SPA, pick the model, send a prompt, watch the answer stream in."""

from __future__ import annotations

import json

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
    # Rendered as Markdown, an early state need not be a prefix of the final text ("**bo" becomes
    # "bold"), so growth is: several distinct states, the last of them the final answer.
    assert len(growing) >= 3 and growing[-1] == final
    assert page.get_by_test_id("message-user").inner_text() == "Tell me about the Eiffel Tower in three sentences."
    assert not page.get_by_test_id("error-banner").is_visible()


def test_an_unreachable_api_shows_a_banner(page, spa_server):
    page.goto(f"{spa_server.url}/?api=http://127.0.0.1:9")
    expect(page.get_by_test_id("error-banner")).to_contain_text("Cannot reach the API")


def test_answer_streams_over_the_websocket(page, service, spa_server, artifacts):
    page.goto(f"{spa_server.url}/?api={service.url}")
    page.get_by_test_id("transport-select").select_option("websocket")
    expect(page.get_by_test_id("model-select")).to_have_value("SmolLM2-135M-Instruct")
    page.evaluate(WATCH_ANSWER)
    sockets = []
    page.on("websocket", lambda socket: sockets.append(socket.url))

    page.get_by_test_id("prompt-input").fill("Tell me about the Eiffel Tower in three sentences.")
    page.get_by_test_id("send-button").click()
    answer = page.get_by_test_id("message-assistant")
    expect(answer).not_to_have_class("message assistant streaming", timeout=60_000)
    expect(page.locator(".stats")).to_be_visible()

    texts = page.evaluate("window.answerTexts")
    growing = [text for text in dict.fromkeys(texts) if text]
    final = answer.evaluate("element => element.firstChild.textContent")
    # Rendered as Markdown, an early state need not be a prefix of the final text ("**bo" becomes
    # "bold"), so growth is: several distinct states, the last of them the final answer.
    assert len(growing) >= 3 and growing[-1] == final
    assert sockets and all("/v1/ws" in url for url in sockets)
    assert not page.get_by_test_id("error-banner").is_visible()
    page.screenshot(path=str(artifacts / "chat-websocket-desktop.png"))
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(artifacts / "chat-websocket-phone.png"))


def test_stop_ends_a_websocket_stream(page, service, spa_server):
    page.goto(f"{spa_server.url}/?api={service.url}")
    page.get_by_test_id("transport-select").select_option("websocket")
    expect(page.get_by_test_id("model-select")).to_have_value("SmolLM2-135M-Instruct")
    frames_sent = []
    page.on("websocket", lambda socket: socket.on("framesent", lambda payload: frames_sent.append(json.loads(payload))))
    page.get_by_test_id("prompt-input").fill("Write a very long story about a lighthouse keeper and the sea.")
    page.get_by_test_id("send-button").click()
    answer = page.get_by_test_id("message-assistant")
    page.wait_for_function(
        """() => (document.querySelector('[data-testid="message-assistant"]')?.firstChild?.textContent ?? "").length > 20""",
        timeout=60_000,
    )

    page.get_by_test_id("stop-button").click()

    expect(answer).not_to_have_class("message assistant streaming", timeout=10_000)
    stopped_at = answer.evaluate("element => element.firstChild.textContent")
    page.wait_for_timeout(1_000)
    assert answer.evaluate("element => element.firstChild.textContent") == stopped_at
    assert [frame["type"] for frame in frames_sent] == ["chat.completion", "cancel"]
    assert page.locator(".stats").count() == 0 and not page.get_by_test_id("error-banner").is_visible()


def test_a_wrong_api_key_shows_the_bad_key_banner(page, keyed_service, spa_server):
    page.goto(f"{spa_server.url}/?api={keyed_service.url}")
    page.get_by_test_id("settings-api-key").fill("sk-test-not-the-right-key")
    page.get_by_test_id("settings-api-key").press("Enter")
    page.get_by_test_id("settings-api-key").blur()
    expect(page.get_by_test_id("error-banner")).to_contain_text("The API key was refused")


def test_a_rate_limit_shows_how_long_to_wait(page, service, spa_server):
    page.route(f"{service.url}/v1/chat/completions", lambda route: route.fulfill(
        status=429,
        headers={"Retry-After": "7", "Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Retry-After"},
        json={"error": {"message": "rate limit reached", "type": "rate_limit_exceeded", "param": None, "code": "rate_limit_exceeded"}},
    ))
    page.goto(f"{spa_server.url}/?api={service.url}")
    expect(page.get_by_test_id("model-select")).to_have_value("SmolLM2-135M-Instruct")

    page.get_by_test_id("prompt-input").fill("Hello")
    page.get_by_test_id("send-button").click()

    expect(page.get_by_test_id("error-banner")).to_contain_text("wait 7 seconds")


HOSTILE_ANSWER = [
    "Here: <img src=x onerror=\"window.__xss = 1\"> and <script>window.__xss = 2</script>\n",
    "[a link](javascript:window.__xss=3) and [a safe one](https://example.org/docs)\n\n",
    "**bold** and `inline code`\n",
    "```js\nalert(document.cookie)\n```\n",
]


def sse_body(pieces: list[str]) -> str:
    chunks = [{"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
               "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}]} for piece in pieces]
    return "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"


def test_model_output_renders_as_markdown_and_never_runs(page, service, spa_server, artifacts):
    page.route(f"{service.url}/v1/chat/completions", lambda route: route.fulfill(
        status=200,
        headers={"Content-Type": "text/event-stream", "Access-Control-Allow-Origin": "*"},
        body=sse_body(HOSTILE_ANSWER),
    ))
    page.goto(f"{spa_server.url}/?api={service.url}")
    expect(page.get_by_test_id("model-select")).to_have_value("SmolLM2-135M-Instruct")

    page.get_by_test_id("prompt-input").fill("Show me something dangerous")
    page.get_by_test_id("send-button").click()
    answer = page.get_by_test_id("message-assistant")
    expect(answer).not_to_have_class("message assistant streaming", timeout=30_000)
    page.screenshot(path=str(artifacts / "markdown-desktop.png"), full_page=True)

    assert page.evaluate("() => window.__xss") is None
    assert answer.locator("img, script, iframe").count() == 0
    expect(answer).to_contain_text('<img src=x onerror="window.__xss = 1">')
    assert answer.locator("a").count() == 1 and answer.locator("a").get_attribute("href") == "https://example.org/docs"
    expect(answer.locator("strong")).to_have_text("bold")
    expect(answer.locator("pre code.language-js")).to_have_text("alert(document.cookie)")
