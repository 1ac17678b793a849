"""Per-key limits (requests and tokens per minute, concurrent streams) and request guards (body
bytes, messages, prompt tokens, max_tokens).

Tokens per minute are charged at admission as prompt tokens plus the completion budget
(max_tokens, or the rest of the context when none is given, times `n`), and not corrected
afterwards: a key can never run past its budget, at the cost of counting short answers in full.
A request the engine refuses (server_busy, queue_timeout) gets its tokens back: only what runs
is charged.

Concurrent streams count generations, whatever the transport: an HTTP generation request holds
a place while it runs, and so does each chat completion running on a WebSocket.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.engine.sequence import GenerationRequest
from service.errors import APIError
from service.operations.auth import ApiKey, refuse
from service.routes import GENERATION_PATHS



@dataclass
class TokenBucket:
    """`per_minute` units, refilled continuously; a request takes what it costs or waits."""

    per_minute: int
    level: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.level = float(self.per_minute)

    def give_back(self, amount: float) -> None:
        self.level = min(self.per_minute, self.level + amount)

    def take(self, amount: float) -> float:
        """Takes `amount` and returns 0, or takes nothing and returns the seconds until it could."""
        now = time.monotonic()
        self.level = min(self.per_minute, self.level + (now - self.updated) * self.per_minute / 60)
        self.updated = now
        if amount <= self.level:
            self.level -= amount
            return 0.0
        return (amount - self.level) * 60 / self.per_minute


@dataclass
class KeyLimits:
    key: ApiKey
    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None
    streams_open: int = 0

    @classmethod
    def of(cls, key: ApiKey) -> KeyLimits:
        return cls(key, TokenBucket(key.rpm) if key.rpm else None, TokenBucket(key.tpm) if key.tpm else None)

    def take_stream(self) -> None:
        """Takes one of the key's concurrent generations (give it back with release_stream),
        or refuses (429)."""
        if self.key.streams and self.streams_open >= self.key.streams:
            message = f"this key may run {self.key.streams} concurrent streams; one must end first"
            raise _rate_limited(message, "concurrent_streams", 1)
        self.streams_open += 1

    def release_stream(self) -> None:
        self.streams_open -= 1


# Seconds a request's body may take to arrive, from the first read: 1 MiB needs 8 s at 1 Mbit/s.
BODY_SECONDS = 10.0


def _rate_limited(message: str, code: str, wait: float) -> APIError:
    return APIError(429, message, code=code, error_type="rate_limit_exceeded", headers={"Retry-After": str(max(1, math.ceil(wait)))})


class RateLimitMiddleware:
    """Requests per minute and concurrent streams of the key AuthenticationMiddleware found."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.by_key: dict[str, KeyLimits] = {}

    def limits_of(self, key: ApiKey) -> KeyLimits:
        if key.id not in self.by_key:
            self.by_key[key.id] = KeyLimits.of(key)
        return self.by_key[key.id]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = scope.get("state", {}).get("api_key") if scope["type"] in ("http", "websocket") else None
        if key is None:
            await self.app(scope, receive, send)
            return
        limits = self.limits_of(key)
        scope["state"]["key_limits"] = limits
        if limits.requests is not None and (wait := limits.requests.take(1)):
            message = f"this key may make {key.rpm} requests per minute (rpm); retry in {math.ceil(wait)}s"
            await refuse(scope, receive, send, _rate_limited(message, "requests_per_minute", wait))
            return
        # A generation holds a stream place while it runs (a WebSocket one per chat completion: take_stream).
        if scope["path"] not in GENERATION_PATHS or not key.streams:
            await self.app(scope, receive, send)
            return
        try:
            limits.take_stream()
        except APIError as error:
            await refuse(scope, receive, send, error)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            limits.release_stream()


def charge_request(connection: HTTPConnection) -> None:
    """Charges one request to its key's requests-per-minute budget, or refuses it (429): for the
    second and later requests on one WebSocket, whose handshake paid for the first."""
    limits = _limits_of(connection)
    if limits is None or limits.requests is None:
        return
    if wait := limits.requests.take(1):
        message = f"this key may make {limits.key.rpm} requests per minute (rpm); retry in {math.ceil(wait)}s"
        raise _rate_limited(message, "requests_per_minute", wait)


def _limits_of(connection: HTTPConnection) -> KeyLimits | None:
    return connection.scope.get("state", {}).get("key_limits")


