"""/v1/sessions: conversations kept on the server, and what a session adds to a chat completion.

A chat request with `session_id` is prompted with the session's remembered history followed by
its own messages; once answered, its messages and the answer are appended as one turn. What is
remembered (docs/sessions.md has the rules): the system prompt always, then the newest turns
within the session's `max_turns` and `max_tokens`, then only as many of those as leave the model
room to answer. Older turns stay stored and searchable; the model just no longer sees them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from service.engine import Engine
from service.errors import APIError
from service.model_folder import ModelFolder, token_ids
from service.routes import generation
from service.schemas import ChatMessage, CreateSessionRequest, decode_body
from service.storage_errors import StorageError, StorageFull, UnstorableValue
from service.text_search import search_terms
from service.session_store import (
    MAX_QUERY_CHARACTERS,
    MAX_QUERY_TERMS,
    SEARCH_SECONDS,
    NewMessage,
    SearchTookTooLong,
    SessionHasNoTurns,
    SessionNotFound,
    SessionStore,
    StoredMessage,
    StoredSession,
)

DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 100
# Tokens a session's history leaves free for the answer when the request sets no max_tokens
# (at most a quarter of the context): without it, history could leave room for one token.
ANSWER_ROOM = 256


def owner_of(connection: HTTPConnection) -> str | None:
    """The owner of sessions this request or socket may see: set by authentication from its
    API key; without keys every connection is anonymous (None) and sees the sessions created
    without one."""
    return getattr(connection.state, "owner", None)


def _store(connection: HTTPConnection) -> SessionStore:
    return connection.app.state.sessions


def _not_found(session_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"no session with id {session_id!r}", param=param, code="session_not_found")


def content_tokens(folder: ModelFolder, text: str) -> int:
    """Tokens of a message's text alone, without the chat template around it."""
    return len(token_ids(folder.tokenizer, text))


def describe(session: StoredSession) -> dict:
    description = {
        "id": session.id,
        "object": "session",
        "created": session.created,
        "updated": session.updated,
        "title": session.title,
        "model": session.model,
        "metadata": session.metadata,
        "max_turns": session.max_turns,
        "max_tokens": session.max_tokens,
    }
    if session.snippet is not None:
        description["snippet"] = session.snippet
    return description


def describe_message(message: StoredMessage) -> dict:
    return {
        "position": message.position,
        "turn": message.turn,
        "role": message.role,
        "content": message.content,
        "token_count": message.token_count,
        "created": message.created,
    }


def _with_messages(session: StoredSession, messages: list[StoredMessage]) -> dict:
    return {**describe(session), "messages": [describe_message(message) for message in messages]}


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIST_LIMIT
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIST_LIMIT:
        raise APIError(400, f"limit must be an integer from 1 to {MAX_LIST_LIMIT}; got {text!r}", param="limit")
    return int(text)


async def create_session(request: Request) -> JSONResponse:
    raw = await request.body()
    # An empty body creates a session with every default, as `{}` would.
    body = decode_body(raw if raw.strip() else b"{}", CreateSessionRequest)
    folder = None
    if body.model is not None:
        entry = request.app.state.registry.get(body.model)
        if entry is None:
            raise APIError(404, f"the model {body.model!r} does not exist", param="model", code="model_not_found")
        folder = entry.folder
    system_prompt = None
    if body.system_prompt is not None:
        tokens = await generation.off_loop(request, content_tokens, folder, body.system_prompt) if folder is not None else None
        system_prompt = NewMessage("system", body.system_prompt, tokens)
    store, owner = _store(request), owner_of(request)

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

    return JSONResponse(_with_messages(*await asyncio.to_thread(create)), status_code=201)


def _query(text: str | None) -> str | None:
    """`q` within MAX_QUERY_CHARACTERS and MAX_QUERY_TERMS distinct terms, or a 400."""
    if text is not None and (len(text) > MAX_QUERY_CHARACTERS or len(search_terms(text)) > MAX_QUERY_TERMS):
        raise APIError(
            400, f"q may hold at most {MAX_QUERY_TERMS} distinct words and {MAX_QUERY_CHARACTERS} characters",
            param="q", code="query_too_long",
        )
    return text or None


async def list_sessions(request: Request) -> JSONResponse:
    """Newest first; `after` is the last id of the previous page; `q` keeps sessions with a
    message holding every word of it, each with a snippet of its best match. Searches run on
    threads of their own, so however many run, other session requests never queue behind them."""
    parameters = request.query_params
    query = _query(parameters.get("q"))
    listing = partial(
        _store(request).list_sessions,
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
    data = [describe(session) for session in sessions]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )


async def get_session(request: Request) -> JSONResponse:
    session_id = request.path_params["session_id"]
    found = await asyncio.to_thread(_store(request).get_with_messages, session_id, owner_of(request))
    if found is None:
        raise _not_found(session_id)
    return JSONResponse(_with_messages(*found))


async def delete_session(request: Request) -> JSONResponse:
    session_id = request.path_params["session_id"]
    if not await asyncio.to_thread(_store(request).delete, session_id, owner_of(request)):
        raise _not_found(session_id)
    return JSONResponse({"id": session_id, "object": "session.deleted", "deleted": True})


