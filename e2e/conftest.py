"""The real service and a static server for the SPA, both on loopback, and Debian's Chromium."""

from __future__ import annotations

import subprocess
import sys

import pytest

from converter.cache import cached_conversion
from converter.convert import ConversionOptions, convert
from e2e.chat_page import SMOL, TINY
from service.operations.auth import KeyFile
from service.settings import embedded_default_model
from tests.support import REPO, ServiceProcess, StaticServer
from tests.tiny_models import write_tiny_checkpoint

CHROMIUM = "/usr/bin/chromium"
KEYED_SERVICE_KEY = "sk-test-e2e-the-right-key"
# Requests per minute of the rate-limited service's key: loading the page takes two (models,
# sessions) and a first message two more (a new session, the chat), so the chat is refused.
LIMITED_RPM = 3
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
def smol_model_dir():
    return cached_conversion(embedded_default_model().source, REPO / "models")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    checkpoint = write_tiny_checkpoint(tmp_path_factory.mktemp("checkpoints") / "tiny-llama")
    return convert(checkpoint, tmp_path_factory.mktemp("converted") / "tiny-llama", ConversionOptions(quant="fp32"))


@pytest.fixture(scope="session")
def service(artifacts, tmp_path_factory, smol_model_dir, tiny_model_dir):
    """SmolLM2 (listed first, so the page picks it) and the tiny model."""
    server = ServiceProcess(
        "--model", f"{SMOL}={smol_model_dir}", "--model", f"{TINY}={tiny_model_dir}",
        "--models-dir", str(tmp_path_factory.mktemp("models")),
        "--max-context", "1024", log_path=artifacts / "e2e_service.log",
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def limited_service(artifacts, tmp_path_factory, tiny_model_dir):
    """A service whose only key, stored as `python -m service keys create --rpm` stores it, may
    make LIMITED_RPM requests per minute. Yields the server and the key."""
    data_dir = tmp_path_factory.mktemp("limited-data")
    _, key = KeyFile(data_dir / "keys.json").create("e2e-limited", rpm=LIMITED_RPM)
    server = ServiceProcess(
        "--model", f"{TINY}={tiny_model_dir}", "--models-dir", str(tmp_path_factory.mktemp("models")),
        "--data-dir", str(data_dir), log_path=artifacts / "e2e_limited_service.log",
    )
    yield server, key
    server.stop()


class RestartableService(ServiceProcess):
    """A service that can be killed mid-stream and started again on the same port and data."""

    def __init__(self, *arguments: str, log_path) -> None:
        self.arguments = arguments
        super().__init__(*arguments, log_path=log_path)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def start_again(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(self.port), *self.arguments],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.wait_listening(120)


@pytest.fixture
def restartable_service(artifacts, tmp_path_factory, smol_model_dir):
    server = RestartableService(
        "--model", f"{SMOL}={smol_model_dir}", "--models-dir", str(tmp_path_factory.mktemp("models")),
        "--data-dir", str(tmp_path_factory.mktemp("restart-data")), "--max-context", "1024",
        log_path=artifacts / "e2e_restarted_service.log",
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
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def clipboard_page(browser):
    """A desktop page that may read and write the clipboard (copy buttons)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def phone_page(browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = context.new_page()
    yield page
    context.close()
