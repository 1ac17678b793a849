"""What every generating endpoint shares before and at the queue: tokenizing off the event loop,
request options into engine requests (sampling options with the model's defaults, the token
budget), and admission with the right refusals (429 when the queue is full, 503 when no slot
frees up in time)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import TypeVar

from starlette.requests import HTTPConnection

from service.engine.engine import Engine, EngineBusy, Failed, GenerationRequest, Ticket
from service.engine.sampler import SamplingParams
from service.errors import APIError
from service.operations import limits
from service.serving.request_bodies import GenerationOptions

Result = TypeVar("Result")

# Seconds a refused client is told to wait before trying again.
RETRY_AFTER_BUSY = 1
RETRY_AFTER_TIMEOUT = 5


async def off_loop(connection: HTTPConnection, work: Callable[..., Result], *arguments) -> Result:
    """Runs tokenizing or templating on the app's tokenizer threads: a megabyte prompt takes
    seconds, which on the event loop would stall every stream and probe; the threads' number
    bounds how much of the machine such prompts can take at once."""
    return await asyncio.get_running_loop().run_in_executor(connection.app.state.tokenizer_threads, partial(work, *arguments))


def sampling_params(engine: Engine, body: GenerationOptions, logprobs: bool, top_logprobs: int) -> SamplingParams:
    defaults = engine.folder.generation.get("defaults", {})
    vocab_size = int(engine.folder.config.get("vocab_size") or engine.folder.tokenizer.get_vocab_size())
    bias = {}
    for key, value in (body.logit_bias or {}).items():
        if not (key.isascii() and key.isdigit()) or not int(key) < vocab_size:
            raise APIError(400, f"logit_bias key {key!r} is not a token id of this model (0..{vocab_size - 1})", param="logit_bias")
        bias[int(key)] = float(value)
    top_k = body.top_k if body.top_k is not None else defaults.get("top_k", 0)
    return SamplingParams(
        temperature=body.temperature if body.temperature is not None else defaults.get("temperature", 1.0),
        top_p=body.top_p if body.top_p is not None else defaults.get("top_p", 1.0),
        top_k=max(top_k, 0),
        min_p=body.min_p or 0.0,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        logit_bias=bias,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


def completion_budget(engine: Engine, prompt_ids: list[int], requested: int | None, param: str) -> int:
    """max_tokens, or the rest of the context; 400 context_length_exceeded when it cannot fit."""
    room = engine.capacity - len(prompt_ids)
    if room < 1 or (requested is not None and requested > room):
        raise APIError(
            400,
            f"this model's maximum context length is {engine.capacity} tokens; the prompt takes "
            f"{len(prompt_ids)} tokens and {requested or 1} were requested for the completion",
            param=param,
            code="context_length_exceeded",
        )
    return requested or room


def choices_of(request: GenerationRequest, count: int) -> list[GenerationRequest]:
    """`count` copies of a request; with a seed, each copy gets its own (seed, seed + 1, ...)."""
    seed = request.sampling.seed
    if seed is None:
        return [request] * count
    return [replace(request, sampling=replace(request.sampling, seed=seed + index)) for index in range(count)]


async def admit(engine: Engine, requests: list[GenerationRequest], charge: limits.Charge) -> list[Ticket]:
    """Submits every request and waits until each has a slot, or refuses them all and gives the
    key back the tokens `charge` took: only what runs is charged."""
    tickets: list[Ticket] = []
    try:
        for request in requests:
            tickets.append(engine.submit(request))
        for ticket in tickets:
            event = await ticket.next_event()
            if isinstance(event, Failed):
                if event.code == "queue_timeout":
                    raise APIError(503, event.message, code="queue_timeout", headers={"Retry-After": str(RETRY_AFTER_TIMEOUT)})
                raise APIError(503 if event.code == "model_unloaded" else 500, event.message, code=event.code)
    except EngineBusy as error:
        for ticket in tickets:
            ticket.cancel()
        charge.refund()
        raise APIError(429, f"the server is busy: {error}; retry shortly", code="server_busy", headers={"Retry-After": str(RETRY_AFTER_BUSY)}) from error
    except BaseException:
        for ticket in tickets:
            ticket.cancel()
        charge.refund()
        raise
    return tickets