def take_stream(connection: HTTPConnection) -> None:
    """Takes one of the key's concurrent generations for a chat completion on a WebSocket (an
    HTTP request's is taken by RateLimitMiddleware), or refuses it (429)."""
    if (limits := _limits_of(connection)) is not None:
        limits.take_stream()


def release_stream(connection: HTTPConnection) -> None:
    if (limits := _limits_of(connection)) is not None:
        limits.release_stream()


@dataclass
class Charge:
    """Tokens charged to a key for one admission, to give back if the engine refuses it."""

    bucket: TokenBucket | None = None
    tokens: int = 0

    def refund(self) -> None:
        if self.bucket is not None:
            self.bucket.give_back(self.tokens)
            self.bucket = None


def charge_tokens(connection: HTTPConnection, tokens: int) -> Charge:
    """Charges a generation's tokens to its key's tokens-per-minute budget, or refuses it (429)."""
    limits = _limits_of(connection)
    if limits is None or limits.tokens is None:
        return Charge()
    if tokens > limits.key.tpm:
        raise APIError(
            429, f"this request needs {tokens} tokens (prompt plus max_tokens); this key may use {limits.key.tpm} per minute (tpm)",
            code="tokens_per_minute", error_type="rate_limit_exceeded",
        )
    if wait := limits.tokens.take(tokens):
        message = f"this key may use {limits.key.tpm} tokens per minute (tpm); retry in {math.ceil(wait)}s"
        raise _rate_limited(message, "tokens_per_minute", wait)
    return Charge(limits.tokens, tokens)


class BodySizeLimitMiddleware:
    """Refuses request bodies over `max_bytes` while they are read, before anything parses them,
    and bodies that take over BODY_SECONDS to arrive (a client sending a byte at a time would
    otherwise hold its connection as long as it likes)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def too_large(self, size: str) -> APIError:
        return APIError(
            413, f"the request body is {size}; the limit is {self.max_bytes} bytes (--max-body-bytes)",
            param=None, code="request_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if self.max_bytes and declared.isdigit() and int(declared) > self.max_bytes:
            await refuse(scope, receive, send, self.too_large(f"{int(declared)} bytes"))
            return
        received = 0
        deadline = time.monotonic() + BODY_SECONDS
        body_complete = False

        async def bounded_receive() -> Message:
            nonlocal received, body_complete
            if body_complete:  # what follows the body (a disconnect) may take as long as it takes
                return await receive()
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    message = await receive()
            except TimeoutError:
                raise APIError(
                    408, f"the request body did not arrive within {BODY_SECONDS:g}s", code="request_timeout"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_complete = not message.get("more_body", False)
                if self.max_bytes and received > self.max_bytes:
                    raise self.too_large(f"over {received} bytes")  # the route's handler turns it into a 413
            return message

        await self.app(scope, bounded_receive, send)


@dataclass(frozen=True)
class Guards:
    """Bounds on one generation request; 0 means no bound."""

    max_messages: int = 0
    max_prompt_tokens: int = 0
    max_completion_tokens: int = 0

    def check_messages(self, count: int) -> None:
        if self.max_messages and count > self.max_messages:
            raise APIError(
                400, f"the request has {count} messages; the limit is {self.max_messages} (--max-messages)",
                param="messages", code="too_many_messages",
            )

    def check_prompt(self, prompt_tokens: int, param: str) -> None:
        if self.max_prompt_tokens and prompt_tokens > self.max_prompt_tokens:
            raise APIError(
                400, f"the prompt is {prompt_tokens} tokens; the limit is {self.max_prompt_tokens} (--max-prompt-tokens)",
                param=param, code="prompt_too_long",
            )

    def check_completion(self, max_tokens: int | None, param: str) -> None:
        if self.max_completion_tokens and max_tokens is not None and max_tokens > self.max_completion_tokens:
            raise APIError(
                400, f"{param} is {max_tokens}; the limit is {self.max_completion_tokens} (--max-completion-tokens)",
                param=param, code="max_tokens_too_large",
            )


def check_admission(connection: HTTPConnection, requests: list[GenerationRequest], prompt_param: str) -> Charge:
    """Before requests reach the engine: each prompt within --max-prompt-tokens, and every
    request's prompt plus completion budget charged to the key's tokens per minute; refund the
    charge if the engine refuses them."""
    guards: Guards = connection.app.state.guards
    for request in requests:
        guards.check_prompt(len(request.prompt_ids), prompt_param)
    return charge_tokens(connection, sum(len(request.prompt_ids) + request.max_new_tokens for request in requests))
