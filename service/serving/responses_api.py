"""POST /v1/responses: OpenAI's Responses API for text, whole or as its stream of typed events.

A stored response (`store`, the default) is a turn of a session (docs/sessions.md): its id,
`resp_<session>_<turn>`, names the conversation up to and including it, so a request with
`previous_response_id` is prompted with that conversation and then its own input. Continuing
the newest response of a session extends that session; continuing an older one, or one that
another request on this replica is continuing at the same moment, branches into a new session
holding the conversation up to it, so no response's history ever changes. `instructions` are a
system message for one response only and are not kept, as OpenAI's are not.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection, Request

from service.engine.chat_template import ChatTemplateError
from service.engine.engine import Engine, Failed, Finished, GenerationRequest, TextDelta, Ticket
from service.errors import APIError
from service.operations import limits
from service.operations.telemetry import observe_generation
from service.serving import generation, pipeline
from service.serving.model_access import ready_model
from service.serving.request_bodies import GenerationOptions, ResponseRequest
from service.serving.response_bodies import (
    ContentPartAdded,
    ContentPartDone,
    IncompleteDetails,
    InputTokensDetails,
    OutputItemAdded,
    OutputItemDone,
    OutputMessage,
    OutputText,
    OutputTextDelta,
    OutputTextDone,
    OutputTokensDetails,
    Response,
    ResponseCompleted,
    ResponseCreated,
    ResponseError,
    ResponseErrorEvent,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    ResponseStreamEvent,
    ResponseUsage,
)
from service.serving.sessions import content_tokens, owner_of
from service.storage.errors import StorageError
from service.storage.session_store import NewMessage, SessionStore, StoredMessage

log = logging.getLogger(__name__)

_RESPONSE_ID = re.compile(r"resp_([0-9a-f]{32})_([1-9][0-9]{0,8})")
# Turns that requests on this replica are answering now, as (session id, turn): a second request
# continuing the same response branches instead of taking the same turn number.
_answering: set[tuple[str, int]] = set()


def response_id(session_id: str, turn: int) -> str:
    return f"resp_{session_id.removeprefix('sess_')}_{turn}"


def _previous_not_found(previous: str) -> APIError:
    return APIError(404, f"no stored response with id {previous!r}", param="previous_response_id", code="previous_response_not_found")


@dataclass
class Conversation:
    """Where a stored response goes: a session and the turn it will be, reserved while answering."""

    store: SessionStore
    owner: str | None
    session_id: str
    turn: int
    created: bool  # a session made for this response: deleted again if it ends unanswered
    saved: bool = False

    @property
    def response_id(self) -> str:
        return response_id(self.session_id, self.turn)

    async def save(self, engine: Engine, messages: list[dict], answer: str) -> bool:
        """Stores the request's input and the answer as the reserved turn; False if the store
        could not (the response then says `store: false`)."""
        texts = [(message["role"], message["content"]) for message in messages] + [("assistant", answer)]

        def append() -> int:
            stored = [NewMessage(role, text, content_tokens(engine.folder, text)) for role, text in texts]
            return self.store.append_turn(self.session_id, stored, self.owner)

        try:
            turn = await asyncio.to_thread(append)
        except (StorageError, LookupError) as error:
            log.warning("a response could not be stored", extra={"session": self.session_id, "error": str(error)})
            return False
        if turn != self.turn:  # another replica appended to the session meanwhile
            log.warning("a stored response took another turn", extra={"session": self.session_id, "turn": turn})
        self.saved = True
        return True

    async def close(self) -> None:
        _answering.discard((self.session_id, self.turn))
        if self.created and not self.saved:
            await asyncio.to_thread(self.store.delete, self.session_id, self.owner)


async def _history(connection: HTTPConnection, previous: str) -> tuple[str, int, list[StoredMessage], int]:
    """The session, turn, messages up to that turn, and newest turn of `previous_response_id`."""
    match = _RESPONSE_ID.fullmatch(previous)
    if match is None:
        raise _previous_not_found(previous)
    session_id, turn = f"sess_{match.group(1)}", int(match.group(2))
    found = await asyncio.to_thread(connection.app.state.sessions.get_with_messages, session_id, owner_of(connection))
    newest = max((message.turn for message in found[1]), default=0) if found is not None else 0
    if found is None or turn > newest:
        raise _previous_not_found(previous)
    return session_id, turn, [message for message in found[1] if message.turn <= turn], newest


async def _reserve(connection: HTTPConnection, model_id: str, previous: tuple[str, int, list[StoredMessage], int] | None) -> Conversation:
    store: SessionStore = connection.app.state.sessions
    owner = owner_of(connection)
    if previous is not None:
        session_id, turn, messages, newest = previous
        if turn == newest and (session_id, turn + 1) not in _answering:
            _answering.add((session_id, turn + 1))
            return Conversation(store, owner, session_id, turn + 1, created=False)
    history = previous[2] if previous is not None else []

    def branch() -> tuple[str, int]:
        """A new session holding the history's turns (renumbered from 1)."""
        session = store.create(model=model_id, owner=owner)
        turns: dict[int, list[NewMessage]] = {}
        for message in history:
            turns.setdefault(message.turn, []).append(NewMessage(message.role, message.content, message.token_count))
        for messages in turns.values():
            store.append_turn(session.id, messages, owner)
        return session.id, len(turns) + 1

    session_id, turn = await asyncio.to_thread(branch)
    _answering.add((session_id, turn))
    return Conversation(store, owner, session_id, turn, created=True)


