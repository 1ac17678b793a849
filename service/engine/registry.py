"""The models this service serves, registered and unloaded while it runs, looked up by id.

A model moves through converting (a GGUF file or checkpoint becoming a model folder, with
progress), loading (an ONNX Runtime session and the engine's KV slots), then ready or failed
(with the reason). Unloading takes the model out of the registry at once, so new requests get
404, lets requests in flight finish (for up to `UNLOAD_DRAIN_SECONDS`), then frees the engine.
A memory budget refuses a load that would not fit beside the models already loaded: before
loading, by an estimate from the files; once loaded, by what the load measurably took.
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
from service.engine.process_memory import release_free_memory, resident_bytes
from service.engine.runtime import Placement, choose_placement
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


@dataclass(frozen=True)
class MeasuredMemory:
    """What a loaded model counts against the memory budget, in bytes."""

    loaded: int  # resident memory the load added, freed heap given back first (on a GPU, plus the weight files)
    kv_cache_max: int  # every slot's KV cache filled: resident only as tokens are cached, but it may grow to this

    @property
    def counted(self) -> int:
        return self.loaded + self.kv_cache_max


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
    memory_bytes: int = 0  # what the budget counts: the files' estimate while loading, then memory.counted
    memory: MeasuredMemory | None = None  # once ready
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


def weight_file_bytes(folder: ModelFolder) -> int:
    """The size of the graph and its weights on disk: what loading takes, roughly, before it is
    measured."""
    return sum(path.stat().st_size for path in folder.path.glob("model.onnx*"))


def kv_cache_max_bytes(folder: ModelFolder, capacity: int, slots: int) -> int:
    """Bytes of every slot's KV cache filled to capacity."""
    config = folder.config
    if folder.graph_interface != "native":
        return 0  # optimum graphs grow their past per request; counted as weights only
    dtype = np.float16 if folder.manifest.get("target", {}).get("compute") == "float16" else np.float32
    per_token = bytes_per_token(config["num_hidden_layers"], config["num_key_value_heads"], config["head_dim"], dtype)
    return per_token * capacity * slots


def _loaded_bytes(before: int | None, after: int | None, folder: ModelFolder, device: str) -> int:
    """What a load took, from resident memory before and after it."""
    if before is None or after is None:
        return weight_file_bytes(folder)  # no /proc to measure with: the files stand in
    grown = max(0, after - before)  # a request of another model freeing memory meanwhile could make it negative
    if device != "cpu":
        grown += weight_file_bytes(folder)  # weights in device memory, which resident memory does not show
    return grown


class ModelRegistry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._entries: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()
        # Held from folder load to engine start, and while an unloaded engine is freed, so that
        # no load's resident growth includes another's allocations or frees.
        self._measuring = threading.Lock()
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
            self._retire(engine, model_id)
        return entry

    def _retire(self, engine: Engine, model_id: str) -> None:
        """Drains and closes an unloaded engine in the background, then frees it and gives the
        memory back to the operating system."""

        def retire() -> None:
            nonlocal engine
            engine.close(UNLOAD_DRAIN_SECONDS)
            with self._measuring:
                engine = None  # the last reference: the session and the KV cache are freed here
                release_free_memory()

        threading.Thread(target=retire, name=f"unload:{model_id}", daemon=True).start()

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
        try:
            placement = choose_placement(entry.options.device or self.settings.device)
            path = self._model_folder(entry, placement.device)
            with self._measuring:  # loads one at a time, so that each is measured alone
                self._start_engine(entry, path, placement)
            if entry.engine is None:  # unloaded while loading
                return
            entry.load_seconds = time.monotonic() - started
            entry.status = READY
            log.info(
                "model ready",
                extra={
                    "model": entry.model_id, "provider": placement.name, "seconds": round(time.monotonic() - started, 2),
                    "loaded_mb": entry.memory.loaded // _MEGABYTE, "kv_cache_max_mb": entry.memory.kv_cache_max // _MEGABYTE,
                },
            )
        except (ConversionError, ModelFolderError, FileNotFoundError, RuntimeError, ValueError, OSError, MemoryError) as error:
            entry.status = FAILED
            entry.error = str(error)
            entry.memory_bytes = 0
            entry.memory = None
            log.error("model failed to load", extra={"model": entry.model_id, "error": str(error)})

    def _start_engine(self, entry: ModelEntry, path: Path, placement: Placement) -> None:
        """Loads the folder and starts its engine on the entry, measuring the resident memory that
        took. Raises MemoryError when the estimate, or then the measurement, is past the budget."""
        options = entry.options
        release_free_memory()  # so that the growth is not hidden by freed memory the trim below gives back
        before = resident_bytes()
        folder = ModelFolder.load(path)
        entry.status = LOADING
        entry.progress = {}
        capacity = min(options.max_context or self.settings.max_context, folder.context_length)
        slots = options.max_batch or self.settings.max_batch
        kv_cache_max = kv_cache_max_bytes(folder, capacity, slots)
        self._reserve(entry, weight_file_bytes(folder) + kv_cache_max)
        limits = EngineLimits(slots, self.settings.max_waiting, self.settings.queue_timeout)
        engine = Engine(folder, placement, capacity, self.settings.threads, limits)
        release_free_memory()  # what parsing the tokenizer and building the session freed (193 of 290 MiB for Gemma 3)
        memory = MeasuredMemory(_loaded_bytes(before, resident_bytes(), folder, placement.device), kv_cache_max)
        refusal = None
        try:
            if self._admit_loaded(entry, engine, memory):
                return
        except MemoryError as error:
            refusal = error
        engine.close()
        del engine, folder  # the last references: the session and the KV cache are freed here, before the trim
        release_free_memory()
        if refusal is not None:
            raise refusal

    def _reserve(self, entry: ModelEntry, needed: int) -> None:
        """Counts the model's estimate against the memory budget before loading it, or raises
        MemoryError saying why not."""
        budget = self.settings.memory_budget_mb
        with self._lock:
            in_use = sum(other.memory_bytes for other in self._entries.values() if other is not entry)
            if budget and in_use + needed > budget * _MEGABYTE:
                raise MemoryError(
                    f"loading {entry.model_id!r} needs about {needed // _MEGABYTE} MB (its files plus KV cache for "
                    f"its slots); {in_use // _MEGABYTE} MB of the {budget} MB memory budget are in use"
                )
            entry.memory_bytes = needed

    def _admit_loaded(self, entry: ModelEntry, engine: Engine, memory: MeasuredMemory) -> bool:
        """Puts the started engine on the entry, counting what the load measurably took in place
        of the estimate; False when the model was unloaded meanwhile. Raises MemoryError when the
        measurement is past the budget beside the other models."""
        budget = self.settings.memory_budget_mb
        with self._lock:  # as unload takes the entry out: an engine set after that would never close
            if self._entries.get(entry.model_id) is not entry:
                return False
            in_use = sum(other.memory_bytes for other in self._entries.values() if other is not entry)
            if budget and in_use + memory.counted > budget * _MEGABYTE:
                raise MemoryError(
                    f"loading {entry.model_id!r} took {memory.counted // _MEGABYTE} MB as measured "
                    f"({memory.loaded // _MEGABYTE} MB loaded plus {memory.kv_cache_max // _MEGABYTE} MB of KV cache "
                    f"for its slots when full); {in_use // _MEGABYTE} MB of the {budget} MB memory budget are in use"
                )
            entry.memory_bytes = memory.counted
            entry.memory = memory
            entry.engine = engine
            return True

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
