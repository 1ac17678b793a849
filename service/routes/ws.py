"""/v1/ws: chat completions streamed over one WebSocket, several at once, each cancellable.

A long-lived client (the SPA) keeps one socket and tells its requests apart by the `id` it gives
each. Every request ends with exactly one `done`, `cancelled` or `error` event, and a bad message
is answered with an `error` event rather than a closed socket, so one mistake never costs the
other requests their stream. A request with `session_id` is prompted with the session's history
and saves its turn as POST /v1/chat/completions does. The message schema is in docs/websocket.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from typing import Annotated

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from service.errors import APIError
from service.operations import limits
from service.operations.cross_site import origin_allowed
from service.serving import chat
from service.serving.pipeline import StreamEnd, StreamError
from service.serving.request_bodies import ChatCompletionRequest, decode_body
from service.serving.response_bodies import ChatCompletionChunk

log = logging.getLogger(__name__)

# Requests one socket may run at once; beyond it a request is refused with an error event, so
# a single client cannot take every slot and queue place of the engine.
MAX_REQUESTS_PER_SOCKET = 16
# A larger message is answered with an error event. Hypercorn's own limit (16 MiB) closes the
# socket instead, as the protocol requires.
MAX_MESSAGE_BYTES = 1024 * 1024


class Envelope(msgspec.Struct):
    """What every client message carries; a chat.completion message is also a ChatCompletionRequest."""

    type: str
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None


class SocketChatRequest(ChatCompletionRequest, kw_only=True):
    """A chat.completion message: a chat request that also carries the envelope's fields."""

    type: str
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None


def error_event(request_id: str | None, error: APIError) -> dict:
    return {"type": "error", "id": request_id, "status": error.status, "error": error.detail()}


def internal_error_event(request_id: str | None) -> dict:
    return error_event(request_id, APIError(500, "internal server error", error_type="server_error"))


async def chat_socket(websocket: WebSocket) -> None:
    # Browsers apply no CORS to WebSockets, so the page's Origin is checked here, keys or not.
    if not origin_allowed(websocket.headers.get("origin"), websocket.app.state.settings):
        await websocket.close()  # before accepting: the handshake is refused with 403
        return
    await websocket.accept()
    await ChatSocket(websocket).serve()


