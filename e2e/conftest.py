"""The real service and a static server for the SPA, both on loopback, and Debian's Chromium."""

from __future__ import annotations

import pytest

from converter.cache import cached_conversion
from service.settings import embedded_default_model
from tests.support import REPO, ServiceProcess, StaticServer

CHROMIUM = "/usr/bin/chromium"
KEYED_SERVICE_KEY = "sk-test-e2e-the-right-key"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def artifacts():
    folder = REPO / "test-artifacts"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def service(artifacts, tmp_path_factory):
    model_dir = cached_conversion(embedded_default_model().source, REPO / "models")
    server = ServiceProcess(
        "--model", f"SmolLM2-135M-Instruct={model_dir}", "--models-dir", str(tmp_path_factory.mktemp("models")),
        "--max-context", "1024", log_path=artifacts / "e2e_service.log",
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def keyed_service(artifacts, tmp_path_factory):
    """A second service that accepts only the key KEYED_SERVICE_KEY."""
    model_dir = cached_conversion(embedded_default_model().source, REPO / "models")
    server = ServiceProcess(
        "--model", f"SmolLM2-135M-Instruct={model_dir}", "--models-dir", str(tmp_path_factory.mktemp("models")),
        "--max-context", "1024", "--api-key", KEYED_SERVICE_KEY, log_path=artifacts / "e2e_keyed_service.log",
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def spa_server(artifacts):
    server = StaticServer(REPO / "spa", artifacts / "e2e_static.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    yield page
    context.close()
