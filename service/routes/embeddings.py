"""POST /v1/embeddings (service.serving.embeddings)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from service.routes.framing import json_response
from service.serving.embeddings import create_embeddings
from service.serving.request_bodies import EmbeddingRequest, decode_body


async def embeddings(request: Request) -> Response:
    return json_response(await create_embeddings(request, decode_body(await request.body(), EmbeddingRequest)))