class ChatSocket:
    """One accepted socket: reads messages, runs each chat completion as its own task."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.requests: dict[str, asyncio.Task] = {}  # in flight, by client id
        self.started = 0  # chat requests accepted on this socket; the handshake paid for the first
        self._send_lock = asyncio.Lock()

    async def serve(self) -> None:
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                await self.receive(text.encode() if text is not None else message.get("bytes") or b"")
        finally:
            running = list(self.requests.values())
            self.requests.clear()
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def receive(self, data: bytes) -> None:
        request_id = None
        try:
            if len(data) > MAX_MESSAGE_BYTES:
                raise APIError(413, f"the message is {len(data)} bytes; the limit is {MAX_MESSAGE_BYTES}", code="message_too_large")
            envelope = decode_body(data, Envelope)
            request_id = envelope.id
            if envelope.type == "chat.completion":
                await self.start(self.required_id(envelope), data)
            elif envelope.type == "cancel":
                await self.cancel(self.required_id(envelope))
            elif envelope.type == "ping":
                await self.send({"type": "pong", "id": request_id})
            else:
                raise APIError(
                    400,
                    f"unknown message type {envelope.type!r}; expected chat.completion, cancel or ping",
                    param="type",
                    code="unknown_message_type",
                )
        except APIError as error:
            await self.send(error_event(request_id, error))
        except Exception:
            log.exception("a WebSocket message failed")
            await self.send(internal_error_event(request_id))

    @staticmethod
    def required_id(envelope: Envelope) -> str:
        if envelope.id is None:
            raise APIError(400, f"a {envelope.type} message needs an `id`, a non-empty string", param="id", code="invalid_value")
        return envelope.id

    async def start(self, request_id: str, data: bytes) -> None:
        """Validates the request now, so its mistakes come back at once, then runs it as a task."""
        if request_id in self.requests:
            raise APIError(
                409, f"a request with id {request_id!r} is already in flight on this socket", param="id",
                code="duplicate_id", error_type="invalid_request_error",
            )
        if len(self.requests) >= MAX_REQUESTS_PER_SOCKET:
            raise APIError(
                429, f"this socket already runs {MAX_REQUESTS_PER_SOCKET} requests, the most one socket may; "
                "wait for one to end", code="too_many_requests",
            )
        started_ns = time.time_ns()
        if getattr(self.websocket.app.state, "draining", False):
            raise APIError(
                503, "the server is shutting down; retry on another instance", error_type="server_error", code="draining"
            )
        if self.started:
            limits.charge_request(self.websocket)  # requests per minute count messages, not sockets
        self.started += 1
        body = decode_body(data, SocketChatRequest)
        # The socket's handshake carries the key, so it sees the sessions that key owns.
        plan = await chat.plan(self.websocket, body)
        try:
            limits.take_stream(self.websocket)  # the key's streams count generations, not sockets
        except BaseException:
            plan.charge.refund()
            raise
        task = asyncio.create_task(self.complete(request_id, plan, started_ns))
        task.add_done_callback(lambda _: limits.release_stream(self.websocket))  # however it ends, even unstarted
        self.requests[request_id] = task

    async def cancel(self, request_id: str) -> None:
        task = self.requests.pop(request_id, None)
        if task is None:
            raise APIError(404, f"no request with id {request_id!r} is in flight on this socket", param="id", code="request_not_found")
        task.cancel()  # leaving the engine's event stream cancels the generation
        await self.send({"type": "cancelled", "id": request_id})

    async def complete(self, request_id: str, plan: chat.ChatPlan, started_ns: int) -> None:
        """Frames one request's chunks and ends it with `done`, or `error` when it is refused or
        fails. A session's turn is stored after the request has ended here (before `done`), so a
        `cancel` arriving meanwhile is answered `request_not_found`, as when it crosses `done`,
        and never follows a saved turn."""
        ended = False

        async def end_before_saving() -> bool:
            nonlocal ended
            ended = await self.end(request_id)
            return ended

        async def send(payload: dict, last: bool = False) -> None:
            await (self.send(payload) if ended else self.send_for(request_id, payload, last))

        try:
            answer = await chat.admit(
                self.websocket, plan, started_ns=started_ns, log_fields={"request_id": request_id, "transport": "websocket"},
                on_done=lambda fields: log.info("websocket request", extra=fields),
            )
            async with aclosing(chat.chunks(answer, before_saving=end_before_saving)) as items:
                async for item in items:
                    if isinstance(item, ChatCompletionChunk) and item.choices:  # usage comes with `done`
                        await send({"type": "chat.completion.chunk", "id": request_id, "chunk": item})
                    elif isinstance(item, StreamError):
                        await send({"type": "error", "id": request_id, "status": item.status, "error": item.error}, last=True)
                        return
                    elif isinstance(item, StreamEnd):
                        await send({"type": "done", "id": request_id, "finish_reasons": item.finish_reasons, "usage": item.usage}, last=True)
        except APIError as error:
            await send(error_event(request_id, error), last=True)
        except Exception:
            log.exception("a WebSocket chat completion failed", extra={"request_id": request_id})
            await send(internal_error_event(request_id), last=True)

    async def end(self, request_id: str) -> bool:
        """Ends a request without sending; False if it has ended already (cancelled)."""
        async with self._send_lock:
            if self.requests.get(request_id) is not asyncio.current_task():
                return False
            del self.requests[request_id]
            return True

    async def send_for(self, request_id: str, payload: dict, last: bool = False) -> None:
        """Sends a request's event while it is still in flight; `last` ends it, so a `cancel`
        arriving meanwhile finds nothing to cancel instead of adding a second final event."""
        task = asyncio.current_task()
        async with self._send_lock:
            if self.requests.get(request_id) is not task:
                return
            if last:
                del self.requests[request_id]
            await self._send(payload)

    async def send(self, payload: dict) -> None:
        async with self._send_lock:
            await self._send(payload)

    async def _send(self, payload: dict) -> None:
        # A client that is gone gets nothing; the receive loop sees the disconnect and cancels everything.
        if self.websocket.application_state != WebSocketState.CONNECTED:
            return
        try:
            await self.websocket.send_text(msgspec.json.encode(payload).decode())
        except WebSocketDisconnect:
            pass
