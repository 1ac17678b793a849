"""Which model a request names, and what a caller may see of it."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from service.engine.registry import READY, ModelEntry
from service.errors import APIError
from service.serving.response_bodies import Model, ModelMemory

# What keys that may not read a failure's reason see instead (sees_errors).
HIDDEN_ERROR = "the model failed to load; an admin key can read why"


def sees_errors(connection: HTTPConnection) -> bool:
    """Whether this caller may read why a model failed: an admin key, or anyone when there are
    no keys. The reason names paths on the server (a registration of /etc/passwd shows it), so
    other keys see only that it failed."""
    key = getattr(connection.state, "api_key", None)
    return key is None or key.admin


def model_body(entry: ModelEntry, show_error: bool = True) -> Model:
    model = Model(id=entry.model_id, created=entry.created, owned_by="local", status=entry.status)
    if entry.progress:
        model.progress = entry.progress
    if entry.error:
        model.error = entry.error if show_error else HIDDEN_ERROR
    if entry.engine is not None:
        model.context_length = entry.engine.capacity
        model.max_batch = entry.engine.runner.slots
        model.provider = entry.engine.placement.name
        # What a request that sets no sampling option gets (generation.json), so clients can show it.
        model.generation_defaults = entry.engine.folder.generation.get("defaults", {})
    if entry.engine is not None and entry.memory is not None:
        model.memory_bytes = ModelMemory(loaded=entry.memory.loaded, kv_cache_max=entry.memory.kv_cache_max)
    return model


def model_not_found(model_id: str) -> APIError:
    return APIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")


def ready_model(connection: HTTPConnection, model_id: str) -> ModelEntry:
    """The entry for a request's `model`, or the error a client should see."""
    entry = connection.app.state.registry.get(model_id)
    if entry is None:
        raise model_not_found(model_id)
    if entry.status != READY or entry.engine is None:
        detail = f": {entry.error if sees_errors(connection) else HIDDEN_ERROR}" if entry.error else ""
        raise APIError(503, f"the model {model_id!r} is {entry.status}{detail}", param="model", code="model_not_ready")
    return entry
