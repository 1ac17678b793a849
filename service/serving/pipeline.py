"""The one loop from the engine to a client: admitted tickets' events, merged by choice.

Every generating endpoint runs its answer through `choice_events`: a stream turns each event
into its typed chunks as it comes, a whole answer folds them with `gather`. Keep-alives,
cancelling every choice when the consumer leaves, and noticing a client that left before a
whole answer was ready are therefore written once, here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.requests import Request

from service.engine.engine import Failed, Finished, PromptScores, TextDelta, Ticket
from service.engine.sequence import TokenLogprob
from service.errors import APIError
from service.serving.response_bodies import ErrorDetail, PromptTokensDetails, Usage


class Keepalive:
    """Nothing happened for the keep-alive interval (a long prompt prefilling): SSE sends a
    comment, so proxies with read timeouts keep the connection and a vanished client is noticed."""


KEEPALIVE = Keepalive()


@dataclass(frozen=True)
class ChoiceEvent:
    index: int  # which of the request's choices (n, or prompts x n) the event belongs to
    event: PromptScores | TextDelta | Finished | Failed


async def choice_events(tickets: list[Ticket], keepalive: float | None = None) -> AsyncIterator[ChoiceEvent | Keepalive]:
    """Every ticket's events as they come; cancels them all when the consumer stops early. With
    `keepalive`, KEEPALIVE comes whenever that many seconds pass without an event."""
    queue: asyncio.Queue[ChoiceEvent | None] = asyncio.Queue()

    async def pump(index: int, ticket: Ticket) -> None:
        async for event in ticket.events():
            await queue.put(ChoiceEvent(index, event))
        await queue.put(None)

    tasks = [asyncio.ensure_future(pump(index, ticket)) for index, ticket in enumerate(tickets)]
    remaining = len(tasks)
    try:
        while remaining:
            try:
                async with asyncio.timeout(keepalive):  # unlike wait_for, no task per event
                    item = await queue.get()
            except TimeoutError:
                yield KEEPALIVE
                continue
            if item is None:
                remaining -= 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        for ticket in tickets:
            ticket.cancel()


@dataclass
class Choice:
    """One choice, gathered whole."""

    text: list[str] = field(default_factory=list)
    tokens: list[TokenLogprob] = field(default_factory=list)
    prompt: PromptScores | None = None
    finished: Finished | None = None

    @property
    def answer(self) -> str:
        return "".join(self.text)


async def gather(tickets: list[Ticket], connection: Request) -> list[Choice]:
    """Every choice gathered whole. If the client leaves first, the generations are cancelled
    at once (as a stream's are) and 499 `client_closed_request` is raised for the logs."""

    async def fold() -> list[Choice]:
        choices = [Choice() for _ in tickets]
        async for item in choice_events(tickets):
            choice, event = choices[item.index], item.event
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
        return choices

    gathered = asyncio.ensure_future(fold())
    watcher = asyncio.ensure_future(client_gone(connection))
    try:
        await asyncio.wait([gathered, watcher], return_when=asyncio.FIRST_COMPLETED)
        if not gathered.done():
            raise APIError(
                499, "the client closed the connection before the answer was ready",
                code="client_closed_request", error_type="invalid_request_error",
            )
        return gathered.result()
    finally:
        watcher.cancel()
        gathered.cancel()
        for ticket in tickets:
            ticket.cancel()


async def client_gone(connection: Request) -> None:
    """Returns once the client has closed its connection. Its body was read whole before, so
    the next message the server has for this request is the disconnect."""
    while (await connection.receive())["type"] != "http.disconnect":
        pass


def usage(finished: list[Finished], prompt_tokens: int) -> Usage:
    """Token counts: each distinct prompt once, every choice's completion tokens."""
    completion = sum(event.completion_tokens for event in finished)
    cached = max((event.cached_tokens for event in finished), default=0)
    return Usage(prompt_tokens, completion, prompt_tokens + completion, PromptTokensDetails(cached))


def answered(finished: list[Finished]) -> bool:
    """Every choice ended as answers end (not cancelled): only then is a turn worth keeping."""
    return all(event.finish_reason != "cancelled" for event in finished)


@dataclass(frozen=True)
class StreamError:
    """A failure after the stream began: SSE sends it and goes on, the WebSocket ends the request."""

    status: int
    error: ErrorDetail

    @classmethod
    def of(cls, error: APIError) -> StreamError:
        return cls(error.status, error.detail())


@dataclass(frozen=True)
class StreamEnd:
    """Every choice finished: what the WebSocket's `done` says (SSE sends nothing for it)."""

    finish_reasons: list[str]
    usage: Usage
