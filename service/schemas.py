"""Request bodies as msgspec structs: decoding and validation in one step, errors with a path."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from service.errors import APIError


class TextPart(Struct, tag_field="type", tag="text"):
    text: str


class ChatMessage(Struct):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(Struct):
    include_usage: bool = False


Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(gt=0.0, le=1.0)]
PositiveInt = Annotated[int, Meta(ge=1)]


class ChatCompletionRequest(Struct, kw_only=True):
    model: str
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    seed: int | None = None
    n: PositiveInt = 1
    user: str | None = None
    # Accepted so that clients sending their defaults work; other values are refused until the
    # engine implements them, rather than silently ignored.
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def unsupported_option(self) -> str | None:
        if self.n != 1:
            return "n"
        if self.stop:
            return "stop"
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                return name
        if self.logit_bias:
            return "logit_bias"
        if self.logprobs or self.top_logprobs:
            return "logprobs"
        return None


_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"missing required field `([^`]+)`")


def _param_of(message: str) -> str | None:
    """The request field a msgspec error points at, in OpenAI's dotted form."""
    path = _AT_PATH.search(message)
    missing = _MISSING.search(message)
    parts = [part for part in (path.group(1) if path else "", missing.group(1) if missing else "") if part]
    return ".".join(parts) or None


def decode_body(body: bytes, schema: type[Struct]):
    """Decodes a JSON body into `schema`, or raises a 400 APIError that names the bad field."""
    if not body.strip():
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        return msgspec.json.decode(body, type=schema)
    except msgspec.ValidationError as error:
        message = str(error)
        raise APIError(400, f"invalid request: {message}", param=_param_of(message), code="invalid_value") from error
    except msgspec.DecodeError as error:
        raise APIError(400, f"the request body is not valid JSON: {error}", code="invalid_json") from error
