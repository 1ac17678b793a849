"""How typed bodies go on the HTTP wire: one JSON document, or server-sent events.

A stream is the serving layer's async iterator of typed events; framing it is the whole of
what the transport does. Leaving it early (the client went away) closes that iterator, which
cancels the generation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from starlette.responses import Response, StreamingResponse

from service.serving.pipeline import Keepalive, StreamEnd, StreamError
from service.serving.response_bodies import ErrorBody

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def json_response(body: msgspec.Struct, status_code: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status_code=status_code, media_type="application/json")


async def _frames(events: AsyncIterator, named: bool, done: bool) -> AsyncIterator[bytes]:
    async for event in events:
        if isinstance(event, Keepalive):
            yield KEEPALIVE
            continue
        if isinstance(event, StreamEnd):  # the end is told by [DONE] (or the last typed event)
            continue
        if isinstance(event, StreamError):  # the request's failure, in the error envelope
            event = ErrorBody(event.error)
        data = msgspec.json.encode(event)
        name = b"event: " + type(event).__struct_config__.tag.encode() + b"\n" if named else b""
        yield name + b"data: " + data + b"\n\n"
    if done:
        yield DONE


def sse_response(events: AsyncIterator, named: bool = False, done: bool = True) -> StreamingResponse:
    """`named`: each event's tag (its `type`) also as the SSE event name (the Responses API's framing);
    `done`: end with `data: [DONE]`, as chat and text completion streams do."""
    return StreamingResponse(_frames(events, named, done), media_type="text/event-stream", headers=SSE_HEADERS)
