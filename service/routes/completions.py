"""POST /v1/completions: the completions serving module's answer, as JSON or server-sent events."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from service.routes.framing import json_response, sse_response
from service.serving import completions
from service.serving.request_bodies import CompletionRequest, decode_body


async def create_completion(request: Request) -> Response:
    body = decode_body(await request.body(), CompletionRequest)
    answer = await completions.admit(request, await completions.plan(request, body))
    if body.stream:
        return sse_response(completions.chunks(answer, request.app.state.settings.sse_keepalive))
    return json_response(await completions.whole(answer, request))
