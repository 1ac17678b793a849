"""A person's view: open the SPA, send a prompt, watch the answer stream in over either
transport, stop it, and see model output rendered as Markdown that can never run."""

from __future__ import annotations

import json
import re
import time
import uuid

import httpx
from playwright.sync_api import expect

from e2e.chat_page import (
    SMOL,
    WATCH_ANSWER,
    answer_text,
    last_answer,
    metric,
    open_chat_page,
    session_named,
    wait_for_answer,
    wait_until_answer_grows,
)

STATS = re.compile(rf"^{SMOL} · \d+ tokens · \d+\.\d tok/s · first token \d+\.\d\d s$")
LONG_PROMPT = "Write a very long story about a lighthouse keeper and the sea."


def assert_answer_grew(page, answer) -> None:
    texts = page.evaluate("window.answerTexts")
    growing = [text for text in dict.fromkeys(texts) if text]
    # Rendered as Markdown, an early state need not be a prefix of the final text ("**bo" becomes
    # "bold"), so growth is: several distinct states, the last of them the final answer.
    assert len(growing) >= 3 and growing[-1] == answer_text(answer)


def test_answer_streams_into_the_page_with_its_numbers_under_it(page, service, spa_server):
    open_chat_page(page, service, spa_server)
    page.evaluate(WATCH_ANSWER)

    page.get_by_test_id("prompt-input").fill("Tell me about the Eiffel Tower in three sentences.")
    page.get_by_test_id("prompt-input").press("Enter")
    wait_for_answer(page)

    assert_answer_grew(page, last_answer(page))
    expect(last_answer(page).get_by_test_id("answer-stats")).to_have_text(STATS)
    assert page.get_by_test_id("message-user").inner_text() == "Tell me about the Eiffel Tower in three sentences."
    assert not page.get_by_test_id("error-banner").is_visible()


def test_shift_enter_adds_a_line_instead_of_sending(page, service, spa_server):
    open_chat_page(page, service, spa_server)
    prompt = page.get_by_test_id("prompt-input")
    prompt.fill("first line")
    prompt.press("Shift+Enter")
    prompt.type("second line")

    assert (prompt.input_value(), page.get_by_test_id("message-user").count()) == ("first line\nsecond line", 0)


def test_an_unreachable_api_shows_a_banner(page, spa_server):
    page.goto(f"{spa_server.url}/?api=http://127.0.0.1:9")
    expect(page.get_by_test_id("error-banner")).to_contain_text("Cannot reach the API")


def test_answer_streams_over_the_websocket(page, service, spa_server):
    open_chat_page(page, service, spa_server)
    page.get_by_test_id("transport-select").select_option("websocket")
    page.evaluate(WATCH_ANSWER)
    sockets = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    posts = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)

    page.get_by_test_id("prompt-input").fill("Tell me about the Eiffel Tower in three sentences.")
    page.get_by_test_id("send-button").click()
    wait_for_answer(page)

    assert_answer_grew(page, last_answer(page))
    expect(last_answer(page).get_by_test_id("answer-stats")).to_have_text(STATS)
    assert sockets and all("/v1/ws" in url for url in sockets)
    assert not any(url.endswith("/v1/chat/completions") for url in posts)
    assert not page.get_by_test_id("error-banner").is_visible()


def test_stop_ends_a_websocket_stream(page, service, spa_server):
    open_chat_page(page, service, spa_server)
    page.get_by_test_id("transport-select").select_option("websocket")
    frames_sent = []
    page.on("websocket", lambda socket: socket.on("framesent", lambda payload: frames_sent.append(json.loads(payload))))
    page.get_by_test_id("prompt-input").fill(LONG_PROMPT)
    page.get_by_test_id("send-button").click()
    wait_until_answer_grows(page)

    page.get_by_test_id("stop-button").click()

    answer = last_answer(page)
    expect(answer.get_by_test_id("answer-stats")).to_contain_text("stopped", timeout=10_000)
    stopped_at = answer_text(answer)
    page.wait_for_timeout(1_000)
    assert answer_text(answer) == stopped_at
    assert [frame["type"] for frame in frames_sent] == ["chat.completion", "cancel"]
    assert metric(service, "llm_num_requests_running", model=SMOL) == 0
    assert not page.get_by_test_id("error-banner").is_visible()


