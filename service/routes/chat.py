"""POST /v1/chat/completions: a conversation in, an answer out, whole or streamed over SSE."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from service.chat_template import ChatTemplateError
from service.engine import Engine, Failed, Finished, GenerationRequest, TextDelta
from service.errors import APIError, error_body
from service.routes.models import ready_model
from service.sampler import SamplingParams
from service.schemas import ChatCompletionRequest, decode_body

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _prompt_ids(engine: Engine, body: ChatCompletionRequest) -> list[int]:
    folder = engine.folder
    if folder.chat_template is None:
        raise APIError(400, f"the model {body.model!r} has no chat template; use /v1/completions", param="model")
    messages = [{"role": message.role, "content": message.text()} for message in body.messages]
    try:
        prompt = folder.chat_template.render(messages)
    except ChatTemplateError as error:
        raise APIError(400, str(error), param="messages") from error
    return folder.encode(prompt)


def _generation_request(engine: Engine, body: ChatCompletionRequest, prompt_ids: list[int]) -> GenerationRequest:
    unsupported = body.unsupported_option()
    if unsupported:
        raise APIError(400, f"`{unsupported}` is not supported yet", param=unsupported, code="unsupported_parameter")
    room = engine.capacity - len(prompt_ids)
    requested = body.max_completion_tokens or body.max_tokens
    if room < 1 or (requested is not None and requested > room):
        raise APIError(
            400,
            f"this model's maximum context length is {engine.capacity} tokens; the messages take "
            f"{len(prompt_ids)} tokens and {requested or 1} were requested for the completion",
            param="messages",
            code="context_length_exceeded",
        )
    defaults = engine.folder.generation.get("defaults", {})
    sampling = SamplingParams(
        temperature=body.temperature if body.temperature is not None else defaults.get("temperature", 1.0),
        top_p=body.top_p if body.top_p is not None else defaults.get("top_p", 1.0),
        top_k=body.top_k if body.top_k is not None else defaults.get("top_k", 0),
        seed=body.seed,
    )
    return GenerationRequest(prompt_ids, requested or room, sampling)


def _usage(finished: Finished) -> dict:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


async def create_chat_completion(request: Request) -> Response:
    body = decode_body(await request.body(), ChatCompletionRequest)
    entry = ready_model(request.app.state.registry, body.model)
    engine = entry.engine
    generation = _generation_request(engine, body, _prompt_ids(engine, body))
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _sse_events(engine, generation, completion_id, entry.model_id, created, include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)

    pieces: list[str] = []
    async for event in engine.stream(generation):
        if isinstance(event, TextDelta):
            pieces.append(event.text)
        elif isinstance(event, Failed):
            raise APIError(500, event.message, error_type="server_error")
        elif isinstance(event, Finished):
            finished = event
    completion = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": entry.model_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(pieces)},
                "logprobs": None,
                "finish_reason": finished.finish_reason,
            }
        ],
        "usage": _usage(finished),
    }
    return Response(msgspec.json.encode(completion), media_type="application/json")


def _sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else msgspec.json.encode(payload).decode()
    return f"data: {data}\n\n".encode()


async def _sse_events(
    engine: Engine, generation: GenerationRequest, completion_id: str, model_id: str, created: int, include_usage: bool
) -> AsyncIterator[bytes]:
    """OpenAI chat.completion.chunk events, ending with `data: [DONE]`.

    If the client goes away, Starlette stops this iterator and the engine cancels the request.
    """

    def chunk(delta: dict, finish_reason: str | None = None) -> dict:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    yield _sse(chunk({"role": "assistant", "content": ""}))
    async for event in engine.stream(generation):
        if isinstance(event, TextDelta):
            if event.text:
                yield _sse(chunk({"content": event.text}))
        elif isinstance(event, Finished):
            yield _sse(chunk({}, event.finish_reason))
            if include_usage:
                usage_chunk = chunk({})
                usage_chunk["choices"] = []
                usage_chunk["usage"] = _usage(event)
                yield _sse(usage_chunk)
        elif isinstance(event, Failed):
            yield _sse(error_body(event.message, "server_error"))
    yield _sse("[DONE]")
