"""The OpenAPI 3.1 document for every HTTP route, served at /openapi.json.

Request bodies come from the same msgspec structs that decode them, so the document cannot
drift from what the service accepts; `tests/test_openapi.py` checks that every route of the
app is described and that deploy/postman_collection.json was generated from this document.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from service import SERVICE_VERSION
from service.routes.sessions import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT
from service.serving import response_bodies as bodies
from service.serving.request_bodies import (
    AppendTurnRequest,
    ChatCompletionRequest,
    CompletionRequest,
    CreateSessionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    RegisterModelRequest,
    ResponseRequest,
    TokenizeRequest,
    UpdateSessionRequest,
)
from service.storage.session_store import MAX_QUERY_CHARACTERS


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    schema: dict


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    request: type | None = None
    success: int = 200
    errors: tuple[int, ...] = ()
    example: dict | None = None
    media_type: str = "application/json"
    body_required: bool = True
    response: object | None = None  # the success body's type (a msgspec struct); None: plain text
    stream: object | None = None  # with `"stream": true`, the type of each server-sent event's data
    query: tuple[Query, ...] = ()


_CHAT_EXAMPLE = {
    "model": "SmolLM2-135M-Instruct",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "temperature": 0,
    "max_tokens": 32,
}
_COMPLETION_EXAMPLE = {"model": "SmolLM2-135M-Instruct", "prompt": "The capital of France is", "max_tokens": 8}
_GENERATION_ERRORS = (400, 404, 429, 503)

_SESSION_LIST_QUERY = (
    Query("limit", f"sessions per page, 1 to {MAX_LIST_LIMIT}", {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT, "default": DEFAULT_LIST_LIMIT}),
    Query("after", "the last id of the previous page (its `last_id`)", {"type": "string"}),
    Query("q", "keep sessions with a message holding every word of it, each with a snippet", {"type": "string", "maxLength": MAX_QUERY_CHARACTERS}),
)

OPERATIONS: list[Operation] = [
    Operation("GET", "/livez", "Liveness: the process answers", response=bodies.Status),
    Operation(
        "GET", "/readyz", "Readiness: a model can serve requests (503 while none can, or while draining)", errors=(503,),
        response=bodies.Readiness,
    ),
    Operation("GET", "/startupz", "Startup: the models given at startup are registered (503 before)", errors=(503,), response=bodies.Status),
    Operation(
        "GET", "/metrics", "Prometheus metrics (text exposition format); see docs/operations.md", media_type="text/plain"
    ),
    Operation("GET", "/v1/models", "List models with their status", response=bodies.ModelList),
    Operation(
        "POST",
        "/v1/models",
        "Register a model (converted folder, GGUF file or checkpoint folder); converts and loads in the background",
        RegisterModelRequest,
        success=202,
        errors=(400, 409, 503, 507),
        example={"id": "my-model", "source": "/models/my-model.gguf", "max_context": 2048},
        response=bodies.Model,
    ),
    Operation("GET", "/v1/models/{model_id}", "One model: status, conversion progress, error", errors=(404,), response=bodies.Model),
    Operation(
        "DELETE", "/v1/models/{model_id}", "Unload a model; requests in flight finish first", errors=(404, 503, 507),
        response=bodies.ModelDeleted,
    ),
    Operation(
        "POST",
        "/v1/chat/completions",
        "Chat completion, whole or streamed as server-sent events",
        ChatCompletionRequest,
        errors=_GENERATION_ERRORS,
        example=_CHAT_EXAMPLE,
        response=bodies.ChatCompletion,
        stream=bodies.ChatCompletionChunk,
    ),
    Operation(
        "POST",
        "/v1/completions",
        "Text completion; echo with logprobs scores the prompt",
        CompletionRequest,
        errors=_GENERATION_ERRORS,
        example=_COMPLETION_EXAMPLE,
        response=bodies.Completion,
        stream=bodies.Completion,
    ),
    Operation(
        "POST",
        "/v1/responses",
        "A model response (OpenAI's Responses API), whole or streamed as typed events; previous_response_id continues a stored one",
        ResponseRequest,
        errors=(*_GENERATION_ERRORS, 507),
        example={"model": "SmolLM2-135M-Instruct", "input": "What is the capital of France?", "max_output_tokens": 32},
        response=bodies.Response,
        stream=bodies.ResponseStreamEvent,
    ),
    Operation(
        "POST",
        "/v1/embeddings",
        "Embeddings: each input's final hidden states, mean-pooled to unit length; floats or base64",
        EmbeddingRequest,
        errors=(400, 404, 429, 503),
        example={"model": "SmolLM2-135M-Instruct", "input": ["The capital of France is Paris."]},
        response=bodies.EmbeddingList,
    ),
    Operation(
        "POST",
        "/tokenize",
        "A text or a conversation as the model's token ids, with their count and the model's context length",
        TokenizeRequest,
        errors=(400, 404, 503),
        example={"model": "SmolLM2-135M-Instruct", "prompt": "The capital of France is"},
        response=bodies.Tokenized,
    ),
    Operation(
        "POST",
        "/detokenize",
        "Token ids back to text",
        DetokenizeRequest,
        errors=(400, 404, 503),
        example={"model": "SmolLM2-135M-Instruct", "tokens": [504, 3575, 282, 4649, 314]},
        response=bodies.Detokenized,
    ),
    Operation(
        "POST",
        "/v1/sessions",
        "Create a chat session (history kept in SQLite; chat with session_id uses and extends it)",
        CreateSessionRequest,
        success=201,
        errors=(400, 404, 503, 507),
        example={"title": "Trip planning", "system_prompt": "You are a concise assistant.", "max_turns": 20},
        body_required=False,  # no body: a session with every default
        response=bodies.SessionWithMessages,
    ),
    Operation(
        "GET", "/v1/sessions", "List sessions, newest first; ?q= searches past messages, ?limit and ?after page", errors=(400, 503),
        response=bodies.SessionList, query=_SESSION_LIST_QUERY,
    ),
    Operation("GET", "/v1/sessions/{session_id}", "One session with its messages", errors=(404, 503), response=bodies.SessionWithMessages),
    Operation(
        "PATCH",
        "/v1/sessions/{session_id}",
        "Rename a session or replace its metadata",
        UpdateSessionRequest,
        errors=(400, 404, 503, 507),
        example={"title": "Trip to Lisbon"},
        response=bodies.Session,
    ),
    Operation(
        "DELETE", "/v1/sessions/{session_id}", "Delete a session and its messages", errors=(404, 503, 507), response=bodies.SessionDeleted
    ),
    Operation(
        "POST",
        "/v1/sessions/{session_id}/turns",
        "Store a turn the client already holds (e.g. an answer it stopped) as the session's next turn, without generating",
        AppendTurnRequest,
        success=201,
        errors=(400, 404, 503, 507),
        example={"messages": [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": "Once upon a"}]},
        response=bodies.SessionWithMessages,
    ),
    Operation(
        "DELETE",
        "/v1/sessions/{session_id}/turns/last",
        "Take back a session's newest turn (its messages and answer), e.g. to ask again; 409 session_empty without one",
        errors=(404, 409, 503, 507),
        response=bodies.TurnDeleted,
    ),
    Operation("GET", "/openapi.json", "This document", response=dict),
]

# Open without an API key: orchestrators probe them. /metrics is too with --metrics-public.
_OPEN_PATHS = {"/livez", "/readyz", "/startupz"}
# Only admin keys may change the model registry.
_ADMIN_OPERATIONS = {("POST", "/v1/models"), ("DELETE", "/v1/models/{model_id}")}
_SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "an API key: `Authorization: Bearer KEY`"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def openapi_document(operations: list[Operation] = OPERATIONS) -> dict:
    types = list(
        dict.fromkeys(
            kind
            for operation in operations
            for kind in (operation.request, operation.response, operation.stream)
            if kind is not None
        )
    )
    schemas, components = msgspec.json.schema_components([*types, bodies.ErrorBody], ref_template="#/components/schemas/{name}")
    by_type = dict(zip(types, schemas, strict=False))
    paths: dict[str, dict] = {}
    for operation in operations:
        success = by_type[operation.response] if operation.response is not None else {"type": "string"}
        entry: dict = {
            "summary": operation.summary,
            "operationId": f"{operation.method.lower()}_{operation.path.strip('/').replace('/', '_').replace('{', '').replace('}', '').replace('.', '_')}",
            "responses": {
                str(operation.success): {"description": "success", "content": {operation.media_type: {"schema": success}}},
                **{str(status): {"description": "error", "content": _ERROR_CONTENT} for status in operation.errors},
            },
        }
        if operation.path in _OPEN_PATHS:
            entry["security"] = []
        else:
            entry["responses"]["401"] = {"description": "no valid API key (code invalid_api_key)", "content": _ERROR_CONTENT}
            forbidden = "without API keys: a foreign Host or page Origin (host_not_allowed, cross_site_request)"
            if (operation.method, operation.path) in _ADMIN_OPERATIONS:
                forbidden = f"not an admin key (code insufficient_scope), or {forbidden}"
            entry["responses"]["403"] = {"description": forbidden, "content": _ERROR_CONTENT}
            entry["responses"].setdefault("429", {"description": "a per-key limit (requests_per_minute, ...); Retry-After says when", "content": _ERROR_CONTENT})
        if operation.request is not None:
            entry["responses"]["413"] = {"description": "a body over max_body_bytes (request_too_large)", "content": _ERROR_CONTENT}
        if operation.method == "POST":
            entry["responses"]["408"] = {"description": "the body did not arrive in time (request_timeout)", "content": _ERROR_CONTENT}
            entry["responses"]["415"] = {
                "description": "without API keys: a body not sent as application/json (unsupported_media_type)", "content": _ERROR_CONTENT,
            }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in ("model_id", "session_id")
            if "{" + name + "}" in operation.path
        ]
        parameters += [
            {"name": query.name, "in": "query", "required": False, "description": query.description, "schema": query.schema}
            for query in operation.query
        ]
        if parameters:
            entry["parameters"] = parameters
        if operation.request is not None:
            media = {"schema": by_type[operation.request]}
            if operation.example is not None:
                media["example"] = operation.example
            entry["requestBody"] = {"required": operation.body_required, "content": {"application/json": media}}
        if operation.stream is not None:
            # OpenAPI 3.1 cannot type the events of a stream (3.2's itemSchema can): the schema
            # of each event's `data:` goes in an extension, its types in the components.
            entry["responses"]["200"]["content"]["text/event-stream"] = {
                "schema": {"type": "string", "description": "server-sent events; each `data:` is JSON of the type in x-event-data"},
                "x-event-data": by_type[operation.stream],
            }
        paths.setdefault(operation.path, {})[operation.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "llm-service", "version": SERVICE_VERSION, "description": "OpenAI-compatible inference for small local models"},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": _SECURITY_SCHEMES},
        "security": [{"bearerAuth": []}, {"apiKeyHeader": []}],
    }


def postman_collection(document: dict) -> dict:
    """A Postman v2.1 collection with one request per operation, example bodies included, and the
    service address as the `baseUrl` variable and the API key as `apiKey`."""
    items = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            postman_path = path.replace("{model_id}", ":model_id").replace("{session_id}", ":session_id")
            request: dict = {
                "method": method.upper(),
                "header": [{"key": "Content-Type", "value": "application/json"}, {"key": "Authorization", "value": "Bearer {{apiKey}}"}],
                "url": {
                    "raw": "{{baseUrl}}" + postman_path,
                    "host": ["{{baseUrl}}"],
                    "path": [segment for segment in postman_path.split("/") if segment],
                },
                "description": operation["summary"],
            }
            if "{model_id}" in path:
                request["url"]["variable"] = [{"key": "model_id", "value": "SmolLM2-135M-Instruct"}]
            if "{session_id}" in path:
                request["url"]["variable"] = [{"key": "session_id", "value": "sess_..."}]
            example = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("example")
            if example is not None:
                request["body"] = {"mode": "raw", "raw": msgspec.json.format(msgspec.json.encode(example)).decode(), "options": {"raw": {"language": "json"}}}
            items.append({"name": f"{method.upper()} {path}", "request": request})
    return {
        "info": {
            "name": "llm-service",
            "description": "Generated from /openapi.json by `python -m service.openapi`; do not edit by hand.",
            "schema": "https://schema.getpostman.com/json/collection/v2.1.0/collection.json",
        },
        "variable": [{"key": "baseUrl", "value": "http://127.0.0.1:8000"}, {"key": "apiKey", "value": ""}],
        "item": items,
    }


def main() -> None:
    """Writes deploy/postman_collection.json (and prints nothing else)."""
    from pathlib import Path

    target = Path(__file__).resolve().parent.parent / "deploy" / "postman_collection.json"
    target.write_text(msgspec.json.format(msgspec.json.encode(postman_collection(openapi_document())), indent=2).decode() + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
