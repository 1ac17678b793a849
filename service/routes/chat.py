"""POST /v1/chat/completions: the chat serving module's answer, as JSON or server-sent events."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from service.routes.framing import json_response, sse_response
from service.serving import chat
from service.serving.request_bodies import ChatCompletionRequest, decode_body


async def create_chat_completion(request: Request) -> Response:
    body = decode_body(await request.body(), ChatCompletionRequest)
    answer = await chat.admit(request, await chat.plan(request, body))
    if body.stream:
        return sse_response(chat.chunks(answer, request.app.state.settings.sse_keepalive))
    return json_response(await chat.whole(answer, request))
