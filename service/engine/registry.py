"""The models this service serves, registered and unloaded while it runs, looked up by id.

A model moves through converting (a GGUF file or checkpoint becoming a model folder, with
progress), loading (an ONNX Runtime session and the engine's KV slots), then ready or failed
(with the reason). Unloading takes the model out of the registry at once, so new requests get
404, lets requests in flight finish (for up to `UNLOAD_DRAIN_SECONDS`), then frees the engine.
A memory budget refuses a load that would not fit beside the models already loaded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converter.cache import cached_conversion
from converter.convert import ConversionOptions
from converter.errors import ConversionError
from converter.progress import Progress
from service.engine.engine import Engine, EngineLimits
from service.engine.kv_cache import bytes_per_token
from service.engine.model_folder import ModelFolder, ModelFolderError
from service.engine.runtime import choose_placement
from service.settings import ModelSpec, Settings

log = logging.getLogger(__name__)

CONVERTING = "converting"
LOADING = "loading"
READY = "ready"
FAILED = "failed"
UNLOAD_DRAIN_SECONDS = 30.0
_MEGABYTE = 1024 * 1024


@dataclass(frozen=True)
class ModelOptions:
    """Per-model settings a registration may give; None takes the service's default."""

    quant: str = "keep"
    activations: str | None = None
    max_context: int | None = None
    max_batch: int | None = None
    device: str | None = None


@dataclass
class ModelEntry:
    model_id: str
    source: Path
    options: ModelOptions = ModelOptions()
    status: str = LOADING
    error: str | None = None
    engine: Engine | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    progress: dict = field(default_factory=dict)  # {"stage": str, "fraction": float} while converting
    memory_bytes: int = 0  # the estimate the budget counted
    load_seconds: float | None = None  # conversion plus loading, once ready

    @property
    def folder(self) -> ModelFolder | None:
        return None if self.engine is None else self.engine.folder


class _EntryProgress(Progress):
    """Conversion progress written onto the registry entry, for GET /v1/models/{id}."""

    def __init__(self, entry: ModelEntry) -> None:
        self.entry = entry

    def stage(self, message: str) -> None:
        self.entry.progress = {"stage": message}

    def track(self, items: Iterable, description: str, total: int | None = None) -> Iterator:
        for done, item in enumerate(items):
            if total:
                self.entry.progress = {"stage": description, "fraction": round(done / total, 3)}
            yield item


def memory_estimate(folder: ModelFolder, capacity: int, slots: int) -> int:
    """Bytes a loaded model may take: its weights plus every slot's KV cache filled up."""
    weights = sum(path.stat().st_size for path in folder.path.glob("model.onnx*"))
    config = folder.config
    if folder.graph_interface == "native":
        dtype = np.float16 if folder.manifest.get("target", {}).get("compute") == "float16" else np.float32
        per_token = bytes_per_token(config["num_hidden_layers"], config["num_key_value_heads"], config["head_dim"], dtype)
    else:
        per_token = 0  # optimum graphs grow their past per request; counted as weights only
    return weights + per_token * capacity * slots


class ModelRegistry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._entries: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()
        self.store = None  # a RegistryStore: models registered through the API outlive a restart

    def register(self, spec: ModelSpec, options: ModelOptions = ModelOptions(), remember: bool = False) -> ModelEntry:
        """Adds a model and loads it in the background (converting a GGUF or checkpoint first).
        `remember` keeps it in the store for later starts. Raises ValueError when the id is taken."""
        model_id = spec.model_id or (spec.source.stem if spec.source.is_file() else spec.source.name)
        entry = ModelEntry(model_id, spec.source, options)
        with self._lock:
            if model_id in self._entries:
                raise ValueError(f"a model with id {model_id!r} is already registered")
            self._entries[model_id] = entry
        if remember and self.store is not None:
            try:  # stored first: a model the database refused must not be served by this replica alone
                self.store.save(ModelSpec(spec.source, model_id), options, entry.created)
            except BaseException:
                with self._lock:
                    self._entries.pop(model_id, None)
                raise
        threading.Thread(target=self._load, args=(entry,), name=f"load:{model_id}", daemon=True).start()
        return entry

    def unload(self, model_id: str) -> ModelEntry | None:
        """Takes the model out now; its engine drains and closes in the background."""
        if model_id in self._entries and self.store is not None:
            self.store.delete(model_id)  # first: if the database refuses, the model stays as stored
        with self._lock:
            entry = self._entries.pop(model_id, None)
        if entry is not None and entry.engine is not None:
            engine, entry.engine = entry.engine, None
            threading.Thread(target=engine.close, args=(UNLOAD_DRAIN_SECONDS,), name=f"unload:{model_id}", daemon=True).start()
        return entry

    def restore(self) -> None:
        """Registers again what the API registered before a restart; an id the command line
        already uses keeps the command line's model."""
        if self.store is None:
            return
        for spec, options in self.store.load():
            if spec.model_id in self._entries:
                log.warning("a stored model's id is taken by the command line; keeping the command line's", extra={"model": spec.model_id})
                continue
            self.register(spec, options)

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

    def _load(self, entry: ModelEntry) -> None:
        started = time.monotonic()
        options = entry.options
        try:
            placement = choose_placement(options.device or self.settings.device)
            folder = ModelFolder.load(self._model_folder(entry, placement.device))
            entry.status = LOADING
            entry.progress = {}
            capacity = min(options.max_context or self.settings.max_context, folder.context_length)
            slots = options.max_batch or self.settings.max_batch
            self._reserve(entry, memory_estimate(folder, capacity, slots))
            limits = EngineLimits(slots, self.settings.max_waiting, self.settings.queue_timeout)
            engine = Engine(folder, placement, capacity, self.settings.threads, limits)
            if self._entries.get(entry.model_id) is not entry:  # unloaded while loading
                engine.close()
                return
            entry.engine = engine
            entry.load_seconds = time.monotonic() - started
            entry.status = READY
            log.info(
                "model ready",
                extra={"model": entry.model_id, "provider": placement.name, "seconds": round(time.monotonic() - started, 2)},
            )
        except (ConversionError, ModelFolderError, FileNotFoundError, RuntimeError, ValueError, OSError, MemoryError) as error:
            entry.status = FAILED
            entry.error = str(error)
            entry.memory_bytes = 0
            log.error("model failed to load", extra={"model": entry.model_id, "error": str(error)})

    def _reserve(self, entry: ModelEntry, needed: int) -> None:
        """Counts the model against the memory budget, or raises MemoryError saying why not."""
        budget = self.settings.memory_budget_mb
        with self._lock:
            in_use = sum(other.memory_bytes for other in self._entries.values() if other is not entry)
            if budget and in_use + needed > budget * _MEGABYTE:
                raise MemoryError(
                    f"loading {entry.model_id!r} needs about {needed // _MEGABYTE} MB (weights plus KV cache for "
                    f"its slots); {in_use // _MEGABYTE} MB of the {budget} MB memory budget are in use"
                )
            entry.memory_bytes = needed

    def _model_folder(self, entry: ModelEntry, device: str) -> Path:
        """The entry's model folder, converted for `device` (a graph built for it) when the
        source is not a converted folder already."""
        source = entry.source
        if not source.exists():
            raise FileNotFoundError(f"model source {source} does not exist")
        if source.is_dir() and (source / "manifest.json").is_file():
            return source
        entry.status = CONVERTING
        activations = entry.options.activations or (self.settings.activations if device == "cpu" else None)
        conversion = ConversionOptions(quant=entry.options.quant, activations=activations, device=device)
        return cached_conversion(source, self.settings.models_dir, conversion, _EntryProgress(entry))
