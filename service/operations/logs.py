"""JSON log lines: one object per event, with whatever fields the caller passed in `extra`;
and the per-request line every HTTP request leaves."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# A client's X-Request-ID is kept when it looks like an id (no spaces, quotes or control
# characters that would break log lines or headers); anything else gets a fresh one.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_QUIET_ROUTES = {"/livez", "/readyz", "/startupz", "/metrics"}
request_log = logging.getLogger("service.requests")


def request_fields(scope: Scope) -> dict:
    """What handlers add to the request's log line (model, token counts, outcome)."""
    return scope.setdefault("state", {}).setdefault("log_fields", {})


class RequestLogMiddleware:
    """One JSON line per HTTP request, tagged with a request id that the response echoes in
    X-Request-ID; probes and scrapes log at debug level."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = Headers(scope=scope).get("x-request-id", "")
        request_id = sent if _SANE_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started_ns"] = time.time_ns()
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", None)
            fields = {
                "request_id": request_id,
                "method": scope["method"],
                "route": route or scope["path"],
                "status": status,
                "seconds": round(time.perf_counter() - started, 4),
            }
            if state.get("key_id") is not None:
                fields["key_id"] = state["key_id"]
            fields.update(request_fields(scope))
            level = logging.DEBUG if route in _QUIET_ROUTES else logging.INFO
            request_log.log(level, "request", extra=fields)
