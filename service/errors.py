"""Errors as the OpenAI API shapes them: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Match
from starlette.responses import Response

from service.serving.response_bodies import ErrorBody, ErrorDetail

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = headers
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type or _TYPES.get(status, "server_error")

    def detail(self) -> ErrorDetail:
        """What the envelope's `error` holds."""
        return ErrorDetail(self.message, self.error_type, self.param, self.code)


def error_response(error: APIError) -> Response:
    body = msgspec.json.encode(ErrorBody(error.detail()))
    return Response(body, status_code=error.status, media_type="application/json", headers=error.headers)


async def handle_api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, APIError)
    return error_response(error)


async def handle_http_exception(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
    elif error.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(APIError(405, message, headers={"Allow": _allowed_methods(request)}))
    else:
        message = str(error.detail)
    return error_response(APIError(error.status_code, message, code=None, headers=error.headers))


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path: Starlette's own Allow names only the first
    route's, and each method here is a route of its own."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if route.matches(request.scope)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def handle_unexpected(request: Request, error: Exception) -> Response:
    log.exception("unhandled error", extra={"path": request.url.path})
    return error_response(APIError(500, "internal server error", error_type="server_error"))
