"""POST /v1/chat/completions: a conversation in, `n` answers out, whole or streamed over SSE.

chat_prompt_ids, chat_generation_request and worth_remembering are the chat protocol itself;
the WebSocket transport (routes/ws.py) calls them too, so both transports answer alike."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import msgspec
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response, StreamingResponse

from service import limits
from service.chat_template import ChatTemplateError
from service.engine import Engine, Failed, Finished, GenerationRequest, TextDelta, Ticket
from service.errors import APIError, error_body
from service.routes import generation
from service.routes.models import ready_model
from service.routes.sessions import SessionHistory, TurnNotSaved, session_history
from service.schemas import ChatCompletionRequest, decode_body
from service.telemetry import observe_generation

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def chat_prompt_ids(engine: Engine, body: ChatCompletionRequest, history: SessionHistory | None = None) -> list[int]:
    """The templated conversation; with a session's history, its remembered turns come first."""
    folder = engine.folder
    if folder.chat_template is None:
        raise APIError(400, f"the model {body.model!r} has no chat template; use /v1/completions", param="model")

    def encode(messages: list[dict]) -> list[int]:
        try:
            return folder.encode_chat(messages)
        except ChatTemplateError as error:
            raise APIError(400, str(error), param="messages") from error

    messages = [{"role": message.role, "content": message.text()} for message in body.messages]
    if history is None:
        return encode(messages)
    return history.prompt_ids(engine, messages, body.max_completion_tokens or body.max_tokens, encode)


def check_guards(connection: HTTPConnection, body: ChatCompletionRequest) -> None:
    """--max-messages and --max-completion-tokens, before any tokenizing."""
    guards: limits.Guards = connection.app.state.guards
    guards.check_messages(len(body.messages))
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    guards.check_completion(body.max_completion_tokens or body.max_tokens, param)


def worth_remembering(finished: list[Finished]) -> bool:
    """Every choice ended as answers end (not cancelled): only then does a session keep the turn."""
    return all(event.finish_reason != "cancelled" for event in finished)


def chat_generation_request(engine: Engine, body: ChatCompletionRequest, prompt_ids: list[int]) -> GenerationRequest:
    if body.top_logprobs and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")
    budget = generation.completion_budget(engine, prompt_ids, body.max_completion_tokens or body.max_tokens, "messages")
    return GenerationRequest(
        prompt_ids,
        budget,
        generation.sampling_params(engine, body, body.logprobs, body.top_logprobs or 0),
        stop=body.stop_strings(),
        ignore_eos=body.ignore_eos,
    )


async def create_chat_completion(request: Request) -> Response:
    body = decode_body(await request.body(), ChatCompletionRequest)
    check_guards(request, body)
    entry = ready_model(request, body.model)
    engine = entry.engine
    history = await session_history(request, body.session_id) if body.session_id is not None else None
    prompt_ids = await generation.off_loop(request, chat_prompt_ids, engine, body, history)
    requests = generation.choices_of(chat_generation_request(engine, body, prompt_ids), body.n)
    charge = limits.check_admission(request, requests, "messages")
    try:
        tickets = await generation.admit(engine, requests)
    except BaseException:
        charge.refund()  # only what runs is charged
        raise
    tickets = observe_generation(request, "chat", entry.model_id, tickets, len(prompt_ids), requests[0])
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _sse_events(
            generation.ChatChunks(engine, completion_id, created, entry.model_id, body.logprobs),
            tickets,
            include_usage,
            len(prompt_ids),
            remember=None if history is None else partial(history.append_turn, engine, body.messages),
            keepalive=request.app.state.settings.sse_keepalive,
        )
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)

    choices = await generation.collect(tickets, request)
    # A session keeps choice 0 when n > 1; the turn is stored before the client sees the answer,
    # and an answer the store could not keep is still sent, flagged.
    not_saved: TurnNotSaved | None = None
    if history is not None and worth_remembering([choice.finished for choice in choices]):
        try:
            await history.append_turn(engine, body.messages, "".join(choices[0].text))
        except TurnNotSaved as error:
            not_saved = error
    completion = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": entry.model_id,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": "".join(choice.text)},
                "logprobs": generation.chat_logprobs(engine, choice.tokens) if body.logprobs else None,
                "finish_reason": choice.finished.finish_reason,
            }
            for index, choice in enumerate(choices)
        ],
        "usage": generation.usage([choice.finished for choice in choices], len(prompt_ids)),
    }
    if history is not None:
        completion["session_saved"] = not_saved is None
    if not_saved is not None:
        completion["session_error"] = error_body(not_saved.message, not_saved.error_type, not_saved.param, not_saved.code)["error"]
    return Response(msgspec.json.encode(completion), media_type="application/json")


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else msgspec.json.encode(payload).decode()
    return f"data: {data}\n\n".encode()


async def _sse_events(
    chunk: generation.ChatChunks,
    tickets: list[Ticket],
    include_usage: bool,
    prompt_tokens: int,
    remember: Callable[[str], Awaitable[None]] | None = None,
    keepalive: float | None = None,
) -> AsyncIterator[bytes]:
    """OpenAI chat.completion.chunk events for every choice, ending with `data: [DONE]`.

    If the client goes away, Starlette stops this iterator and the engine cancels the requests.
    `remember` gets choice 0's whole text once every choice has finished normally, before the
    usage chunk and `[DONE]`: a stream cut short or failed leaves a session's history as it was.
    """

    for index in range(len(tickets)):
        yield sse(chunk(index, {"role": "assistant", "content": ""}))
    finished: list[Finished] = []
    first_answer: list[str] = []
    async for index, event in generation.merged(tickets, keepalive):
        if event is None:
            yield generation.KEEPALIVE
        elif isinstance(event, TextDelta):
            if index == 0:
                first_answer.append(event.text)
            if event.text or chunk.logprobs:
                yield sse(chunk(index, {"content": event.text}, token=event.token))
        elif isinstance(event, Finished):
            if index == 0:
                first_answer.append(event.text)
            if event.text:
                yield sse(chunk(index, {"content": event.text}))
            yield sse(chunk(index, {}, event.finish_reason))
            finished.append(event)
        elif isinstance(event, Failed):
            yield sse(error_body(event.message, "server_error", code=event.code))
    if remember is not None and len(finished) == len(tickets) and worth_remembering(finished):
        try:
            await remember("".join(first_answer))
        except APIError as error:
            yield sse(error_body(error.message, error.error_type, error.param, error.code))
    if include_usage and len(finished) == len(tickets):
        yield sse({**chunk.header(), "choices": [], "usage": generation.usage(finished, prompt_tokens)})
    yield sse("[DONE]")
