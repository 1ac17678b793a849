"""Probes: /livez says the process answers, /startupz that startup registered the models,
/readyz that a model can serve requests and the service is not draining.

/readyz also reports the database (`"database": "ok"`, `"unavailable"` or `"full"`, with
`"database_error"` saying why) without failing on it: every replica shares one database, so
taking them all out of the load balancer while it is down would stop plain completions too;
session requests answer 503 (507 while the disk is full) meanwhile.

Draining (SIGTERM): generation requests already accepted run to the end while new ones get
503 and /readyz turns 503, so a load balancer moves traffic elsewhere before the exit.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import APIError, error_response
from service.routes import GENERATION_PATHS
from service.routes.framing import json_response
from service.serving.response_bodies import Readiness, Status
from service.storage.errors import DatabaseUnavailable, StorageFull

RETRY_AFTER_DRAINING = 5


async def livez(request: Request) -> Response:
    return json_response(Status("ok"))


async def startupz(request: Request) -> Response:
    if getattr(request.app.state, "started", False):
        return json_response(Status("started"))
    return json_response(Status("starting"), status_code=503)


async def database_state(request: Request) -> dict:
    storage = getattr(request.app.state, "storage", None)
    if storage is None:
        return {"database": "starting"}
    try:
        await asyncio.to_thread(storage.check)
    except StorageFull as error:
        return {"database": "full", "database_error": str(error)}
    except DatabaseUnavailable as error:
        return {"database": "unavailable", "database_error": str(error)}
    return {"database": "ok"}


async def readyz(request: Request) -> Response:
    registry = request.app.state.registry
    models = {entry.model_id: entry.status for entry in registry.entries()}
    report = {"models": models, **await database_state(request)}
    if getattr(request.app.state, "draining", False):
        return json_response(Readiness(status="draining", **report), status_code=503)
    if registry.any_ready():
        return json_response(Readiness(status="ready", **report))
    return json_response(Readiness(status="loading", **report), status_code=503)


class DrainGate:
    """Refuses new generation requests with 503 once the app is draining."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        application = scope.get("app")
        draining = application is not None and getattr(application.state, "draining", False)
        if draining and scope["type"] == "http" and scope["path"] in GENERATION_PATHS:
            message = "the server is shutting down; retry on another instance"
            headers = {"Retry-After": str(RETRY_AFTER_DRAINING)}
            await error_response(APIError(503, message, code="draining", error_type="server_error", headers=headers))(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def drain(app, timeout: float) -> None:
    """Marks the app draining, then waits until no engine runs or queues a request (or timeout)."""
    app.state.draining = True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        engines = [entry.engine for entry in app.state.registry.entries() if entry.engine is not None]
        if not any(engine.running or engine.waiting for engine in engines):
            return
        await asyncio.sleep(0.05)