@dataclass
class PreparedResponse:
    """A validated request, admitted to the engine."""

    body: ResponseRequest
    model_id: str
    engine: Engine
    tickets: list[Ticket]
    prompt_tokens: int
    input_messages: list[dict]
    conversation: Conversation | None
    id: str
    created_at: int = field(default_factory=lambda: int(time.time()))
    item_id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")

    def response(self, status: str, text: str | None = None, finished: Finished | None = None, error: ResponseError | None = None) -> Response:
        """The response as it stands: in progress (no output yet), or ended with `text`."""
        output = []
        if text is not None:
            item_status = "incomplete" if status == "incomplete" else "completed"
            output.append(OutputMessage(id=self.item_id, status=item_status, content=[OutputText(text=text)]))
        usage = None
        if finished is not None:
            usage = ResponseUsage(
                finished.prompt_tokens, InputTokensDetails(finished.cached_tokens), finished.completion_tokens,
                OutputTokensDetails(), finished.prompt_tokens + finished.completion_tokens,
            )
        sampling = self.tickets[0].sequence.request.sampling
        return Response(
            id=self.id, created_at=self.created_at, status=status, model=self.model_id, output=output,
            instructions=self.body.instructions, previous_response_id=self.body.previous_response_id,
            max_output_tokens=self.body.max_output_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            usage=usage, error=error, incomplete_details=IncompleteDetails("max_output_tokens") if status == "incomplete" else None,
            store=self.conversation is not None and (self.conversation.saved or status == "in_progress"),
        )

    async def remember(self, finished: Finished, answer: str) -> None:
        if self.conversation is not None and finished.finish_reason != "cancelled":
            await self.conversation.save(self.engine, self.input_messages, answer)