def ended_early(service) -> float:
    return sum(metric(service, "llm_request_success_total", model=SMOL, finished_reason=reason) for reason in ("abort", "cancelled"))


def test_stop_cancels_an_sse_stream_on_the_server(page, service, spa_server):
    open_chat_page(page, service, spa_server)
    ended_before = ended_early(service)
    page.get_by_test_id("prompt-input").fill(LONG_PROMPT)
    page.get_by_test_id("send-button").click()
    wait_until_answer_grows(page)
    assert metric(service, "llm_num_requests_running", model=SMOL) == 1

    page.get_by_test_id("stop-button").click()

    expect(last_answer(page).get_by_test_id("answer-stats")).to_contain_text("stopped", timeout=10_000)
    deadline = time.monotonic() + 5
    while metric(service, "llm_num_requests_running", model=SMOL) and time.monotonic() < deadline:
        time.sleep(0.1)
    # The generation ended early on the server (it did not run on to its end unseen).
    assert (metric(service, "llm_num_requests_running", model=SMOL), ended_early(service)) == (0, ended_before + 1)
    assert not page.get_by_test_id("error-banner").is_visible()


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


def assert_rendered_inert(page, answer) -> None:
    assert page.evaluate("() => window.__xss") is None
    assert answer.locator("img, script, iframe").count() == 0
    expect(answer).to_contain_text('<img src=x onerror="window.__xss = 1">')
    assert answer.locator("a").count() == 1 and answer.locator("a").get_attribute("href") == "https://example.org/docs"
    expect(answer.locator("strong")).to_have_text("bold")
    expect(answer.locator("pre code.language-js")).to_have_text("alert(document.cookie)")


def test_streamed_model_output_renders_as_markdown_and_never_runs(page, service, spa_server, artifacts):
    # No real model can be made to write this text, so this one stream is served by the browser;
    # the test below sends the same text through the real service.
    page.route(f"{service.url}/v1/chat/completions", lambda route: route.fulfill(
        status=200,
        headers={"Content-Type": "text/event-stream", "Access-Control-Allow-Origin": "*"},
        body=sse_body(HOSTILE_ANSWER),
    ))
    open_chat_page(page, service, spa_server)

    page.get_by_test_id("prompt-input").fill("Show me something dangerous")
    page.get_by_test_id("send-button").click()
    wait_for_answer(page)
    page.screenshot(path=str(artifacts / "markdown-desktop.png"), full_page=True)

    assert_rendered_inert(page, last_answer(page))


def test_a_hostile_answer_saved_by_the_service_renders_inert_when_reopened(page, service, spa_server):
    title = f"hostile {uuid.uuid4().hex[:6]}"
    session_id = httpx.post(f"{service.url}/v1/sessions", json={"title": title}, timeout=30).json()["id"]
    # A turn's messages are stored as sent: an assistant message carries the hostile text into
    # the session's history, as a model's answer would be stored.
    response = httpx.post(f"{service.url}/v1/chat/completions", timeout=120, json={"seed": 1, 
        "model": SMOL, "session_id": session_id, "max_tokens": 2,
        "messages": [{"role": "user", "content": "Show me"}, {"role": "assistant", "content": "".join(HOSTILE_ANSWER)},
                     {"role": "user", "content": "Thanks"}],
    })
    assert response.status_code == 200, response.text
    open_chat_page(page, service, spa_server)

    session_named(page, title).get_by_test_id("session-open").click()

    assert_rendered_inert(page, page.get_by_test_id("message-assistant").first)
