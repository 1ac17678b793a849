"""Sessions as the serving layer sees them: the owner a connection acts for, sessions as typed
bodies, and what a session adds to a chat completion.

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

from starlette.requests import HTTPConnection

from service.engine.engine import Engine
from service.engine.model_folder import ModelFolder, token_ids
from service.errors import APIError
from service.serving.request_bodies import ChatMessage
from service.serving.response_bodies import Session, SessionMessage, SessionWithMessages
from service.storage.errors import StorageError, StorageFull, UnstorableValue
from service.storage.session_store import NewMessage, SessionNotFound, SessionStore, StoredMessage, StoredSession

# Tokens a session's history leaves free for the answer when the request sets no max_tokens
# (at most a quarter of the context): without it, history could leave room for one token.
ANSWER_ROOM = 256


def owner_of(connection: HTTPConnection) -> str | None:
    """The owner of sessions this request or socket may see: set by authentication from its
    API key; without keys every connection is anonymous (None) and sees the sessions created
    without one."""
    return getattr(connection.state, "owner", None)


def session_store(connection: HTTPConnection) -> SessionStore:
    return connection.app.state.sessions


def session_not_found(session_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"no session with id {session_id!r}", param=param, code="session_not_found")


def content_tokens(folder: ModelFolder, text: str) -> int:
    """Tokens of a message's text alone, without the chat template around it."""
    return len(token_ids(folder.tokenizer, text))


def session_body(session: StoredSession) -> Session:
    return Session(
        id=session.id, created=session.created, updated=session.updated, title=session.title, model=session.model,
        metadata=session.metadata, max_turns=session.max_turns, max_tokens=session.max_tokens,
        **({"snippet": session.snippet} if session.snippet is not None else {}),
    )


def message_body(message: StoredMessage) -> SessionMessage:
    return SessionMessage(message.position, message.turn, message.role, message.content, message.token_count, message.created)


def session_with_messages(session: StoredSession, messages: list[StoredMessage]) -> SessionWithMessages:
    return SessionWithMessages(
        id=session.id, created=session.created, updated=session.updated, title=session.title, model=session.model,
        metadata=session.metadata, max_turns=session.max_turns, max_tokens=session.max_tokens,
        messages=[message_body(message) for message in messages],
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
    store = session_store(connection)
    found = await asyncio.to_thread(store.get_with_messages, session_id, owner_of(connection))
    if found is None:
        raise session_not_found(session_id, param="session_id")
    session, messages = found
    return SessionHistory(store, session, messages)
