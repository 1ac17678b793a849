"""Probes: /livez says the process answers, /readyz that a model can serve requests."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse


async def livez(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    registry = request.app.state.registry
    models = {entry.model_id: entry.status for entry in registry.entries()}
    if registry.any_ready():
        return JSONResponse({"status": "ready", "models": models})
    return JSONResponse({"status": "loading", "models": models}, status_code=503)
