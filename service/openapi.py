"""The OpenAPI 3.1 document for every HTTP route, served at /openapi.json.

Request bodies come from the same msgspec structs that decode them, so the document cannot
drift from what the service accepts; `tests/test_openapi.py` checks that every route of the
app is described and that deploy/postman_collection.json was generated from this document.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from service import SERVICE_VERSION
from service.routes.models import RegisterModelRequest
from service.schemas import AppendTurnRequest, ChatCompletionRequest, CompletionRequest, CreateSessionRequest, UpdateSessionRequest


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


_CHAT_EXAMPLE = {
    "model": "SmolLM2-135M-Instruct",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "temperature": 0,
    "max_tokens": 32,
}
_COMPLETION_EXAMPLE = {"model": "SmolLM2-135M-Instruct", "prompt": "The capital of France is", "max_tokens": 8}
_GENERATION_ERRORS = (400, 404, 429, 503)

OPERATIONS: list[Operation] = [
    Operation("GET", "/livez", "Liveness: the process answers"),
    Operation("GET", "/readyz", "Readiness: a model can serve requests (503 while none can, or while draining)", errors=(503,)),
    Operation("GET", "/startupz", "Startup: the models given at startup are registered (503 before)", errors=(503,)),
    Operation(
        "GET", "/metrics", "Prometheus metrics (text exposition format); see docs/operations.md", media_type="text/plain"
    ),
    Operation("GET", "/v1/models", "List models with their status"),
    Operation(
        "POST",
        "/v1/models",
        "Register a model (converted folder, GGUF file or checkpoint folder); converts and loads in the background",
        RegisterModelRequest,
        success=202,
        errors=(400, 409),
        example={"id": "my-model", "source": "/models/my-model.gguf", "max_context": 2048},
    ),
    Operation("GET", "/v1/models/{model_id}", "One model: status, conversion progress, error", errors=(404,)),
    Operation("DELETE", "/v1/models/{model_id}", "Unload a model; requests in flight finish first", errors=(404,)),
    Operation(
        "POST",
        "/v1/chat/completions",
        "Chat completion, whole or streamed as server-sent events",
        ChatCompletionRequest,
        errors=_GENERATION_ERRORS,
        example=_CHAT_EXAMPLE,
    ),
    Operation(
        "POST",
        "/v1/completions",
        "Text completion; echo with logprobs scores the prompt",
        CompletionRequest,
        errors=_GENERATION_ERRORS,
        example=_COMPLETION_EXAMPLE,
    ),
    Operation(
        "POST",
        "/v1/sessions",
        "Create a chat session (history kept in SQLite; chat with session_id uses and extends it)",
        CreateSessionRequest,
        success=201,
        errors=(400, 503, 507),
        example={"title": "Trip planning", "system_prompt": "You are a concise assistant.", "max_turns": 20},
        body_required=False,  # no body: a session with every default
    ),
    Operation(
        "GET", "/v1/sessions", "List sessions, newest first; ?q= searches past messages, ?limit and ?after page", errors=(400, 503)
    ),
    Operation("GET", "/v1/sessions/{session_id}", "One session with its messages", errors=(404,)),
    Operation(
        "PATCH",
        "/v1/sessions/{session_id}",
        "Rename a session or replace its metadata",
        UpdateSessionRequest,
        errors=(400, 404),
        example={"title": "Trip to Lisbon"},
    ),
    Operation("DELETE", "/v1/sessions/{session_id}", "Delete a session and its messages", errors=(404, 503, 507)),
    Operation(
        "POST",
        "/v1/sessions/{session_id}/turns",
        "Store a turn the client already holds (e.g. an answer it stopped) as the session's next turn, without generating",
        AppendTurnRequest,
        success=201,
        errors=(400, 404),
        example={"messages": [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": "Once upon a"}]},
    ),
    Operation(
        "DELETE",
        "/v1/sessions/{session_id}/turns/last",
        "Take back a session's newest turn (its messages and answer), e.g. to ask again; 409 session_empty without one",
        errors=(404, 409, 503, 507),
    ),
    Operation("GET", "/openapi.json", "This document"),
]

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


# Open without an API key: orchestrators probe them. /metrics is too with --metrics-public.
_OPEN_PATHS = {"/livez", "/readyz", "/startupz"}
# Only admin keys may change the model registry.
_ADMIN_OPERATIONS = {("POST", "/v1/models"), ("DELETE", "/v1/models/{model_id}")}
_SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "an API key: `Authorization: Bearer KEY`"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def openapi_document(operations: list[Operation] = OPERATIONS) -> dict:
    requests = [operation.request for operation in operations if operation.request is not None]
    schemas, components = msgspec.json.schema_components(requests, ref_template="#/components/schemas/{name}")
    by_type = dict(zip(requests, schemas, strict=True))
    paths: dict[str, dict] = {}
    for operation in operations:
        entry: dict = {
            "summary": operation.summary,
            "operationId": f"{operation.method.lower()}_{operation.path.strip('/').replace('/', '_').replace('{', '').replace('}', '').replace('.', '_')}",
            "responses": {
                str(operation.success): {"description": "success", "content": {operation.media_type: {"schema": {"type": "object" if operation.media_type == "application/json" else "string"}}}},
                **{
                    str(status): {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                    for status in operation.errors
                },
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
        if operation.method == "POST":
            entry["responses"]["408"] = {"description": "the body did not arrive in time (request_timeout)", "content": _ERROR_CONTENT}
            entry["responses"]["415"] = {
                "description": "without API keys: a body not sent as application/json (unsupported_media_type)", "content": _ERROR_CONTENT,
            }
        for name in ("model_id", "session_id"):
            if "{" + name + "}" in operation.path:
                entry["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}]
        if operation.request is not None:
            media = {"schema": by_type[operation.request]}
            if operation.example is not None:
                media["example"] = operation.example
            entry["requestBody"] = {"required": operation.body_required, "content": {"application/json": media}}
        if operation.request in (ChatCompletionRequest, CompletionRequest):
            entry["responses"]["200"]["content"]["text/event-stream"] = {"schema": {"type": "string"}}
        paths.setdefault(operation.path, {})[operation.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "llm-service", "version": SERVICE_VERSION, "description": "OpenAI-compatible inference for small local models"},
        "paths": paths,
        "components": {"schemas": {**components, "Error": _ERROR_SCHEMA}, "securitySchemes": _SECURITY_SCHEMES},
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
