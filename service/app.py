"""Builds the Starlette app from Settings; tests build their own the same way."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from opentelemetry.trace import TracerProvider
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from service.engine.registry import ModelRegistry
from service.errors import APIError, error_response, handle_api_error, handle_http_exception, handle_unexpected
from service.openapi import openapi_document
from service.operations.auth import AuthenticationMiddleware, KeyRing, SecurityHeadersMiddleware
from service.operations.cross_site import CrossSiteGuard
from service.operations.limits import BodySizeLimitMiddleware, Guards, RateLimitMiddleware
from service.operations.logs import RequestLogMiddleware
from service.operations.metrics import HTTPMetricsMiddleware, Metrics, metrics_endpoint
from service.operations.tracing import tracer_provider_from
from service.routes import chat, completions, health, models, session_edits, sessions, ws
from service.routes import embeddings, responses, tokenizer
from service.settings import Settings
from service.storage.backend import check_database_url, open_storage
from service.storage.errors import DatabaseUnavailable, StorageError, StorageFull, UnstorableValue

log = logging.getLogger(__name__)
# Seconds a client is asked to wait before retrying while the database is unreachable.
RETRY_AFTER_DATABASE = 2
# Session searches run on threads of their own, at most this many at once, so that searches
# never take the threads every other session request uses.
SEARCH_THREADS = 2
# Prompts are tokenized and templated on threads of their own (routes/generation.py, off_loop).
TOKENIZER_THREADS = 2


async def _openapi(request) -> JSONResponse:
    return JSONResponse(openapi_document())


async def _database_unavailable(request: Request, error: Exception) -> Response:
    """Sessions and registrations wait on the shared database; other requests still work."""
    message = f"{error}; sessions and model registrations are unavailable until the database answers again, retry shortly"
    headers = {"Retry-After": str(RETRY_AFTER_DATABASE)}
    return error_response(APIError(503, message, code="database_unavailable", headers=headers))


async def _storage_full(request: Request, error: Exception) -> Response:
    message = f"{error}; sessions and model registrations cannot be saved until space is freed"
    return error_response(APIError(507, message, code="storage_full", error_type="server_error"))


async def _unstorable_value(request: Request, error: Exception) -> Response:
    return error_response(APIError(400, str(error), code="unstorable_value"))


def create_app(settings: Settings, tracer_provider: TracerProvider | None = None) -> Starlette:
    """`tracer_provider` replaces the one settings describe (tests pass an in-memory one)."""
    check_database_url(settings.database_url)
    registry = ModelRegistry(settings)
    metrics = Metrics(registry)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        try:
            storage = open_storage(settings)
        except StorageError as error:  # unreachable or unusable: say why in one line first
            log.error("cannot start: %s", error)
            raise
        app.state.storage = storage
        app.state.sessions = storage.sessions
        registry.store = storage.registry
        for spec in settings.models:
            registry.register(spec)
        registry.restore()
        app.state.started = True
        yield
        app.state.search_threads.shutdown(cancel_futures=True)
        app.state.tokenizer_threads.shutdown(cancel_futures=True)
        registry.close()
        storage.close()

    routes = [
        Route("/livez", health.livez, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/startupz", health.startupz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/v1/models", models.list_models, methods=["GET"]),
        Route("/v1/models", models.register_model, methods=["POST"]),
        Route("/v1/models/{model_id:path}", models.get_model, methods=["GET"]),
        Route("/v1/models/{model_id:path}", models.delete_model, methods=["DELETE"]),
        Route("/v1/chat/completions", chat.create_chat_completion, methods=["POST"]),
        Route("/v1/completions", completions.create_completion, methods=["POST"]),
        Route("/v1/sessions", sessions.create_session, methods=["POST"]),
        Route("/v1/sessions", sessions.list_sessions, methods=["GET"]),
        Route("/v1/sessions/{session_id}", sessions.get_session, methods=["GET"]),
        Route("/v1/sessions/{session_id}", sessions.delete_session, methods=["DELETE"]),
        Route("/v1/sessions/{session_id}", session_edits.update_session, methods=["PATCH"]),
        Route("/v1/sessions/{session_id}/turns", session_edits.append_turn, methods=["POST"]),
        Route("/v1/sessions/{session_id}/turns/last", sessions.delete_last_turn, methods=["DELETE"]),
        Route("/v1/responses", responses.create_response, methods=["POST"]),
        Route("/v1/embeddings", embeddings.embeddings, methods=["POST"]),
        Route("/tokenize", tokenizer.tokenize, methods=["POST"]),
        Route("/detokenize", tokenizer.detokenize, methods=["POST"]),
        Route("/openapi.json", _openapi, methods=["GET"]),
        WebSocketRoute("/v1/ws", ws.chat_socket),
    ]
    keys = KeyRing.from_settings(settings.keys_path, settings.api_keys, settings.admin_keys)
    middleware = [
        Middleware(RequestLogMiddleware),
        Middleware(HTTPMetricsMiddleware, metrics=metrics),
        Middleware(SecurityHeadersMiddleware),
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_origin_regex=settings.cors_origin_regex,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["Retry-After", "X-Request-ID"],  # the SPA shows how long to wait
            max_age=600,
        ),
        Middleware(CrossSiteGuard, settings=settings, enabled=not keys),
        Middleware(AuthenticationMiddleware, keys=keys, metrics_public=settings.metrics_public),
        Middleware(RateLimitMiddleware),
        Middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes),
        Middleware(health.DrainGate),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            APIError: handle_api_error,
            DatabaseUnavailable: _database_unavailable,
            StorageFull: _storage_full,
            UnstorableValue: _unstorable_value,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
    )
    app.state.registry = registry
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.tracer = (tracer_provider or tracer_provider_from(settings.otlp_endpoint)).get_tracer("service")
    app.state.started = False
    app.state.draining = False
    app.state.search_threads = ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="search")
    app.state.tokenizer_threads = ThreadPoolExecutor(TOKENIZER_THREADS, thread_name_prefix="tokenize")
    app.state.guards = Guards(settings.max_messages, settings.max_prompt_tokens, settings.max_completion_tokens)
    return app
