"""GET /v1/models and /v1/models/{id}, in OpenAI's list format plus each model's status."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from service.errors import APIError
from service.registry import READY, ModelEntry, ModelRegistry


def describe(entry: ModelEntry) -> dict:
    description = {
        "id": entry.model_id,
        "object": "model",
        "created": entry.created,
        "owned_by": "local",
        "status": entry.status,
    }
    if entry.error:
        description["error"] = entry.error
    if entry.engine is not None:
        description["context_length"] = entry.engine.capacity
        description["provider"] = entry.engine.placement.name
    return description


def ready_model(registry: ModelRegistry, model_id: str) -> ModelEntry:
    """The entry for a request's `model`, or the error a client should see."""
    entry = registry.get(model_id)
    if entry is None:
        raise APIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
    if entry.status != READY:
        detail = f": {entry.error}" if entry.error else ""
        raise APIError(503, f"the model {model_id!r} is {entry.status}{detail}", param="model", code="model_not_ready")
    return entry


async def list_models(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    return JSONResponse({"object": "list", "data": [describe(entry) for entry in registry.entries()]})


async def get_model(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    model_id = request.path_params["model_id"]
    entry = registry.get(model_id)
    if entry is None:
        raise APIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
    return JSONResponse(describe(entry))
