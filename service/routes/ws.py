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
import uuid
from contextlib import aclosing
from typing import Annotated

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from service import limits
from service.engine import Failed, Finished, GenerationRequest, TextDelta
from service.cross_site import origin_allowed
from service.errors import APIError, error_body
from service.registry import ModelEntry
from service.routes import chat, generation
from service.routes.models import ready_model
from service.routes.sessions import SessionHistory, session_history
from service.schemas import ChatCompletionRequest, decode_body
from service.telemetry import observe_generation

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


def error_event(request_id: str | None, error: APIError) -> dict:
    body = error_body(error.message, error.error_type, error.param, error.code)
    return {"type": "error", "id": request_id, "status": error.status, **body}


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
        body = decode_body(data, ChatCompletionRequest)
        chat.check_guards(self.websocket, body)
        entry = ready_model(self.websocket, body.model)
        # The socket's handshake carries the key, so it sees the sessions that key owns.
        history = await session_history(self.websocket, body.session_id) if body.session_id is not None else None
        prompt_ids = await generation.off_loop(self.websocket, chat.chat_prompt_ids, entry.engine, body, history)
        requests = generation.choices_of(chat.chat_generation_request(entry.engine, body, prompt_ids), body.n)
        limits.take_stream(self.websocket)  # the key's streams count generations, not sockets
        try:
            charge = limits.check_admission(self.websocket, requests, "messages")
        except BaseException:
            limits.release_stream(self.websocket)
            raise
        task = asyncio.create_task(self.complete(request_id, entry, body, len(prompt_ids), requests, history, started_ns, charge))
        task.add_done_callback(lambda _: limits.release_stream(self.websocket))  # however it ends, even unstarted
        self.requests[request_id] = task

    async def cancel(self, request_id: str) -> None:
        task = self.requests.pop(request_id, None)
        if task is None:
            raise APIError(404, f"no request with id {request_id!r} is in flight on this socket", param="id", code="request_not_found")
        task.cancel()  # leaving the engine's event stream cancels the generation
        await self.send({"type": "cancelled", "id": request_id})

    async def complete(
        self,
        request_id: str,
        entry: ModelEntry,
        body: ChatCompletionRequest,
        prompt_tokens: int,
        requests: list[GenerationRequest],
        history: SessionHistory | None,
        started_ns: int,
        charge: limits.Charge,
    ) -> None:
        """Streams one request's chunks and ends it with `done`, or `error` when it is refused or
        fails; a refused request's tokens go back to its key."""
        engine = entry.engine
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        chunks = generation.ChatChunks(engine, completion_id, created, entry.model_id, body.logprobs)

        def chunk(*arguments, **options) -> dict:
            return {"type": "chat.completion.chunk", "id": request_id, "chunk": chunks(*arguments, **options)}

        try:
            try:
                admitted = await generation.admit(engine, requests)
            except BaseException:
                charge.refund()
                raise
            tickets = observe_generation(
                self.websocket, "chat", entry.model_id, admitted, prompt_tokens, requests[0],
                started_ns=started_ns, log_fields={"request_id": request_id, "transport": "websocket"},
                on_done=lambda fields: log.info("websocket request", extra=fields),
            )
            finished: dict[int, Finished] = {}
            first_answer: list[str] = []  # choice 0, the one a session keeps
            try:
                for index in range(len(tickets)):
                    await self.send_for(request_id, chunk(index, {"role": "assistant", "content": ""}))
                async with aclosing(generation.merged(tickets)) as events:
                    async for index, event in events:
                        if index == 0 and isinstance(event, (TextDelta, Finished)):
                            first_answer.append(event.text)
                        if isinstance(event, TextDelta) and (event.text or body.logprobs):
                            await self.send_for(request_id, chunk(index, {"content": event.text}, token=event.token))
                        elif isinstance(event, Finished):
                            if event.text:
                                await self.send_for(request_id, chunk(index, {"content": event.text}))
                            await self.send_for(request_id, chunk(index, {}, event.finish_reason))
                            finished[index] = event
                        elif isinstance(event, Failed):
                            raise APIError(500, event.message, error_type="server_error", code=event.code)
            finally:
                for ticket in tickets:
                    ticket.cancel()
            reasons = [finished[index].finish_reason for index in range(len(tickets))]
            usage = generation.usage(list(finished.values()), prompt_tokens)
            done = {"type": "done", "id": request_id, "finish_reasons": reasons, "usage": usage}
            if history is not None and chat.worth_remembering(list(finished.values())):
                await self.remember(request_id, history, entry, body, "".join(first_answer), done)
            else:
                await self.send_for(request_id, done, last=True)
        except APIError as error:
            await self.send_for(request_id, error_event(request_id, error), last=True)
        except Exception:
            log.exception("a WebSocket chat completion failed", extra={"request_id": request_id})
            await self.send_for(request_id, internal_error_event(request_id), last=True)

    async def remember(
        self, request_id: str, history: SessionHistory, entry: ModelEntry, body: ChatCompletionRequest, answer: str, done: dict
    ) -> None:
        """Saves the turn, then sends `done`; as over SSE, a turn is saved only once answered whole.

        The request ends before saving starts, so a `cancel` arriving meanwhile is answered
        `request_not_found` (as when it crosses `done`) and never follows a saved turn."""
        if not await self.end(request_id):
            return
        try:
            await history.append_turn(entry.engine, body.messages, answer)
        except APIError as error:  # the session was deleted while answering
            done = error_event(request_id, error)
        except Exception:
            log.exception("saving a WebSocket turn failed", extra={"request_id": request_id})
            done = internal_error_event(request_id)
        await self.send(done)

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
