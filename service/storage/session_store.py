"""Chat sessions and their messages: what every session store keeps and returns.

Two stores implement `SessionStore`: SQLite files in the data folder (the default,
service/storage/sqlite_session_store.py) and PostgreSQL shared by several replicas
(service/storage/postgres_session_store.py); service/storage/backend.py picks one from the settings. The routes
see only this interface, so both must behave the same: tests/test_sessions.py runs against both.

Owners: every session has an `owner` (null until API keys exist) and every query filters on it,
so a null owner sees exactly the sessions created without one.

The methods block (a commit waits for the disk or the network), so async handlers call them
through `asyncio.to_thread` to keep the event loop streaming.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

# Length of a search result's snippet, in words.
SNIPPET_TOKENS = 16
HIGHLIGHT = "**"
# Bounds on one search, so that no query can keep a worker busy for long: its size, and the
# seconds after which it is abandoned (SearchTookTooLong).
MAX_QUERY_CHARACTERS = 1000
MAX_QUERY_TERMS = 16
SEARCH_SECONDS = 5.0

SESSION_COLUMNS = "id, created, updated, title, model, owner, metadata, max_turns, max_tokens"


class SessionNotFound(LookupError):
    """No session with this id belongs to this owner (or it was deleted meanwhile)."""


class SearchTookTooLong(TimeoutError):
    """A search ran past SEARCH_SECONDS and was abandoned."""


class SessionHasNoTurns(LookupError):
    """The session holds no turn to take back: nothing, or only its system prompt (turn 0)."""


@dataclass(frozen=True)
class NewMessage:
    role: str
    content: str
    token_count: int | None = None


@dataclass(frozen=True)
class StoredMessage:
    position: int
    turn: int
    role: str
    content: str
    token_count: int | None
    created: int


@dataclass(frozen=True)
class StoredSession:
    id: str
    created: int
    updated: int
    title: str | None
    model: str | None
    owner: str | None
    metadata: dict = field(default_factory=dict)
    max_turns: int | None = None
    max_tokens: int | None = None
    # Only in search results: the best-matching passage, hits wrapped in HIGHLIGHT.
    snippet: str | None = None

    @classmethod
    def from_row(cls, row: tuple, snippet: str | None = None) -> StoredSession:
        """A row of SESSION_COLUMNS; metadata as JSON text (SQLite) or already decoded (PostgreSQL)."""
        session_id, created, updated, title, model, owner, metadata, max_turns, max_tokens = row
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        return cls(session_id, created, updated, title, model, owner, metadata, max_turns, max_tokens, snippet)


_last_id_parts = [0, 0]  # milliseconds and randomness of the last id this process made
_id_lock = threading.Lock()


def new_session_id() -> str:
    """`sess_` + milliseconds since the epoch + randomness: ids sort by creation, so the list's
    `after` cursor is a plain comparison that still works after the cursor's session is deleted.
    Within one millisecond (or when the clock steps back) the randomness of the last id is
    incremented instead, as ULID's monotonic mode does, so sessions created back to back keep
    their order too."""
    with _id_lock:
        milliseconds, randomness = time.time_ns() // 1_000_000, secrets.randbits(80)
        if milliseconds <= _last_id_parts[0]:
            milliseconds, randomness = _last_id_parts[0], _last_id_parts[1] + 1
            if randomness >= 1 << 80:
                milliseconds, randomness = milliseconds + 1, 0
        _last_id_parts[:] = [milliseconds, randomness]
    return f"sess_{milliseconds:012x}{randomness:020x}"


class SessionStore(Protocol):
    def create(
        self,
        *,
        title: str | None = None,
        model: str | None = None,
        owner: str | None = None,
        metadata: dict | None = None,
        max_turns: int | None = None,
        max_tokens: int | None = None,
        system_prompt: NewMessage | None = None,
    ) -> StoredSession: ...

    def get(self, session_id: str, owner: str | None = None) -> StoredSession | None: ...

    def get_with_messages(self, session_id: str, owner: str | None = None) -> tuple[StoredSession, list[StoredMessage]] | None:
        """The session and its messages in position order, read from one snapshot."""
        ...

    def list_sessions(
        self, *, owner: str | None = None, limit: int = 20, after: str | None = None, query: str | None = None
    ) -> tuple[list[StoredSession], bool]:
        """Sessions newest first, those older than `after`, up to `limit`, and whether more
        follow. With `query`, only sessions with a message holding every word of it (case and
        accents ignored, whole words), each with a snippet of its best-ranked matching message;
        a query of only whitespace matches nothing. A search runs at most SEARCH_SECONDS, then
        raises SearchTookTooLong; it never delays other reads."""
        ...

    def delete(self, session_id: str, owner: str | None = None) -> bool:
        """Deletes the session with its messages; False if this owner has no such session."""
        ...

    def update(
        self, session_id: str, owner: str | None = None, *, title: str | None = None, metadata: dict | None = None
    ) -> StoredSession | None:
        """Sets the title and/or replaces the metadata (None leaves each as it is) and `updated`;
        None if this owner has no such session."""
        ...

    def append_turn(self, session_id: str, messages: list[NewMessage], owner: str | None = None) -> int:
        """Appends one turn (a request's messages and its answer) atomically; returns its number.
        Concurrent appends to one session store whole turns one after the other, never
        interleaved. Raises SessionNotFound if the session is gone."""
        ...

    def delete_last_turn(self, session_id: str, owner: str | None = None) -> tuple[StoredSession, list[StoredMessage]]:
        """Removes the newest turn atomically, with its search entries, and sets `updated` as
        appending does; returns the session so changed and the removed messages. The system
        prompt (turn 0) is never removed; the next turn appended takes the removed one's number.
        Ordered with appends to the same session. Raises SessionNotFound if this owner has no
        such session, SessionHasNoTurns if it has no turn past the system prompt."""
        ...

    def check(self) -> None:
        """Raises a StorageError unless the store can be written now (for /readyz)."""
        ...

    def close(self) -> None: ...
