"""POST /v1/completions: text (or token ids) in, continuations out, whole or streamed over SSE.

With `echo` the prompt comes back before each continuation, and with `logprobs` too, every prompt
token's log-probability: how evaluation harnesses measure a text's likelihood through an API
(`max_tokens: 0` scores the prompt alone).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from service import limits
from service.engine import Engine, Failed, Finished, GenerationRequest, PromptScores, TextDelta, Ticket
from service.errors import APIError, error_body
from service.routes import generation
from service.routes.chat import SSE_HEADERS, sse
from service.routes.models import ready_model
from service.schemas import CompletionRequest, decode_body
from service.telemetry import observe_generation


def _prompt_ids(engine: Engine, body: CompletionRequest) -> list[list[int]]:
    try:
        prompts = body.prompts()
    except ValueError as error:
        raise APIError(400, str(error), param="prompt") from error
    vocab_size = engine.folder.tokenizer.get_vocab_size()
    encoded = []
    for prompt in prompts:
        if isinstance(prompt, str):
            ids = engine.folder.encode(prompt)
        else:
            if not prompt or any(not 0 <= token < vocab_size for token in prompt):
                raise APIError(400, f"prompt token ids must be between 0 and {vocab_size - 1}", param="prompt")
            ids = prompt
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        encoded.append(ids)
    return encoded


def _generation_request(engine: Engine, body: CompletionRequest, prompt_ids: list[int]) -> GenerationRequest:
    if body.suffix:
        raise APIError(400, "`suffix` (fill in the middle) is not supported", param="suffix", code="unsupported_parameter")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "`best_of` other than `n` is not supported", param="best_of", code="unsupported_parameter")
    if body.max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens 0 only makes sense with echo (to score the prompt)", param="max_tokens")
    budget = 0 if body.max_tokens == 0 else generation.completion_budget(engine, prompt_ids, body.max_tokens, "prompt")
    if budget == 0 and len(prompt_ids) > engine.capacity:
        generation.completion_budget(engine, prompt_ids, 1, "prompt")
    wants_logprobs = body.logprobs is not None
    return GenerationRequest(
        prompt_ids,
        budget,
        generation.sampling_params(engine, body, wants_logprobs, body.logprobs or 0),
        stop=body.stop_strings(),
        ignore_eos=body.ignore_eos,
        prompt_logprobs=(body.logprobs or 0) if body.echo and wants_logprobs else None,
    )


def _prompt_text(engine: Engine, body: CompletionRequest, index: int, ids: list[int]) -> str:
    prompts = body.prompts()
    prompt = prompts[index]
    return prompt if isinstance(prompt, str) else engine.folder.tokenizer.decode(ids, skip_special_tokens=False)


async def create_completion(request: Request) -> Response:
    body = decode_body(await request.body(), CompletionRequest)
    request.app.state.guards.check_completion(body.max_tokens, "max_tokens")
    entry = ready_model(request, body.model)
    engine = entry.engine
    prompts = await generation.off_loop(request, _prompt_ids, engine, body)
    requests = [
        choice for ids in prompts for choice in generation.choices_of(_generation_request(engine, body, ids), body.n)
    ]
    charge = limits.check_admission(request, requests, "prompt")
    try:
        tickets = await generation.admit(engine, requests)
    except BaseException:
        charge.refund()  # only what runs is charged
        raise
    prompt_tokens = sum(len(ids) for ids in prompts)
    tickets = observe_generation(request, "text_completion", entry.model_id, tickets, prompt_tokens, requests[0])
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    echoes = [_prompt_text(engine, body, index // body.n, prompts[index // body.n]) if body.echo else "" for index in range(len(requests))]
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _sse_events(
            engine, body, tickets, echoes, completion_id, entry.model_id, created, include_usage, prompt_tokens,
            request.app.state.settings.sse_keepalive,
        )
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)

    choices = await generation.collect(tickets, request)
    result = []
    for index, choice in enumerate(choices):
        text = echoes[index] + "".join(choice.text)
        logprobs = None
        if body.logprobs is not None:
            tokens = (list(choice.prompt.tokens) if choice.prompt else []) + choice.tokens
            logprobs = generation.completion_logprobs(engine, tokens)
        result.append({"text": text, "index": index, "logprobs": logprobs, "finish_reason": choice.finished.finish_reason})
    completion = {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": entry.model_id,
        "choices": result,
        "usage": generation.usage([choice.finished for choice in choices], prompt_tokens),
    }
    return Response(msgspec.json.encode(completion), media_type="application/json")


async def _sse_events(
    engine: Engine,
    body: CompletionRequest,
    tickets: list[Ticket],
    echoes: list[str],
    completion_id: str,
    model_id: str,
    created: int,
    include_usage: bool,
    prompt_tokens: int,
    keepalive: float | None = None,
) -> AsyncIterator[bytes]:
    def chunk(index: int, text: str, finish_reason: str | None = None, tokens=None) -> dict:
        logprobs = generation.completion_logprobs(engine, tokens) if body.logprobs is not None and tokens else None
        choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}
        return {"id": completion_id, "object": "text_completion", "created": created, "model": model_id, "choices": [choice]}

    finished: list[Finished] = []
    echoed = set()
    async for index, event in generation.merged(tickets, keepalive):
        if event is None:
            yield generation.KEEPALIVE
            continue
        if body.echo and index not in echoed and not isinstance(event, PromptScores):
            echoed.add(index)
            yield sse(chunk(index, echoes[index]))
        if isinstance(event, PromptScores):
            echoed.add(index)
            yield sse(chunk(index, echoes[index], tokens=list(event.tokens)))
        elif isinstance(event, TextDelta):
            if event.text or body.logprobs is not None:
                yield sse(chunk(index, event.text, tokens=[event.token]))
        elif isinstance(event, Finished):
            yield sse(chunk(index, event.text, event.finish_reason))
            finished.append(event)
        elif isinstance(event, Failed):
            yield sse(error_body(event.message, "server_error", code=event.code))
    if include_usage and len(finished) == len(tickets):
        usage = generation.usage(finished, prompt_tokens)
        yield sse({"id": completion_id, "object": "text_completion", "created": created, "model": model_id, "choices": [], "usage": usage})
    yield sse("[DONE]")
