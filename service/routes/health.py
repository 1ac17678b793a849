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
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import error_body
from service.storage_errors import DatabaseUnavailable, StorageFull

GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
RETRY_AFTER_DRAINING = 5


async def livez(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def startupz(request: Request) -> JSONResponse:
    if getattr(request.app.state, "started", False):
        return JSONResponse({"status": "started"})
    return JSONResponse({"status": "starting"}, status_code=503)


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


async def readyz(request: Request) -> JSONResponse:
    registry = request.app.state.registry
    models = {entry.model_id: entry.status for entry in registry.entries()}
    report = {"models": models, **await database_state(request)}
    if getattr(request.app.state, "draining", False):
        return JSONResponse({"status": "draining", **report}, status_code=503)
    if registry.any_ready():
        return JSONResponse({"status": "ready", **report})
    return JSONResponse({"status": "loading", **report}, status_code=503)


class DrainGate:
    """Refuses new generation requests with 503 once the app is draining."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        application = scope.get("app")
        draining = application is not None and getattr(application.state, "draining", False)
        if draining and scope["type"] == "http" and scope["path"] in GENERATION_PATHS:
            body = error_body("the server is shutting down; retry on another instance", "server_error", code="draining")
            response = JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_DRAINING)})
            await response(scope, receive, send)
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
