"""Settings that fit small models: unset values take the model's generation.json defaults, else
temperature 0.7 and 512 max tokens; the panel shows them and "Reset to defaults" returns to them."""

from __future__ import annotations

import json
import shutil
import uuid

import httpx
import pytest
from playwright.sync_api import expect

from e2e.chat_page import SEED, SMOL, TINY, chat, open_chat_page


def sent_bodies(page) -> list[dict]:
    bodies = []
    page.on("request", lambda request: bodies.append(request.post_data_json) if request.url.endswith("/v1/chat/completions") else None)
    return bodies


def generation_fields(page) -> tuple[str, str, str, str]:
    return tuple(page.get_by_test_id(f"settings-{name}").input_value() for name in ("temperature", "top-p", "max-tokens", "seed"))


def test_without_model_defaults_the_page_asks_for_temperature_0_7_and_512_tokens(page, service, spa_server):
    open_chat_page(page, service, spa_server, model=SMOL)
    page.get_by_test_id("model-select").select_option(TINY)
    bodies = sent_bodies(page)

    chat(page, "Hello")

    assert generation_fields(page) == ("0.7", "", "512", str(SEED))
    expect(page.get_by_test_id("settings-defaults")).to_have_text(
        f"Defaults for {TINY}: temperature 0.7, top p the server's, max tokens 512, random seed."
    )
    assert (bodies[0]["temperature"], bodies[0]["max_tokens"], bodies[0]["seed"], "top_p" in bodies[0]) == (0.7, 512, SEED, False)


@pytest.fixture
def model_with_defaults(service, tiny_model_dir, tmp_path):
    """The tiny model again, whose generation.json asks for temperature 0.3 and top_p 0.9."""
    folder = tmp_path / "tiny-with-defaults"
    shutil.copytree(tiny_model_dir, folder)
    generation = json.loads((folder / "generation.json").read_text())
    (folder / "generation.json").write_text(json.dumps({**generation, "defaults": {"temperature": 0.3, "top_p": 0.9}}))
    model_id = f"tiny-defaults-{uuid.uuid4().hex[:6]}"
    response = httpx.post(f"{service.url}/v1/models", json={"id": model_id, "source": str(folder)}, timeout=30)
    assert response.status_code == 202, response.text
    yield model_id
    httpx.delete(f"{service.url}/v1/models/{model_id}", timeout=30)


def test_a_models_generation_defaults_fill_the_settings_and_are_sent(page, service, spa_server, model_with_defaults):
    open_chat_page(page, service, spa_server)
    options = page.get_by_test_id("model-select").locator("option")
    expect(options.filter(has_text=model_with_defaults)).to_have_text(f"{model_with_defaults} · ready", timeout=60_000)
    bodies = sent_bodies(page)

    page.get_by_test_id("model-select").select_option(model_with_defaults)
    chat(page, "Hello")

    assert generation_fields(page) == ("0.3", "0.9", "512", str(SEED))
    expect(page.get_by_test_id("settings-defaults")).to_contain_text("temperature 0.3, top p 0.9, max tokens 512")
    assert (bodies[0]["temperature"], bodies[0]["top_p"], bodies[0]["max_tokens"]) == (0.3, 0.9, 512)


def test_reset_to_defaults_forgets_what_was_set(page, service, spa_server):
    open_chat_page(page, service, spa_server)
    for name, value in (("temperature", "1.5"), ("top-p", "0.5"), ("max-tokens", "20"), ("seed", "3")):
        page.get_by_test_id(f"settings-{name}").fill(value)
        page.get_by_test_id(f"settings-{name}").press("Tab")
    page.reload()
    expect(page.get_by_test_id("model-select")).to_have_value(SMOL)
    assert generation_fields(page) == ("1.5", "0.5", "20", "3")

    page.get_by_test_id("settings-reset").click()

    assert generation_fields(page) == ("0.7", "", "512", "")
    page.reload()
    expect(page.get_by_test_id("model-select")).to_have_value(SMOL)
    # Defaults again after a reload (and the seed every page load of these tests gets).
    assert generation_fields(page) == ("0.7", "", "512", str(SEED))
