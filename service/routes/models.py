"""/v1/models: list, show (status and progress), register while running, unload.

GET answers in OpenAI's list format plus each model's status. POST registers a converted
folder, a GGUF file or a Hugging Face checkpoint folder and answers 202 at once: conversion and
loading run in the background, visible through GET /v1/models/{id}. DELETE unloads.
"""

from __future__ import annotations

import stat
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from service.engine.registry import ModelOptions, ModelRegistry
from service.errors import APIError
from service.routes.framing import json_response
from service.serving.model_access import model_body, model_not_found, sees_errors
from service.serving.request_bodies import RegisterModelRequest, decode_body
from service.serving.response_bodies import ModelDeleted, ModelList
from service.settings import ModelSpec


async def list_models(request: Request) -> Response:
    registry: ModelRegistry = request.app.state.registry
    show_errors = sees_errors(request)
    return json_response(ModelList([model_body(entry, show_errors) for entry in registry.entries()]))


async def get_model(request: Request) -> Response:
    registry: ModelRegistry = request.app.state.registry
    model_id = request.path_params["model_id"]
    entry = registry.get(model_id)
    if entry is None:
        raise model_not_found(model_id)
    return json_response(model_body(entry, sees_errors(request)))


async def register_model(request: Request) -> Response:
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
    return json_response(model_body(entry), status_code=202)


def _may_hold_a_model(path: Path) -> bool:
    """A folder or a non-empty regular file outside /proc, /sys and /dev: devices and pipes would
    be read forever, and kernel files (/proc/PID/environ) hold secrets, not models."""
    if path.parts[1:2] in (("proc",), ("sys",), ("dev",)):
        return False
    status = path.stat()
    return stat.S_ISDIR(status.st_mode) or (stat.S_ISREG(status.st_mode) and status.st_size > 0)


async def delete_model(request: Request) -> Response:
    registry: ModelRegistry = request.app.state.registry
    model_id = request.path_params["model_id"]
    if await run_in_threadpool(registry.unload, model_id) is None:
        raise model_not_found(model_id)
    return json_response(ModelDeleted(model_id))
