"""Chat sessions in a SQLite file, searchable with FTS5, intact after a crash: the default store.

Durability: the database runs in WAL mode with `synchronous=FULL`, so every committed turn is
fsynced to the WAL before the commit returns. A killed process loses nothing committed (NORMAL
would already give that), and a power cut or kernel crash loses nothing either (NORMAL may roll
back the last commits there). The price is one fsync per chat turn, small next to generating
the answer. Each turn is one transaction, so a crash leaves either the whole turn or none of it.

Threads: writes share one connection guarded by a lock; reads use a connection per thread and
never wait for the lock, so a long search never holds up another key's reads. One process uses
the file (several replicas share PostgreSQL instead). Owners are compared with `owner IS ?`,
which matches null to null. FTS5 finds and ranks matches; snippets are cut by text_search.py,
since FTS5's snippet() takes time that grows with the square of a message's hits.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.storage.errors import StorageError, StorageFull
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
from service.storage.sqlite_files import connect, has_room, open_database, storage_error
from service.storage.text_search import search_phrases, search_terms, snippet

DATABASE_FILE = "sessions.sqlite3"

# Each migration is a list of statements (trigger bodies contain semicolons, so no scripts);
# MIGRATIONS[n] takes the schema from version n to n + 1. Append, never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            created INTEGER NOT NULL,
            updated INTEGER NOT NULL,
            title TEXT,
            model TEXT,
            owner TEXT DEFAULT NULL,
            metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
            max_turns INTEGER,
            max_tokens INTEGER
        )""",
        "CREATE INDEX sessions_by_owner ON sessions (owner, id)",
        # `turn` groups what one chat request added: its messages and the answer. Turn 0 holds
        # the system prompt given at creation.
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            turn INTEGER NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            token_count INTEGER,
            created INTEGER NOT NULL,
            UNIQUE (session_id, position)
        )""",
        # External content: the index reads text from `messages`, the triggers keep it in step.
        """CREATE VIRTUAL TABLE message_search USING fts5 (
            content, session_id UNINDEXED,
            content = 'messages', content_rowid = 'id', tokenize = 'unicode61 remove_diacritics 2'
        )""",
        """CREATE TRIGGER messages_indexed AFTER INSERT ON messages BEGIN
            INSERT INTO message_search (rowid, content, session_id) VALUES (new.id, new.content, new.session_id);
        END""",
        """CREATE TRIGGER messages_unindexed AFTER DELETE ON messages BEGIN
            INSERT INTO message_search (message_search, rowid, content, session_id)
            VALUES ('delete', old.id, old.content, old.session_id);
        END""",
        """CREATE TRIGGER messages_reindexed AFTER UPDATE ON messages BEGIN
            INSERT INTO message_search (message_search, rowid, content, session_id)
            VALUES ('delete', old.id, old.content, old.session_id);
            INSERT INTO message_search (rowid, content, session_id) VALUES (new.id, new.content, new.session_id);
        END""",
    ),
)


def search_expression(text: str) -> str:
    """An FTS5 query matching messages that hold every term of `text` (search_terms); none
    (only whitespace) matches nothing. Each term is quoted (inner quotes doubled), so operators
    and punctuation (`AND`, `*`, `"`, `(`) are searched as text and any input is a valid query."""
    return " ".join('"' + term.replace('"', '""') + '"' for term in search_terms(text)) or '""'


def migrate(connection: sqlite3.Connection) -> int:
    """Brings the schema to the newest version in one transaction; returns that version."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = connection.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
        if version > len(MIGRATIONS):
            raise StorageError(
                f"the session database has schema version {version}, newer than this service's "
                f"{len(MIGRATIONS)}; upgrade the service or use another --data-dir"
            )
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                connection.execute(statement)
        connection.execute("DELETE FROM schema_version")
        connection.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS),))
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return len(MIGRATIONS)


@contextmanager
def _in_transaction(connection: sqlite3.Connection, begin: str) -> Iterator[sqlite3.Connection]:
    connection.execute(begin)
    try:
        yield connection
        connection.execute("COMMIT")  # a full disk may fail the commit itself
    except BaseException:
        if connection.in_transaction:  # SQLite rolls back by itself after some errors
            connection.execute("ROLLBACK")
        raise


class SQLiteSessionStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # the writer connection: one write transaction at a time
        self._connection = open_database(path)
        try:
            migrate(self._connection)
        except sqlite3.Error as error:
            self._connection.close()
            raise StorageError(f"cannot prepare {path}: {error}") from error
        # Readers get a connection per thread and never take the lock: in WAL mode they read
        # their snapshot while a write (or a long search) goes on.
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        # Why the last write failed (a full disk), until one succeeds: what /readyz reports.
        self.write_failure: StorageError | None = None

    @classmethod
    def in_folder(cls, data_dir: Path) -> SQLiteSessionStore:
        return cls(data_dir / DATABASE_FILE)

    def close(self) -> None:
        with self._lock, self._readers_lock:
            for connection in [self._connection, *self._readers]:
                connection.close()

    def check(self) -> None:
        """Raises the last write's failure while it stands: a full disk until space is freed
        (a tiny write could succeed long before a turn can), anything else until a write works."""
        if self.write_failure is None:
            return
        if isinstance(self.write_failure, StorageFull) and not has_room(self.path.parent):
            raise self.write_failure
        with self._transaction(write=True) as connection:
            connection.execute("UPDATE schema_version SET version = version")

    def _reader(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = connect(self.path)
            with self._readers_lock:
                self._readers.append(connection)
        return connection

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        """A write transaction under the lock, IMMEDIATE so it never fails to upgrade; or a read
        transaction (one snapshot) on this thread's own connection. SQLite's failures come out
        as storage errors (StorageFull when the disk is full)."""
        try:
            if not write:
                with _in_transaction(self._reader(), "BEGIN") as connection:
                    yield connection
                return
            with self._lock, _in_transaction(self._connection, "BEGIN IMMEDIATE") as connection:
                yield connection
        except sqlite3.Error as error:
            failure = storage_error(error, self.path)
            if write:
                self.write_failure = failure
            raise failure from error
        if write:
            self.write_failure = None

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
        with self._transaction(write=True) as connection:
            connection.execute(
                f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session.id, now, now, title, model, owner, json.dumps(session.metadata), max_turns, max_tokens),
            )
            if system_prompt is not None:
                self._insert_messages(connection, session.id, 0, 0, [system_prompt], now)
        return session

    def get(self, session_id: str, owner: str | None = None) -> StoredSession | None:
        with self._transaction(write=False) as connection:
            return self._session(connection, session_id, owner)

    def get_with_messages(self, session_id: str, owner: str | None = None) -> tuple[StoredSession, list[StoredMessage]] | None:
        with self._transaction(write=False) as connection:
            session = self._session(connection, session_id, owner)
            if session is None:
                return None
            rows = connection.execute(
                "SELECT position, turn, role, content, token_count, created FROM messages WHERE session_id = ? ORDER BY position",
                (session_id,),
            ).fetchall()
        return session, [StoredMessage(*row) for row in rows]

    def list_sessions(
        self, *, owner: str | None = None, limit: int = 20, after: str | None = None, query: str | None = None
    ) -> tuple[list[StoredSession], bool]:
        """A search stops at SEARCH_SECONDS (SearchTookTooLong): SQLite is asked to give up
        then, and snippets are cut in linear time, one session at a time."""
        clauses, parameters = ["owner IS ?"], [owner]
        if after is not None:
            clauses.append("id < ?")
            parameters.append(after)
        if query:
            clauses.append("id IN (SELECT session_id FROM message_search WHERE message_search MATCH ?)")
            parameters.append(search_expression(query))
        deadline = time.monotonic() + SEARCH_SECONDS
        with self._transaction(write=False) as connection:
            if query:
                connection.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
            try:
                rows = connection.execute(
                    f"SELECT {SESSION_COLUMNS} FROM sessions WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?",
                    (*parameters, limit + 1),
                ).fetchall()
                rows, has_more = rows[:limit], len(rows) > limit
                best = self._best_messages(connection, search_expression(query), [row[0] for row in rows]) if query and rows else {}
            except sqlite3.OperationalError as error:
                if time.monotonic() > deadline:
                    raise SearchTookTooLong(SEARCH_SECONDS) from error
                raise
            finally:
                connection.set_progress_handler(None, 0)
        snippets = {}
        phrases = search_phrases(query) if query else []
        for session_id, content in best.items():
            if time.monotonic() > deadline:
                raise SearchTookTooLong(SEARCH_SECONDS)
            snippets[session_id] = snippet(content, phrases, SNIPPET_TOKENS, HIGHLIGHT)
        return [StoredSession.from_row(row, snippets.get(row[0])) for row in rows], has_more

    def delete(self, session_id: str, owner: str | None = None) -> bool:
        """Deletes the session and, by cascade, its messages and their search entries."""
        with self._transaction(write=True) as connection:
            cursor = connection.execute("DELETE FROM sessions WHERE id = ? AND owner IS ?", (session_id, owner))
            return cursor.rowcount > 0

    def update(
        self, session_id: str, owner: str | None = None, *, title: str | None = None, metadata: dict | None = None
    ) -> StoredSession | None:
        new_metadata = None if metadata is None else json.dumps(metadata)
        with self._transaction(write=True) as connection:
            connection.execute(
                "UPDATE sessions SET title = COALESCE(?, title), metadata = COALESCE(?, metadata), updated = ? "
                "WHERE id = ? AND owner IS ?",
                (title, new_metadata, int(time.time()), session_id, owner),
            )
            return self._session(connection, session_id, owner)

    def append_turn(self, session_id: str, messages: list[NewMessage], owner: str | None = None) -> int:
        """Positions and the turn number are taken inside a write transaction, which SQLite
        runs one at a time."""
        now = int(time.time())
        with self._transaction(write=True) as connection:
            if self._session(connection, session_id, owner) is None:
                raise SessionNotFound(session_id)
            position, turn = connection.execute(
                "SELECT COALESCE(MAX(position) + 1, 0), COALESCE(MAX(turn) + 1, 1) FROM messages WHERE session_id = ?",
                (session_id,),
            ).fetchone()
            self._insert_messages(connection, session_id, position, turn, messages, now)
            connection.execute("UPDATE sessions SET updated = ? WHERE id = ?", (now, session_id))
        return turn

    def delete_last_turn(self, session_id: str, owner: str | None = None) -> tuple[StoredSession, list[StoredMessage]]:
        """The delete trigger takes the messages out of the search index in the same transaction."""
        now = int(time.time())
        with self._transaction(write=True) as connection:
            if self._session(connection, session_id, owner) is None:
                raise SessionNotFound(session_id)
            rows = connection.execute(
                "SELECT position, turn, role, content, token_count, created FROM messages "
                "WHERE session_id = ? AND turn = (SELECT MAX(turn) FROM messages WHERE session_id = ? AND turn > 0) "
                "ORDER BY position",
                (session_id, session_id),
            ).fetchall()
            if not rows:
                raise SessionHasNoTurns(session_id)
            connection.execute("DELETE FROM messages WHERE session_id = ? AND turn = ?", (session_id, rows[0][1]))
            connection.execute("UPDATE sessions SET updated = ? WHERE id = ?", (now, session_id))
            session = self._session(connection, session_id, owner)
        return session, [StoredMessage(*row) for row in rows]

    @staticmethod
    def _session(connection: sqlite3.Connection, session_id: str, owner: str | None) -> StoredSession | None:
        row = connection.execute(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ? AND owner IS ?", (session_id, owner)
        ).fetchone()
        return None if row is None else StoredSession.from_row(row)

    @staticmethod
    def _insert_messages(
        connection: sqlite3.Connection, session_id: str, position: int, turn: int, messages: list[NewMessage], now: int
    ) -> None:
        connection.executemany(
            "INSERT INTO messages (session_id, position, turn, role, content, token_count, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (session_id, position + offset, turn, message.role, message.content, message.token_count, now)
                for offset, message in enumerate(messages)
            ],
        )

    @staticmethod
    def _best_messages(connection: sqlite3.Connection, expression: str, session_ids: list[str]) -> dict[str, str]:
        """Each session's best-ranked matching message (bm25), whose snippet the list shows."""
        placeholders = ", ".join("?" * len(session_ids))
        ranked = connection.execute(
            f"SELECT session_id, rowid FROM message_search "
            f"WHERE message_search MATCH ? AND session_id IN ({placeholders}) ORDER BY rank",
            (expression, *session_ids),
        ).fetchall()
        best: dict[str, int] = {}
        for session_id, rowid in ranked:
            best.setdefault(session_id, rowid)
        placeholders = ", ".join("?" * len(best))
        rows = connection.execute(f"SELECT session_id, content FROM messages WHERE id IN ({placeholders})", tuple(best.values()))
        return dict(rows.fetchall())
