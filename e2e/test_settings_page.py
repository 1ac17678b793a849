"""The model picker with each model's status, switching models, and the generation settings
(system prompt, temperature, top_p, max tokens): kept across visits and really used."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from playwright.sync_api import expect

from e2e.chat_page import SMOL, TINY, answer_source, chat, last_answer, open_chat_page

SYSTEM_PROMPT = "You are a tour guide in Paris."
QUESTION = "Tell me about the Eiffel Tower."


def set_field(page, test_id: str, value: str) -> None:
    field = page.get_by_test_id(test_id)
    field.fill(value)
    field.press("Tab")  # a person leaves the field; the page keeps the value then


def sent_bodies(page) -> list[dict]:
    """The chat requests the page sends, over SSE or the WebSocket, as JSON objects."""
    bodies = []
    page.on("request", lambda request: bodies.append(request.post_data_json) if request.url.endswith("/v1/chat/completions") else None)
    page.on("websocket", lambda socket: socket.on("framesent", lambda payload: bodies.append(json.loads(payload))))
    return bodies


@pytest.mark.parametrize("transport", ["sse", "websocket"])
def test_the_generation_settings_are_kept_and_sent_with_every_request(page, service, spa_server, transport):
    open_chat_page(page, service, spa_server)
    page.get_by_test_id("transport-select").select_option(transport)
    set_field(page, "settings-system-prompt", SYSTEM_PROMPT)
    set_field(page, "settings-temperature", "0")
    set_field(page, "settings-top-p", "0.9")
    set_field(page, "settings-max-tokens", "12")
    page.reload()
    expect(page.get_by_test_id("model-select")).to_have_value(SMOL)
    bodies = sent_bodies(page)

    chat(page, f"{QUESTION} ({uuid.uuid4().hex[:6]})")

    expect(last_answer(page).get_by_test_id("answer-stats")).to_contain_text("· 12 tokens ·")
    expect(page.get_by_test_id("message-system")).to_have_text(SYSTEM_PROMPT)
    body = bodies[0]
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0, 0.9, 12)
    # Greedy decoding of the same system prompt and question over REST gives the same answer:
    # the service really used the settings.
    question = page.get_by_test_id("message-user").inner_text()
    rest = httpx.post(f"{service.url}/v1/chat/completions", timeout=120, json={"seed": 1, 
        "model": SMOL, "temperature": 0, "top_p": 0.9, "max_tokens": 12,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
    }).json()
    assert answer_source(last_answer(page)) == rest["choices"][0]["message"]["content"]


def test_an_out_of_range_setting_shows_the_service_error(page, service, spa_server):
    open_chat_page(page, service, spa_server)
    set_field(page, "settings-temperature", "5")

    page.get_by_test_id("prompt-input").fill("Hello")
    page.get_by_test_id("send-button").click()

    expect(page.get_by_test_id("error-banner")).to_contain_text("temperature")


def test_switching_models_answers_with_the_chosen_model(page, service, spa_server):
    open_chat_page(page, service, spa_server)
    set_field(page, "settings-max-tokens", "16")
    bodies = sent_bodies(page)

    page.get_by_test_id("model-select").select_option(TINY)
    chat(page, "Hello")
    page.get_by_test_id("model-select").select_option(SMOL)
    chat(page, "Hello again")

    stats = [element.inner_text() for element in page.get_by_test_id("answer-stats").all()]
    assert [body["model"] for body in bodies] == [TINY, SMOL]
    assert [text.split(" · ")[0] for text in stats] == [TINY, SMOL]
    page.get_by_test_id("model-select").select_option(TINY)
    page.reload()
    expect(page.get_by_test_id("model-select")).to_have_value(TINY)


def test_the_picker_shows_each_models_status(page, service, spa_server, tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "README.txt").write_text("nothing to convert here")
    broken = f"broken-{uuid.uuid4().hex[:6]}"
    response = httpx.post(f"{service.url}/v1/models", json={"id": broken, "source": str(not_a_model)}, timeout=30)
    assert response.status_code == 202, response.text
    try:
        open_chat_page(page, service, spa_server)

        options = page.get_by_test_id("model-select").locator("option")
        expect(options.filter(has_text=broken)).to_have_text(f"{broken} · failed", timeout=60_000)
        expect(options.filter(has_text=SMOL)).to_have_text(f"{SMOL} · ready")
        assert options.filter(has_text=broken).is_disabled() and options.filter(has_text=SMOL).is_enabled()
    finally:
        httpx.delete(f"{service.url}/v1/models/{broken}", timeout=30)
