"""POST /v1/responses: the Responses API (service.serving.responses_api), whole or streamed."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from service.routes.framing import json_response, sse_response
from service.serving import responses_api
from service.serving.request_bodies import ResponseRequest, decode_body


async def create_response(request: Request) -> Response:
    body = decode_body(await request.body(), ResponseRequest)
    prepared = await responses_api.prepare(request, body)
    if body.stream:
        return sse_response(responses_api.events(prepared, request.app.state.settings.sse_keepalive), named=True, done=False)
    return json_response(await responses_api.whole(prepared, request))
