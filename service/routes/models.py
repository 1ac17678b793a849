"""/v1/models: list, show (status and progress), register while running, unload.

GET answers in OpenAI's list format plus each model's status. POST registers a converted
folder, a GGUF file or a Hugging Face checkpoint folder and answers 202 at once: conversion and
loading run in the background, visible through GET /v1/models/{id}. DELETE unloads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta, Struct
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from service.errors import APIError
from service.registry import READY, ModelEntry, ModelOptions, ModelRegistry
from service.schemas import decode_body
from service.settings import ModelSpec


class RegisterModelRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    id: Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
    source: Annotated[str, Meta(min_length=1)]  # a path on the server
    quant: Literal["keep", "fp32", "fp16", "int8", "int4"] = "keep"
    activations: Literal["fp32", "int8"] | None = None  # None: the service's --activations
    max_context: Annotated[int, Meta(ge=16, le=1_048_576)] | None = None
    max_batch: Annotated[int, Meta(ge=1, le=256)] | None = None
    device: Literal["auto", "cpu", "cuda"] | None = None


def describe(entry: ModelEntry) -> dict:
    description = {
        "id": entry.model_id,
        "object": "model",
        "created": entry.created,
        "owned_by": "local",
        "status": entry.status,
    }
    if entry.progress:
        description["progress"] = entry.progress
    if entry.error:
        description["error"] = entry.error
    if entry.engine is not None:
        description["context_length"] = entry.engine.capacity
        description["max_batch"] = entry.engine.runner.slots
        description["provider"] = entry.engine.placement.name
        # What a request that sets no sampling option gets (generation.json), so clients can show it.
        description["generation_defaults"] = entry.engine.folder.generation.get("defaults", {})
    return description


def _not_found(model_id: str) -> APIError:
    return APIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")


def ready_model(registry: ModelRegistry, model_id: str) -> ModelEntry:
    """The entry for a request's `model`, or the error a client should see."""
    entry = registry.get(model_id)
    if entry is None:
        raise _not_found(model_id)
    if entry.status != READY or entry.engine is None:
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
        raise _not_found(model_id)
    return JSONResponse(describe(entry))


async def register_model(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    body = decode_body(await request.body(), RegisterModelRequest)
    source = Path(body.source).expanduser()
    if not source.exists():
        raise APIError(400, f"the source {body.source!r} does not exist on the server", param="source")
    options = ModelOptions(body.quant, body.activations, body.max_context, body.max_batch, body.device)
    try:
        # A worker thread: the registry store may be a database across the network.
        entry = await run_in_threadpool(registry.register, ModelSpec(source.resolve(), body.id), options, True)
    except ValueError as error:
        raise APIError(409, str(error), param="id", code="model_exists") from error
    return JSONResponse(describe(entry), status_code=202)


async def delete_model(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    model_id = request.path_params["model_id"]
    if await run_in_threadpool(registry.unload, model_id) is None:
        raise _not_found(model_id)
    return JSONResponse({"id": model_id, "object": "model", "deleted": True})
