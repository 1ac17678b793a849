"""Chat sessions in PostgreSQL, shared by every replica that names the same database.

Behaves as the SQLite store does (service/storage/session_store.py has the contract). What differs is
how: search uses a tsvector column built from the words service/storage/text_search.py finds, so it
matches what FTS5 matches; appends from several replicas to one session wait on the session's
row lock (SELECT ... FOR UPDATE), so turns are stored whole, one after the other; each commit
is durable once PostgreSQL acknowledges it (its own fsync and replication settings decide how).
"""

from __future__ import annotations

import time

import psycopg
from psycopg.types.json import Json

from service.storage.postgres import PostgresDatabase
from service.storage.session_store import (
    HIGHLIGHT,
    SEARCH_SECONDS,
    SESSION_COLUMNS,
    SNIPPET_TOKENS,
    NewMessage,
    SearchTookTooLong,
    SessionHasNoTurns,
    SessionNotFound,
    StoredMessage,
    StoredSession,
    new_session_id,
)
from service.storage.text_search import search_phrases, snippet, tsquery_text, tsvector_text

COMPONENT = "sessions"

# MIGRATIONS[n] takes the schema from version n to n + 1. Append, never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            created BIGINT NOT NULL,
            updated BIGINT NOT NULL,
            title TEXT,
            model TEXT,
            owner TEXT DEFAULT NULL,
            metadata JSON NOT NULL DEFAULT '{}',
            max_turns BIGINT,
            max_tokens BIGINT
        )""",
        "CREATE INDEX sessions_by_owner ON sessions (owner, id)",
        # `turn` groups what one chat request added: its messages and the answer. Turn 0 holds
        # the system prompt given at creation. `search_words` is the content's words, folded.
        """CREATE TABLE messages (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            turn INTEGER NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            token_count INTEGER,
            created BIGINT NOT NULL,
            search_words TSVECTOR NOT NULL,
            UNIQUE (session_id, position)
        )""",
        "CREATE INDEX messages_search ON messages USING GIN (search_words)",
    ),
)


def _owner_is(owner: str | None) -> tuple[str, tuple]:
    """`owner IS ?` as PostgreSQL can use the (owner, id) index for it."""
    return ("owner IS NULL", ()) if owner is None else ("owner = %s", (owner,))


class PostgresSessionStore:
    def __init__(self, database: PostgresDatabase) -> None:
        self._database = database
        database.migrate(COMPONENT, MIGRATIONS)

    def close(self) -> None:
        """The database's pool is closed by its owner (service/storage/backend.py)."""

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
    ) -> StoredSession:
        now = int(time.time())
        session = StoredSession(new_session_id(), now, now, title, model, owner, metadata or {}, max_turns, max_tokens)
        with self._database.transaction() as connection:
            connection.execute(
                f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (session.id, now, now, title, model, owner, Json(session.metadata), max_turns, max_tokens),
            )
            if system_prompt is not None:
                self._insert_messages(connection, session.id, 0, 0, [system_prompt], now)
        return session

    def check(self) -> None:
        self._database.check()

    def get(self, session_id: str, owner: str | None = None) -> StoredSession | None:
        with self._database.transaction(snapshot=True) as connection:
            return self._session(connection, session_id, owner)

    def get_with_messages(self, session_id: str, owner: str | None = None) -> tuple[StoredSession, list[StoredMessage]] | None:
        with self._database.transaction(snapshot=True) as connection:
            session = self._session(connection, session_id, owner)
            if session is None:
                return None
            rows = connection.execute(
                "SELECT position, turn, role, content, token_count, created FROM messages WHERE session_id = %s ORDER BY position",
                (session_id,),
            ).fetchall()
        return session, [StoredMessage(*row) for row in rows]

    def list_sessions(
        self, *, owner: str | None = None, limit: int = 20, after: str | None = None, query: str | None = None
    ) -> tuple[list[StoredSession], bool]:
        phrases = search_phrases(query) if query else None
        if phrases == []:
            return [], False  # only whitespace or words-free terms such as `*`: nothing matches, as in FTS5
        owner_clause, parameters = _owner_is(owner)
        clauses, parameters = [owner_clause], list(parameters)
        if after is not None:
            clauses.append("id < %s")
            parameters.append(after)
        if phrases is not None:
            clauses.append("EXISTS (SELECT 1 FROM messages WHERE session_id = sessions.id AND search_words @@ %s::tsquery)")
            parameters.append(tsquery_text(phrases))
        deadline = time.monotonic() + SEARCH_SECONDS
        with self._database.transaction(snapshot=True) as connection:
            if phrases:
                connection.execute(f"SET LOCAL statement_timeout = {int(SEARCH_SECONDS * 1000)}")
            try:
                rows = connection.execute(
                    f"SELECT {SESSION_COLUMNS} FROM sessions WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT %s",
                    (*parameters, limit + 1),
                ).fetchall()
                rows, has_more = rows[:limit], len(rows) > limit
                best = self._best_messages(connection, phrases, [row[0] for row in rows]) if phrases and rows else {}
            except psycopg.errors.QueryCanceled as error:
                raise SearchTookTooLong(SEARCH_SECONDS) from error
        snippets = {}
        for session_id, content in best.items():
            if time.monotonic() > deadline:
                raise SearchTookTooLong(SEARCH_SECONDS)
            snippets[session_id] = snippet(content, phrases, SNIPPET_TOKENS, HIGHLIGHT)
        return [StoredSession.from_row(row, snippets.get(row[0])) for row in rows], has_more

    def delete(self, session_id: str, owner: str | None = None) -> bool:
        """Deletes the session and, by cascade, its messages with their search words."""
        owner_clause, owner_parameters = _owner_is(owner)
        with self._database.transaction() as connection:
            cursor = connection.execute(f"DELETE FROM sessions WHERE id = %s AND {owner_clause}", (session_id, *owner_parameters))
            return cursor.rowcount > 0

    def update(
        self, session_id: str, owner: str | None = None, *, title: str | None = None, metadata: dict | None = None
    ) -> StoredSession | None:
        owner_clause, owner_parameters = _owner_is(owner)
        new_metadata = None if metadata is None else Json(metadata)
        with self._database.transaction() as connection:
            connection.execute(
                "UPDATE sessions SET title = COALESCE(%s, title), metadata = COALESCE(%s, metadata), updated = %s "
                f"WHERE id = %s AND {owner_clause}",
                (title, new_metadata, int(time.time()), session_id, *owner_parameters),
            )
            return self._session(connection, session_id, owner)

    def append_turn(self, session_id: str, messages: list[NewMessage], owner: str | None = None) -> int:
        """The session's row lock orders appends from every replica: the second waits for the
        first to commit, then reads positions that include the first's turn."""
        now = int(time.time())
        with self._database.transaction() as connection:
            self._lock_session(connection, session_id, owner)
            position, turn = connection.execute(
                "SELECT COALESCE(MAX(position) + 1, 0), COALESCE(MAX(turn) + 1, 1) FROM messages WHERE session_id = %s",
                (session_id,),
            ).fetchone()
            self._insert_messages(connection, session_id, position, turn, messages, now)
            connection.execute("UPDATE sessions SET updated = %s WHERE id = %s", (now, session_id))
        return turn

    def delete_last_turn(self, session_id: str, owner: str | None = None) -> tuple[StoredSession, list[StoredMessage]]:
        """Locks the session's row as appending does, so a turn being appended meanwhile is
        either removed whole or stays whole; the search words go with their rows."""
        now = int(time.time())
        with self._database.transaction() as connection:
            self._lock_session(connection, session_id, owner)
            rows = connection.execute(
                "SELECT position, turn, role, content, token_count, created FROM messages "
                "WHERE session_id = %s AND turn = (SELECT MAX(turn) FROM messages WHERE session_id = %s AND turn > 0) "
                "ORDER BY position",
                (session_id, session_id),
            ).fetchall()
            if not rows:
                raise SessionHasNoTurns(session_id)
            connection.execute("DELETE FROM messages WHERE session_id = %s AND turn = %s", (session_id, rows[0][1]))
            connection.execute("UPDATE sessions SET updated = %s WHERE id = %s", (now, session_id))
            session = self._session(connection, session_id, owner)
        return session, [StoredMessage(*row) for row in rows]

    @staticmethod
    def _lock_session(connection: psycopg.Connection, session_id: str, owner: str | None) -> None:
        """Holds the session's row until the transaction ends; SessionNotFound if the owner has none."""
        owner_clause, owner_parameters = _owner_is(owner)
        locked = connection.execute(
            f"SELECT id FROM sessions WHERE id = %s AND {owner_clause} FOR UPDATE", (session_id, *owner_parameters)
        ).fetchone()
        if locked is None:
            raise SessionNotFound(session_id)

    @staticmethod
    def _session(connection: psycopg.Connection, session_id: str, owner: str | None) -> StoredSession | None:
        owner_clause, owner_parameters = _owner_is(owner)
        row = connection.execute(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = %s AND {owner_clause}", (session_id, *owner_parameters)
        ).fetchone()
        return None if row is None else StoredSession.from_row(row)

    @staticmethod
    def _insert_messages(
        connection: psycopg.Connection, session_id: str, position: int, turn: int, messages: list[NewMessage], now: int
    ) -> None:
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO messages (session_id, position, turn, role, content, token_count, created, search_words) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s::tsvector)",
                [
                    (session_id, position + offset, turn, message.role, message.content, message.token_count, now,
                     tsvector_text(message.content))
                    for offset, message in enumerate(messages)
                ],
            )

    @staticmethod
    def _best_messages(connection: psycopg.Connection, phrases: list[list[str]], session_ids: list[str]) -> dict[str, str]:
        """Each session's best-ranked matching message, whose snippet the list shows."""
        rows = connection.execute(
            "SELECT DISTINCT ON (session_id) session_id, content FROM messages, CAST(%s AS tsquery) AS query "
            "WHERE session_id = ANY(%s) AND search_words @@ query "
            "ORDER BY session_id, ts_rank(search_words, query) DESC, position",
            (tsquery_text(phrases), session_ids),
        ).fetchall()
        return dict(rows)
