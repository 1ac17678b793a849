"""The models this service serves, each loading, ready or failed, looked up by id."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from converter.cache import cached_conversion
from converter.errors import ConversionError
from service.engine import Engine, EngineLimits
from service.model_folder import ModelFolder, ModelFolderError
from service.runtime import choose_placement
from service.settings import ModelSpec, Settings

log = logging.getLogger(__name__)

LOADING = "loading"
READY = "ready"
FAILED = "failed"


@dataclass
class ModelEntry:
    model_id: str
    source: Path
    status: str = LOADING
    error: str | None = None
    engine: Engine | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def folder(self) -> ModelFolder | None:
        return None if self.engine is None else self.engine.folder


class ModelRegistry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._entries: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()

    def register(self, spec: ModelSpec) -> ModelEntry:
        """Adds a model and loads it in the background (converting a GGUF or checkpoint first)."""
        model_id = spec.model_id or (spec.source.stem if spec.source.is_file() else spec.source.name)
        entry = ModelEntry(model_id, spec.source)
        with self._lock:
            if model_id in self._entries:
                raise ValueError(f"a model with id {model_id!r} is already registered")
            self._entries[model_id] = entry
        threading.Thread(target=self._load, args=(entry, spec), name=f"load:{model_id}", daemon=True).start()
        return entry

    def get(self, model_id: str) -> ModelEntry | None:
        return self._entries.get(model_id)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def any_ready(self) -> bool:
        return any(entry.status == READY for entry in self._entries.values())

    def close(self) -> None:
        for entry in self.entries():
            if entry.engine is not None:
                entry.engine.close()

    def _load(self, entry: ModelEntry, spec: ModelSpec) -> None:
        started = time.monotonic()
        try:
            folder = ModelFolder.load(self._model_folder(spec.source))
            capacity = min(self.settings.max_context, folder.context_length)
            limits = EngineLimits(self.settings.max_batch, self.settings.max_waiting, self.settings.queue_timeout)
            entry.engine = Engine(folder, choose_placement(self.settings.device), capacity, self.settings.threads, limits)
            entry.status = READY
            log.info(
                "model ready",
                extra={
                    "model": entry.model_id,
                    "provider": entry.engine.placement.name,
                    "seconds": round(time.monotonic() - started, 2),
                },
            )
        except (ConversionError, ModelFolderError, FileNotFoundError, RuntimeError, ValueError, OSError) as error:
            entry.status = FAILED
            entry.error = str(error)
            log.error("model failed to load", extra={"model": entry.model_id, "error": str(error)})

    def _model_folder(self, source: Path) -> Path:
        if not source.exists():
            raise FileNotFoundError(f"model source {source} does not exist")
        if source.is_dir() and (source / "manifest.json").is_file():
            return source
        return cached_conversion(source, self.settings.models_dir)
