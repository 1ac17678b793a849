"""Changes a client makes to a stored session itself, without generating: renaming it (or
replacing its metadata), and storing a turn the client already holds, such as an answer it
stopped or lost mid-stream, so that nothing a person saw is lost (the chat page does both)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from service.routes.framing import json_response
from service.serving.request_bodies import AppendTurnRequest, UpdateSessionRequest, decode_body
from service.serving.response_bodies import SessionWithMessages
from service.serving.sessions import owner_of, session_body, session_not_found, session_store, session_with_messages
from service.storage.session_store import NewMessage, SessionNotFound


async def update_session(request: Request) -> Response:
    session_id = request.path_params["session_id"]
    body = decode_body(await request.body(), UpdateSessionRequest)
    store, owner = session_store(request), owner_of(request)
    session = await asyncio.to_thread(store.update, session_id, owner, title=body.title, metadata=body.metadata)
    if session is None:
        raise session_not_found(session_id)
    return json_response(session_body(session))


async def append_turn(request: Request) -> Response:
    """Stores the messages as the session's next turn, as they are; their token counts are null,
    since no model answered them. Answers 201 with the session and all its messages."""
    session_id = request.path_params["session_id"]
    body = decode_body(await request.body(), AppendTurnRequest)
    messages = [NewMessage(message.role, message.text(), None) for message in body.messages]
    store, owner = session_store(request), owner_of(request)

    def append() -> SessionWithMessages:
        store.append_turn(session_id, messages, owner)
        found = store.get_with_messages(session_id, owner)
        if found is None:
            raise SessionNotFound(session_id)
        return session_with_messages(*found)

    try:
        return json_response(await asyncio.to_thread(append), status_code=201)
    except SessionNotFound as error:
        raise session_not_found(session_id) from error

