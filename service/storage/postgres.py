"""One PostgreSQL database shared by the stores of every replica: a connection pool,
transactions that turn a lost database into DatabaseUnavailable, and schema migrations that
several replicas starting at once apply exactly once.

Timeouts: connecting, waiting for a pooled connection and each statement are bounded, so a
database that stops answering costs a request a few seconds and a 503, never a hung worker.
Every connection is checked as it leaves the pool, so after the database restarts the first
request gets a fresh connection instead of a broken one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from service.storage.errors import DatabaseUnavailable, StorageError, UnstorableValue

log = logging.getLogger(__name__)

# Seconds to connect or to wait for a free pooled connection, and a statement's longest run.
CONNECT_TIMEOUT = 5.0
# A readiness probe's wait for a connection: probes time out after a second or so.
CHECK_TIMEOUT = 1.0
STATEMENT_TIMEOUT = 30.0
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 8
# pg_advisory_xact_lock key held while migrating: replicas starting together migrate in turn.
MIGRATION_LOCK = 0x6C6C6D5F736368  # "llm_sch"


def describe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "an unparsable PostgreSQL URL"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', 'localhost')}{port}/{parts.get('dbname', '')}"


def _reason(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class PostgresDatabase:
    def __init__(self, url: str) -> None:
        self.description = describe_url(url)
        connection_options = {
            "autocommit": True,  # transactions are explicit: `transaction()` below
            "connect_timeout": math.ceil(CONNECT_TIMEOUT),
            "options": f"-c statement_timeout={int(STATEMENT_TIMEOUT * 1000)}",
            "application_name": "llm-service",
        }
        # One connection first, outside the pool: its error says why (refused, bad password,
        # no such database), where the pool would only time out.
        try:
            psycopg.connect(url, **connection_options).close()
        except psycopg.Error as error:
            raise DatabaseUnavailable(
                f"cannot connect to the database at {self.description} (database_url): {_reason(error)}"
            ) from error
        self._pool = ConnectionPool(
            url,
            kwargs=connection_options,
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            timeout=CONNECT_TIMEOUT,
            check=ConnectionPool.check_connection,
            name="llm-service",
            open=True,
        )

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def transaction(self, *, snapshot: bool = False, timeout: float = CONNECT_TIMEOUT) -> Iterator[psycopg.Connection]:
        """One transaction on a pooled connection, waiting at most `timeout` seconds for one;
        `snapshot`: every read sees one snapshot (REPEATABLE READ, read only). A lost or
        unanswering database is DatabaseUnavailable."""
        try:
            with self._pool.connection(timeout=timeout) as connection, connection.transaction():
                if snapshot:
                    connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield connection
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            log.warning("database unavailable", extra={"database": self.description, "reason": _reason(error)})
            raise DatabaseUnavailable(f"the database is unavailable: {_reason(error)}") from error
        except psycopg.DataError as error:
            raise UnstorableValue(f"the database cannot store this request's text: {_reason(error)}") from error

    def check(self) -> None:
        """Raises DatabaseUnavailable unless the database answers a query now."""
        with self.transaction(timeout=CHECK_TIMEOUT) as connection:
            connection.execute("SELECT 1")

    def migrate(self, component: str, migrations: Sequence[Sequence[str]]) -> int:
        """Brings `component`'s tables to the newest version in one transaction, holding an
        advisory lock so replicas starting together wait for each other; returns that version.
        migrations[n] takes the schema from version n to n + 1."""
        with self.transaction() as connection:
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            row = connection.execute("SELECT version FROM schema_versions WHERE component = %s", (component,)).fetchone()
            version = row[0] if row else 0
            if version > len(migrations):
                raise StorageError(
                    f"the {component} tables in {self.description} have schema version {version}, newer than this "
                    f"service's {len(migrations)}; upgrade the service or use another database"
                )
            for statements in migrations[version:]:
                for statement in statements:
                    connection.execute(statement)
            connection.execute(
                "INSERT INTO schema_versions (component, version) VALUES (%s, %s) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, len(migrations)),
            )
        return len(migrations)
