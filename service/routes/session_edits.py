"""Changes a client makes to a stored session itself, without generating: renaming it (or
replacing its metadata), and storing a turn the client already holds, such as an answer it
stopped or lost mid-stream, so that nothing a person saw is lost (the chat page does both)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse

from service.routes.sessions import _not_found, _store, _with_messages, describe, owner_of
from service.schemas import AppendTurnRequest, UpdateSessionRequest, decode_body
from service.session_store import NewMessage, SessionNotFound


async def update_session(request: Request) -> JSONResponse:
    session_id = request.path_params["session_id"]
    body = decode_body(await request.body(), UpdateSessionRequest)
    store, owner = _store(request), owner_of(request)
    session = await asyncio.to_thread(store.update, session_id, owner, title=body.title, metadata=body.metadata)
    if session is None:
        raise _not_found(session_id)
    return JSONResponse(describe(session))


async def append_turn(request: Request) -> JSONResponse:
    """Stores the messages as the session's next turn, as they are; their token counts are null,
    since no model answered them. Answers 201 with the session and all its messages."""
    session_id = request.path_params["session_id"]
    body = decode_body(await request.body(), AppendTurnRequest)
    messages = [NewMessage(message.role, message.text(), None) for message in body.messages]
    store, owner = _store(request), owner_of(request)

    def append() -> dict:
        store.append_turn(session_id, messages, owner)
        found = store.get_with_messages(session_id, owner)
        if found is None:
            raise SessionNotFound(session_id)
        return _with_messages(*found)

    try:
        return JSONResponse(await asyncio.to_thread(append), status_code=201)
    except SessionNotFound as error:
        raise _not_found(session_id) from error

