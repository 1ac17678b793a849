"""/v1/models: list, show (status and progress), register while running, unload.

GET answers in OpenAI's list format plus each model's status. POST registers a converted
folder, a GGUF file or a Hugging Face checkpoint folder and answers 202 at once: conversion and
loading run in the background, visible through GET /v1/models/{id}. DELETE unloads.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta, Struct
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
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


def sees_errors(connection: HTTPConnection) -> bool:
    """Whether this caller may read why a model failed: an admin key, or anyone when there are
    no keys. The reason names paths on the server (a registration of /etc/passwd shows it), so
    other keys see only that it failed."""
    key = getattr(connection.state, "api_key", None)
    return key is None or key.admin


def describe(entry: ModelEntry, show_error: bool = True) -> dict:
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
        description["error"] = entry.error if show_error else HIDDEN_ERROR
    if entry.engine is not None:
        description["context_length"] = entry.engine.capacity
        description["max_batch"] = entry.engine.runner.slots
        description["provider"] = entry.engine.placement.name
        # What a request that sets no sampling option gets (generation.json), so clients can show it.
        description["generation_defaults"] = entry.engine.folder.generation.get("defaults", {})
    return description


# What keys that may not read a failure's reason see instead (sees_errors).
HIDDEN_ERROR = "the model failed to load; an admin key can read why"


def _not_found(model_id: str) -> APIError:
    return APIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")


def ready_model(connection: HTTPConnection, model_id: str) -> ModelEntry:
    """The entry for a request's `model`, or the error a client should see."""
    entry = connection.app.state.registry.get(model_id)
    if entry is None:
        raise _not_found(model_id)
    if entry.status != READY or entry.engine is None:
        detail = f": {entry.error if sees_errors(connection) else HIDDEN_ERROR}" if entry.error else ""
        raise APIError(503, f"the model {model_id!r} is {entry.status}{detail}", param="model", code="model_not_ready")
    return entry


async def list_models(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    show_errors = sees_errors(request)
    return JSONResponse({"object": "list", "data": [describe(entry, show_errors) for entry in registry.entries()]})


async def get_model(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    model_id = request.path_params["model_id"]
    entry = registry.get(model_id)
    if entry is None:
        raise _not_found(model_id)
    return JSONResponse(describe(entry, sees_errors(request)))


async def register_model(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    body = decode_body(await request.body(), RegisterModelRequest)
    source = Path(body.source).expanduser()
    if not source.exists():
        raise APIError(400, f"the source {body.source!r} does not exist on the server", param="source")
    if not _may_hold_a_model(source.resolve()):
        raise APIError(
            400, f"the source {body.source!r} is not a model folder or a model file (a non-empty regular file)",
            param="source", code="invalid_source",
        )
    options = ModelOptions(body.quant, body.activations, body.max_context, body.max_batch, body.device)
    try:
        # A worker thread: the registry store may be a database across the network.
        entry = await run_in_threadpool(registry.register, ModelSpec(source.resolve(), body.id), options, True)
    except ValueError as error:
        raise APIError(409, str(error), param="id", code="model_exists") from error
    return JSONResponse(describe(entry), status_code=202)


def _may_hold_a_model(path: Path) -> bool:
    """A folder or a non-empty regular file outside /proc, /sys and /dev: devices and pipes would
    be read forever, and kernel files (/proc/PID/environ) hold secrets, not models."""
    if path.parts[1:2] in (("proc",), ("sys",), ("dev",)):
        return False
    status = path.stat()
    return stat.S_ISDIR(status.st_mode) or (stat.S_ISREG(status.st_mode) and status.st_size > 0)


async def delete_model(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    model_id = request.path_params["model_id"]
    if await run_in_threadpool(registry.unload, model_id) is None:
        raise _not_found(model_id)
    return JSONResponse({"id": model_id, "object": "model", "deleted": True})
