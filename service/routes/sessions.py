"""/v1/sessions: conversations kept on the server, listed, searched, read and deleted
(service.serving.sessions has what a session adds to a chat completion)."""

from __future__ import annotations

import asyncio
from functools import partial

from starlette.requests import Request
from starlette.responses import Response

from service.errors import APIError
from service.routes.framing import json_response
from service.serving import generation
from service.serving.model_access import model_not_found
from service.serving.request_bodies import CreateSessionRequest, decode_body
from service.serving.response_bodies import SessionDeleted, SessionList, TurnDeleted
from service.serving.sessions import (
    content_tokens,
    message_body,
    owner_of,
    session_body,
    session_not_found,
    session_store,
    session_with_messages,
)
from service.storage.session_store import (
    MAX_QUERY_CHARACTERS,
    MAX_QUERY_TERMS,
    SEARCH_SECONDS,
    NewMessage,
    SearchTookTooLong,
    SessionHasNoTurns,
    SessionNotFound,
    StoredMessage,
    StoredSession,
)
from service.storage.text_search import search_terms

DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 100


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIST_LIMIT
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIST_LIMIT:
        raise APIError(400, f"limit must be an integer from 1 to {MAX_LIST_LIMIT}; got {text!r}", param="limit")
    return int(text)


async def create_session(request: Request) -> Response:
    raw = await request.body()
    # An empty body creates a session with every default, as `{}` would.
    body = decode_body(raw if raw.strip() else b"{}", CreateSessionRequest)
    folder = None
    if body.model is not None:
        entry = request.app.state.registry.get(body.model)
        if entry is None:
            raise model_not_found(body.model)
        folder = entry.folder
    system_prompt = None
    if body.system_prompt is not None:
        tokens = await generation.off_loop(request, content_tokens, folder, body.system_prompt) if folder is not None else None
        system_prompt = NewMessage("system", body.system_prompt, tokens)
    store, owner = session_store(request), owner_of(request)

    def create() -> tuple[StoredSession, list[StoredMessage]]:
        session = store.create(
            title=body.title,
            model=body.model,
            owner=owner,
            metadata=body.metadata,
            max_turns=body.max_turns,
            max_tokens=body.max_tokens,
            system_prompt=system_prompt,
        )
        # Read back, so the answer is what GET will show; (session, []) if deleted meanwhile.
        return store.get_with_messages(session.id, owner) or (session, [])

    return json_response(session_with_messages(*await asyncio.to_thread(create)), status_code=201)


def _query(text: str | None) -> str | None:
    """`q` within MAX_QUERY_CHARACTERS and MAX_QUERY_TERMS distinct terms, or a 400."""
    if text is not None and (len(text) > MAX_QUERY_CHARACTERS or len(search_terms(text)) > MAX_QUERY_TERMS):
        raise APIError(
            400, f"q may hold at most {MAX_QUERY_TERMS} distinct words and {MAX_QUERY_CHARACTERS} characters",
            param="q", code="query_too_long",
        )
    return text or None


async def list_sessions(request: Request) -> Response:
    """Newest first; `after` is the last id of the previous page; `q` keeps sessions with a
    message holding every word of it, each with a snippet of its best match. Searches run on
    threads of their own, so however many run, other session requests never queue behind them."""
    parameters = request.query_params
    query = _query(parameters.get("q"))
    listing = partial(
        session_store(request).list_sessions,
        owner=owner_of(request),
        limit=_limit(parameters.get("limit")),
        after=parameters.get("after") or None,
        query=query,
    )
    try:
        if query is None:
            sessions, has_more = await asyncio.to_thread(listing)
        else:
            sessions, has_more = await asyncio.get_running_loop().run_in_executor(request.app.state.search_threads, listing)
    except SearchTookTooLong as error:
        message = f"the search took longer than {SEARCH_SECONDS:g}s and was stopped; search for fewer or rarer words"
        raise APIError(503, message, param="q", code="search_timeout") from error
    data = [session_body(session) for session in sessions]
    return json_response(
        SessionList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=has_more)
    )


async def get_session(request: Request) -> Response:
    session_id = request.path_params["session_id"]
    found = await asyncio.to_thread(session_store(request).get_with_messages, session_id, owner_of(request))
    if found is None:
        raise session_not_found(session_id)
    return json_response(session_with_messages(*found))


async def delete_session(request: Request) -> Response:
    session_id = request.path_params["session_id"]
    if not await asyncio.to_thread(session_store(request).delete, session_id, owner_of(request)):
        raise session_not_found(session_id)
    return json_response(SessionDeleted(session_id))


async def delete_last_turn(request: Request) -> Response:
    """Takes back the newest turn, so a client can ask again (regenerate) in the same session."""
    session_id = request.path_params["session_id"]
    try:
        session, removed = await asyncio.to_thread(session_store(request).delete_last_turn, session_id, owner_of(request))
    except SessionNotFound as error:
        raise session_not_found(session_id) from error
    except SessionHasNoTurns as error:
        message = f"the session {session_id!r} has no turn to delete: it holds at most its system prompt"
        raise APIError(409, message, code="session_empty") from error
    return json_response(
        TurnDeleted(
            session_id=session_id, turn=removed[0].turn, messages=[message_body(message) for message in removed],
            session=session_body(session),
        )
    )