async def prepare(connection: HTTPConnection, body: ResponseRequest) -> PreparedResponse:
    """Every check before the queue, then admission: the conversation, the prompt, the budget,
    the key's limits. Refusals come back as errors before anything is stored or generated."""
    entry = ready_model(connection, body.model)
    engine = entry.engine
    if engine.folder.chat_template is None:
        raise APIError(400, f"the model {body.model!r} has no chat template; use /v1/completions", param="model")
    guards: limits.Guards = connection.app.state.guards
    guards.check_completion(body.max_output_tokens, "max_output_tokens")
    previous = await _history(connection, body.previous_response_id) if body.previous_response_id is not None else None
    input_messages = body.input_messages()
    system = [{"role": "system", "content": body.instructions}] if body.instructions is not None else []
    history = [{"role": message.role, "content": message.content} for message in previous[2]] if previous else []
    messages = system + history + input_messages
    guards.check_messages(len(messages))

    def encode() -> list[int]:
        try:
            return engine.folder.encode_chat(messages)
        except ChatTemplateError as error:
            raise APIError(400, str(error), param="input") from error

    prompt_ids = await generation.off_loop(connection, encode)
    budget = generation.completion_budget(engine, prompt_ids, body.max_output_tokens, "input")
    options = GenerationOptions(model=body.model, temperature=body.temperature, top_p=body.top_p, seed=body.seed)
    requests = [GenerationRequest(prompt_ids, budget, generation.sampling_params(engine, options, False, 0))]
    charge = limits.check_admission(connection, requests, "input")
    conversation = None
    try:
        if body.store:
            conversation = await _reserve(connection, entry.model_id, previous)
        tickets = await generation.admit(engine, requests, charge)
    except BaseException:
        charge.refund()  # a conversation that could not be reserved runs nothing either
        if conversation is not None:
            await conversation.close()
        raise
    tickets = observe_generation(connection, "response", entry.model_id, tickets, len(prompt_ids), requests[0], end_user=body.user)
    identifier = conversation.response_id if conversation is not None else f"resp_{uuid.uuid4().hex}"
    return PreparedResponse(body, entry.model_id, engine, tickets, len(prompt_ids), input_messages, conversation, identifier)


async def whole(prepared: PreparedResponse, connection: Request) -> Response:
    try:
        [choice] = await pipeline.gather(prepared.tickets, connection)
        await prepared.remember(choice.finished, choice.answer)
    finally:
        if prepared.conversation is not None:
            await prepared.conversation.close()
    status = "incomplete" if choice.finished.finish_reason == "length" else "completed"
    return prepared.response(status, choice.answer, choice.finished)


async def events(prepared: PreparedResponse, keepalive: float | None = None) -> AsyncIterator[ResponseStreamEvent | pipeline.Keepalive]:
    """The Responses API's stream: the response created, its message and text part opened, the
    text in deltas, then each closed and the response completed (or incomplete, or failed)."""
    sequence = iter(range(1 << 62))
    location = {"item_id": prepared.item_id, "output_index": 0, "content_index": 0}
    opening = OutputMessage(id=prepared.item_id, status="in_progress", content=[])
    try:
        yield ResponseCreated(sequence_number=next(sequence), response=prepared.response("in_progress"))
        yield ResponseInProgress(sequence_number=next(sequence), response=prepared.response("in_progress"))
        yield OutputItemAdded(sequence_number=next(sequence), output_index=0, item=opening)
        yield ContentPartAdded(sequence_number=next(sequence), part=OutputText(text=""), **location)
        text: list[str] = []
        async for item in pipeline.choice_events(prepared.tickets, keepalive):
            if isinstance(item, pipeline.Keepalive):
                yield item
                continue
            event = item.event
            if isinstance(event, (TextDelta, Finished)) and event.text:
                text.append(event.text)
                yield OutputTextDelta(sequence_number=next(sequence), delta=event.text, **location)
            if isinstance(event, Failed):
                yield ResponseErrorEvent(sequence_number=next(sequence), message=event.message, code=event.code)
                failed = prepared.response("failed", error=ResponseError(event.code, event.message))
                yield ResponseFailed(sequence_number=next(sequence), response=failed)
                return
            if isinstance(event, Finished):
                answer = "".join(text)
                await prepared.remember(event, answer)
                status = "incomplete" if event.finish_reason == "length" else "completed"
                ended = prepared.response(status, answer, event)
                yield OutputTextDone(sequence_number=next(sequence), text=answer, **location)
                yield ContentPartDone(sequence_number=next(sequence), part=ended.output[0].content[0], **location)
                yield OutputItemDone(sequence_number=next(sequence), output_index=0, item=ended.output[0])
                ending = ResponseIncomplete if status == "incomplete" else ResponseCompleted
                yield ending(sequence_number=next(sequence), response=ended)
    finally:
        if prepared.conversation is not None:
            await prepared.conversation.close()
