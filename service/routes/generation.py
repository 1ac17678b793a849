"""What chat and text completions share: request options into engine requests, admission with
the right refusals (429 when the queue is full, 503 when no slot frees up in time), choices
collected whole or merged into one stream, usage and log-probabilities in OpenAI's shapes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TypeVar

from starlette.requests import HTTPConnection, Request

from service.engine import Engine, EngineBusy, Failed, Finished, GenerationRequest, PromptScores, TextDelta, Ticket
from service.errors import APIError
from service.sampler import SamplingParams
from service.schemas import GenerationOptions
from service.sequence import TokenLogprob

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


async def admit(engine: Engine, requests: list[GenerationRequest]) -> list[Ticket]:
    """Submits every request and waits until each has a slot, or refuses them all."""
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
        raise APIError(429, f"the server is busy: {error}; retry shortly", code="server_busy", headers={"Retry-After": str(RETRY_AFTER_BUSY)}) from error
    except BaseException:
        for ticket in tickets:
            ticket.cancel()
        raise
    return tickets


@dataclass
class Choice:
    """One choice, gathered whole."""

    text: list[str] = field(default_factory=list)
    tokens: list[TokenLogprob] = field(default_factory=list)
    prompt: PromptScores | None = None
    finished: Finished | None = None


async def client_gone(connection: Request) -> None:
    """Returns once the client has closed its connection. Its body was read whole before, so
    the next message the server has for this request is the disconnect."""
    while (await connection.receive())["type"] != "http.disconnect":
        pass


async def collect(tickets: list[Ticket], connection: Request) -> list[Choice]:
    """Every choice gathered whole; if the client leaves first, the generations are cancelled
    at once (as a stream's are) and 499 `client_closed_request` is raised for the logs."""

    async def one(ticket: Ticket) -> Choice:
        choice = Choice()
        async for event in ticket.events():
            if isinstance(event, TextDelta):
                choice.text.append(event.text)
                choice.tokens.append(event.token)
            elif isinstance(event, PromptScores):
                choice.prompt = event
            elif isinstance(event, Finished):
                choice.text.append(event.text)
                choice.finished = event
            elif isinstance(event, Failed):
                raise APIError(500, event.message, error_type="server_error", code=event.code)
        return choice

    tasks = [asyncio.ensure_future(one(ticket)) for ticket in tickets]
    gathered = asyncio.gather(*tasks)
    watcher = asyncio.ensure_future(client_gone(connection))
    try:
        await asyncio.wait([gathered, watcher], return_when=asyncio.FIRST_COMPLETED)
        if not gathered.done():
            raise APIError(
                499, "the client closed the connection before the answer was ready",
                code="client_closed_request", error_type="invalid_request_error",
            )
        return list(gathered.result())
    finally:
        watcher.cancel()
        gathered.cancel()
        for ticket in tickets:
            ticket.cancel()


# The SSE comment sent when a stream has been quiet for --sse-keepalive seconds (a long prompt
# prefilling): proxies and clients with read timeouts keep the connection, and a vanished
# client is noticed.
KEEPALIVE = b": keep-alive\n\n"


async def merged(tickets: list[Ticket], keepalive: float | None = None) -> AsyncIterator[tuple[int, object]]:
    """(choice index, event) from every ticket as they come; cancels them all when left early.
    With `keepalive`, (-1, None) comes whenever that many seconds pass without an event."""
    queue: asyncio.Queue[tuple[int, object] | None] = asyncio.Queue()

    async def pump(index: int, ticket: Ticket) -> None:
        async for event in ticket.events():
            await queue.put((index, event))
        await queue.put(None)

    tasks = [asyncio.ensure_future(pump(index, ticket)) for index, ticket in enumerate(tickets)]
    remaining = len(tasks)
    try:
        while remaining:
            try:
                async with asyncio.timeout(keepalive):  # unlike wait_for, no task per event
                    item = await queue.get()
            except TimeoutError:
                yield -1, None
                continue
            if item is None:
                remaining -= 1
                continue
            yield item
    finally:
        for task in tasks:
            task.cancel()
        for ticket in tickets:
            ticket.cancel()


def usage(finished: list[Finished], prompt_tokens: int) -> dict:
    """Token counts: each distinct prompt once, every choice's completion tokens."""
    completion = sum(event.completion_tokens for event in finished)
    cached = max((event.cached_tokens for event in finished), default=0)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


@dataclass(frozen=True)
class ChatChunks:
    """The chat.completion.chunk objects of one streamed completion; SSE and WebSocket send the same."""

    engine: Engine
    completion_id: str
    created: int
    model_id: str
    logprobs: bool

    def __call__(self, index: int, delta: dict, finish_reason: str | None = None, token: TokenLogprob | None = None) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        if self.logprobs and token is not None:
            choice["logprobs"] = chat_logprobs(self.engine, [token])
        return {**self.header(), "choices": [choice]}

    def header(self) -> dict:
        return {"id": self.completion_id, "object": "chat.completion.chunk", "created": self.created, "model": self.model_id}


def token_text(engine: Engine, token_id: int) -> str:
    return engine.folder.tokenizer.decode([token_id], skip_special_tokens=False)


def chat_logprobs(engine: Engine, tokens: list[TokenLogprob]) -> dict:
    """choices[].logprobs of a chat completion: {"content": [{token, logprob, bytes, top_logprobs}]}."""

    def entry(token_id: int, logprob: float) -> dict:
        text = token_text(engine, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            {**entry(token.token_id, token.logprob), "top_logprobs": [entry(other, value) for other, value in token.top_logprobs]}
            for token in tokens
        ]
    }


def completion_logprobs(engine: Engine, tokens: list[TokenLogprob], start_offset: int = 0) -> dict:
    """choices[].logprobs of a text completion: parallel lists, as the legacy API has them."""
    texts = [token_text(engine, token.token_id) for token in tokens]
    offsets, position = [], start_offset
    for text in texts:
        offsets.append(position)
        position += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [token.logprob for token in tokens],
        "top_logprobs": [
            None if token.logprob is None else {token_text(engine, other): value for other, value in token.top_logprobs}
            for token in tokens
        ],
        "text_offset": offsets,
    }
