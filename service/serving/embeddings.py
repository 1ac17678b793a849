"""POST /v1/embeddings: each input's embedding (service.engine.embedder: the mean of the model's final
hidden states, at unit length) in OpenAI's shape, as floats or as base64 of float32s.

Inputs are tokenized as text completion prompts are (BOS included where the model adds one);
each must fit the model's context. They count against the key's tokens per minute like prompts.
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
from starlette.requests import HTTPConnection

from service.engine.engine import Engine
from service.errors import APIError
from service.operations import limits
from service.operations.logs import request_fields
from service.serving.generation import off_loop
from service.serving.model_access import ready_model
from service.serving.request_bodies import EmbeddingRequest
from service.serving.response_bodies import Embedding, EmbeddingList, EmbeddingUsage

def input_ids(engine: Engine, body: EmbeddingRequest) -> list[list[int]]:
    try:
        inputs = body.inputs()
    except ValueError as error:
        raise APIError(400, str(error), param="input") from error
    vocab_size = engine.folder.tokenizer.get_vocab_size()
    encoded = []
    for item in inputs:
        if isinstance(item, str):
            ids = engine.folder.encode(item)
        elif any(not 0 <= token < vocab_size for token in item):
            raise APIError(400, f"input token ids must be between 0 and {vocab_size - 1}", param="input")
        else:
            ids = item
        if not ids:
            raise APIError(400, "an input is empty", param="input")
        if len(ids) > engine.capacity:
            raise APIError(
                400, f"this model's maximum context length is {engine.capacity} tokens; an input takes {len(ids)}",
                param="input", code="context_length_exceeded",
            )
        encoded.append(ids)
    return encoded


def encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


async def create_embeddings(connection: HTTPConnection, body: EmbeddingRequest) -> EmbeddingList:
    entry = ready_model(connection, body.model)
    if body.user is not None:  # the request's log line carries it, as a generation's does
        request_fields(connection.scope)["user"] = body.user
    engine = entry.engine
    embedder = engine.embedder
    if embedder is None:
        raise APIError(
            400, f"the model {entry.model_id!r} gives no hidden states (converted before converter 0.7.0, or by optimum); "
            "convert it again to embed with it", param="model", code="embeddings_unsupported",
        )
    hidden_size = int(engine.folder.config["hidden_size"])
    if body.dimensions is not None and body.dimensions != hidden_size:
        raise APIError(
            400, f"the model {entry.model_id!r} embeds in {hidden_size} dimensions; other `dimensions` are not supported",
            param="dimensions", code="unsupported_parameter",
        )
    inputs = await off_loop(connection, input_ids, engine, body)
    for ids in inputs:
        connection.app.state.guards.check_prompt(len(ids), "input")
    tokens = sum(len(ids) for ids in inputs)
    charge = limits.charge_tokens(connection, tokens)
    try:
        vectors = [await asyncio.to_thread(embedder.embed, ids) for ids in inputs]
    except BaseException:
        charge.refund()
        raise
    data = [Embedding(index=index, embedding=encoded(vector, body.encoding_format)) for index, vector in enumerate(vectors)]
    return EmbeddingList(data=data, model=entry.model_id, usage=EmbeddingUsage(tokens, tokens))