async def delete_last_turn(request: Request) -> JSONResponse:
    """Takes back the newest turn, so a client can ask again (regenerate) in the same session."""
    session_id = request.path_params["session_id"]
    try:
        session, removed = await asyncio.to_thread(_store(request).delete_last_turn, session_id, owner_of(request))
    except SessionNotFound as error:
        raise _not_found(session_id) from error
    except SessionHasNoTurns as error:
        message = f"the session {session_id!r} has no turn to delete: it holds at most its system prompt"
        raise APIError(409, message, code="session_empty") from error
    return JSONResponse(
        {
            "object": "session.turn.deleted",
            "session_id": session_id,
            "turn": removed[0].turn,
            "deleted": True,
            "messages": [describe_message(message) for message in removed],
            "session": describe(session),
        }
    )


def remembered_turns(
    turns: list[list[dict]], max_turns: int | None, max_tokens: int | None, count_tokens: Callable[[str], int]
) -> list[list[dict]]:
    """The newest turns within a memory limit: at most `max_turns` of them, and the longest run
    of newest turns whose message contents add up to at most `max_tokens` tokens."""
    kept = turns if max_turns is None else turns[max(len(turns) - max_turns, 0) :]
    if max_tokens is None:
        return kept
    start, total = len(kept), 0
    while start > 0:
        total += sum(count_tokens(message["content"]) for message in kept[start - 1])
        if total > max_tokens:
            break
        start -= 1
    return kept[start:]


@dataclass
class SessionHistory:
    """A session as one chat request sees it: read when the request arrives, extended once it
    is answered."""

    store: SessionStore
    session: StoredSession
    messages: list[StoredMessage]

    def prompt_ids(
        self,
        engine: Engine,
        request_messages: list[dict],
        answer_tokens: int | None,
        encode: Callable[[list[dict]], list[int]],
    ) -> list[int]:
        """The prompt: system prompt, remembered turns, the request's messages; the oldest
        remembered turns are dropped until the answer has room (`answer_tokens`, or ANSWER_ROOM).

        If even the request alone leaves no room, its prompt is returned as it is and the usual
        context_length_exceeded follows: the request's fault, never the history's.
        """
        system = [_as_chat(message) for message in self.messages if message.turn == 0]
        turns: dict[int, list[dict]] = {}
        for message in self.messages:
            if message.turn > 0:
                turns.setdefault(message.turn, []).append(_as_chat(message))
        kept = remembered_turns(
            list(turns.values()),
            self.session.max_turns,
            self.session.max_tokens,
            lambda text: content_tokens(engine.folder, text),
        )
        room = answer_tokens or min(ANSWER_ROOM, engine.capacity // 4)

        def prompt(dropped: int) -> list[int]:
            return encode(system + [message for turn in kept[dropped:] for message in turn] + request_messages)

        def fits(ids: list[int]) -> bool:
            return len(ids) + room <= engine.capacity

        ids = prompt(0)
        if fits(ids) or not kept:
            return ids
        # Fewer tokens with every turn dropped: a binary search for the fewest drops that fit.
        fewest, most = 1, len(kept)
        best = prompt(most)
        if not fits(best):
            return best
        while fewest < most:
            middle = (fewest + most) // 2
            ids = prompt(middle)
            if fits(ids):
                most, best = middle, ids
            else:
                fewest = middle + 1
        return best

    async def append_turn(self, engine: Engine, request_messages: list[ChatMessage], answer: str) -> None:
        """Stores the request's messages and the answer as one turn, in one transaction; raises
        TurnNotSaved when the store cannot (a full disk, the database down)."""
        texts = [(message.role, message.text()) for message in request_messages] + [("assistant", answer)]

        def append() -> None:  # the texts are counted off the event loop too
            messages = [NewMessage(role, text, content_tokens(engine.folder, text)) for role, text in texts]
            self.store.append_turn(self.session.id, messages, self.session.owner)

        try:
            await asyncio.to_thread(append)
        except SessionNotFound as error:
            message = f"the session {self.session.id!r} was deleted while answering; the turn was not saved"
            raise APIError(404, message, param="session_id", code="session_not_found") from error
        except StorageError as error:
            status, code = _NOT_SAVED.get(type(error), (503, "database_unavailable"))
            raise TurnNotSaved(status, f"{error}; the answer was not saved in the session", param="session_id", code=code) from error


class TurnNotSaved(APIError):
    """The answer exists but the session could not store its turn: the client still gets it."""


# How a store's failure is told to the client whose answer it could not save.
_NOT_SAVED = {StorageFull: (507, "storage_full"), UnstorableValue: (400, "unstorable_value")}


def _as_chat(message: StoredMessage) -> dict:
    return {"role": message.role, "content": message.content}


async def session_history(connection: HTTPConnection, session_id: str) -> SessionHistory:
    """The session a chat request (over HTTP or the WebSocket) names, or a 404 naming `session_id`."""
    store = _store(connection)
    found = await asyncio.to_thread(store.get_with_messages, session_id, owner_of(connection))
    if found is None:
        raise _not_found(session_id, param="session_id")
    session, messages = found
    return SessionHistory(store, session, messages)
