"""POST /tokenize and /detokenize (service.serving.tokenization)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from service.routes.framing import json_response
from service.serving import tokenization
from service.serving.request_bodies import DetokenizeRequest, TokenizeRequest, decode_body


async def tokenize(request: Request) -> Response:
    return json_response(await tokenization.tokenize(request, decode_body(await request.body(), TokenizeRequest)))


async def detokenize(request: Request) -> Response:
    return json_response(await tokenization.detokenize(request, decode_body(await request.body(), DetokenizeRequest)))
