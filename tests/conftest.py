"""Session fixtures: tiny random checkpoints, the real SmolLM2 model and a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from converter.cache import cached_conversion
from converter.convert import ConversionOptions, convert
from service.settings import embedded_default_model
from tests.real_models import gemma3_gguf
from tests.support import REPO, ServiceProcess
from tests.tiny_models import write_tiny_checkpoint


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = REPO / "test-artifacts"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("checkpoints") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "tiny-llama"
    return convert(tiny_checkpoint, out, ConversionOptions(quant="fp32"))


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return embedded_default_model().source


@pytest.fixture(scope="session")
def gemma3_gguf_path() -> Path:
    """Gemma 3 270M Q4_K_M, joined once into the ignored models/sources/ folder."""
    return gemma3_gguf(REPO / "models" / "sources")


@pytest.fixture(scope="session")
def smollm2_model_dir(smollm2_gguf) -> Path:
    """The embedded model converted once into the repo's models/ cache, as the service does."""
    return cached_conversion(smollm2_gguf, REPO / "models")


@pytest.fixture(scope="module")
def smollm2_engine(smollm2_model_dir):
    """An engine with four slots on the embedded model, for tests that generate through it."""
    from service.engine.engine import Engine, EngineLimits
    from service.engine.model_folder import ModelFolder
    from service.engine.runtime import choose_placement

    engine = Engine(ModelFolder.load(smollm2_model_dir), choose_placement("cpu"), 1024, threads=2, limits=EngineLimits(slots=4))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def api_server(tiny_model_dir, smollm2_model_dir, artifacts, tmp_path_factory):
    server = ServiceProcess(
        "--model",
        f"tiny={tiny_model_dir}",
        "--model",
        f"SmolLM2-135M-Instruct={smollm2_model_dir}",
        "--models-dir",
        str(tmp_path_factory.mktemp("models")),
        "--data-dir",
        str(tmp_path_factory.mktemp("data")),
        "--max-context",
        "1024",
        log_path=artifacts / "api_server.log",
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL server for the whole run (tests/postgres_server.py); each test that
    needs a clean slate creates its own database in it."""
    from tests.postgres_server import PostgresServer

    server = PostgresServer()
    yield server
    server.destroy()
