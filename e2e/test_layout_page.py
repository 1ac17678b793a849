"""The page at desktop (1280 wide) and phone (390 wide) width: usable, labelled, and saved as
screenshots in test-artifacts/."""

from __future__ import annotations

from playwright.sync_api import expect

from e2e.chat_page import chat, open_chat_page

MAIN_CONTROLS = ["model-select", "settings-toggle", "prompt-input", "send-button", "new-chat"]
SETTINGS_CONTROLS = [
    "settings-base-url", "settings-api-key", "transport-select", "settings-system-prompt",
    "settings-temperature", "settings-top-p", "settings-max-tokens",
]

# Every control the page shows, with the name assistive technology gives it (label, aria-label or text).
UNNAMED_CONTROLS = """
() => [...document.querySelectorAll("input, select, textarea, button")]
  .filter((control) => !(control.labels?.length && control.labels[0].textContent.trim())
    && !control.getAttribute("aria-label") && !(control.tagName === "BUTTON" && control.textContent.trim()))
  .map((control) => control.outerHTML)
"""


def overflow(page) -> int:
    """How far the page is wider than the screen: a phone would scroll sideways."""
    return page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")


def within_screen(page, test_id: str) -> bool:
    box = page.get_by_test_id(test_id).bounding_box()
    size = page.viewport_size
    return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= size["width"] and box["y"] + box["height"] <= size["height"]


def test_the_desktop_page_shows_settings_and_chat_side_by_side(page, service, spa_server, artifacts):
    open_chat_page(page, service, spa_server)
    page.get_by_test_id("settings-max-tokens").fill("80")
    page.get_by_test_id("settings-max-tokens").press("Tab")
    chat(page, "Write a short list of three fruits with a line about each.")
    page.screenshot(path=str(artifacts / "chat-desktop.png"))

    assert page.viewport_size["width"] == 1280 and overflow(page) == 0
    assert all(page.get_by_test_id(test_id).is_visible() for test_id in MAIN_CONTROLS + SETTINGS_CONTROLS + ["session-list"])
    assert all(within_screen(page, test_id) for test_id in MAIN_CONTROLS)
    assert page.evaluate(UNNAMED_CONTROLS) == []


def test_a_phone_can_chat_and_reach_every_setting(phone_page, service, spa_server, artifacts):
    page = phone_page
    open_chat_page(page, service, spa_server)
    # The settings start folded away so the chat has the screen.
    assert not page.get_by_test_id("settings-api-key").is_visible()
    page.get_by_test_id("settings-toggle").click()
    page.get_by_test_id("settings-max-tokens").fill("80")
    page.get_by_test_id("settings-max-tokens").press("Tab")
    page.get_by_test_id("settings-toggle").click()

    chat(page, "Write a short list of three fruits with a line about each.")
    page.screenshot(path=str(artifacts / "chat-phone.png"))
    assert page.viewport_size["width"] == 390 and overflow(page) == 0
    assert all(within_screen(page, test_id) for test_id in MAIN_CONTROLS)
    expect(page.get_by_test_id("message-assistant").get_by_test_id("copy-button")).to_be_visible()
    expect(page.get_by_test_id("model-select")).to_contain_text("· ready")

    page.get_by_test_id("settings-toggle").click()
    page.screenshot(path=str(artifacts / "settings-phone.png"))
    assert all(page.get_by_test_id(test_id).is_visible() for test_id in SETTINGS_CONTROLS)
    assert overflow(page) == 0 and page.evaluate(UNNAMED_CONTROLS) == []
    expect(page.get_by_test_id("settings-toggle")).to_have_attribute("aria-expanded", "true")
