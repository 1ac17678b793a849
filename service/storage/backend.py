"""Where sessions and the model registry live, chosen in one place from the settings:
SQLite files in the data folder (the default), or PostgreSQL when `database_url` is set so that
several replicas share them. Everything else a replica holds (loaded models, KV caches, rate
limit counters) stays its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from service.settings import Settings
from service.storage.errors import StorageConfigurationError
from service.storage.registry_store import RegistryStore
from service.storage.session_store import SessionStore
from service.storage.sqlite_registry_store import SQLiteRegistryStore
from service.storage.sqlite_session_store import SQLiteSessionStore

if TYPE_CHECKING:  # psycopg is an optional extra: imported only when a URL is set
    from service.storage.postgres import PostgresDatabase

POSTGRES_SCHEMES = ("postgresql", "postgres")


def check_database_url(url: str | None) -> None:
    """Raises StorageConfigurationError unless `url` is None or a PostgreSQL URL."""
    if url is None:
        return
    scheme = urlsplit(url).scheme
    if scheme not in POSTGRES_SCHEMES:
        shown = f"a {scheme}:// URL" if scheme else "a URL without a scheme"
        raise StorageConfigurationError(
            f"database_url must be a postgresql:// or postgres:// URL (postgresql://user:password@host:5432/db); got {shown}"
        )


@dataclass
class Storage:
    sessions: SessionStore
    registry: RegistryStore
    # The shared PostgreSQL database, or None for SQLite files.
    database: PostgresDatabase | None = None

    @property
    def backend(self) -> str:
        return "sqlite" if self.database is None else "postgresql"

    def check(self) -> None:
        """Raises DatabaseUnavailable unless the database answers now, StorageFull while the
        SQLite files' disk is full."""
        self.sessions.check()

    def close(self) -> None:
        self.sessions.close()
        self.registry.close()
        if self.database is not None:
            self.database.close()


def open_storage(settings: Settings) -> Storage:
    """Opens the stores the settings name and brings their schema up to date. Raises
    DatabaseUnavailable when PostgreSQL cannot be reached, StorageError when it cannot be used."""
    check_database_url(settings.database_url)
    if settings.database_url is None:
        sessions = SQLiteSessionStore.in_folder(settings.data_dir)
        return Storage(sessions, SQLiteRegistryStore.in_folder(settings.data_dir))
    try:
        from service.storage.postgres import PostgresDatabase
        from service.storage.postgres_registry_store import PostgresRegistryStore
        from service.storage.postgres_session_store import PostgresSessionStore
    except ImportError as error:
        raise StorageConfigurationError(
            f"database_url needs psycopg and psycopg_pool ({error.name} is missing): pip install 'llm-service[postgres]'"
        ) from error
    database = PostgresDatabase(settings.database_url)
    try:
        return Storage(PostgresSessionStore(database), PostgresRegistryStore(database), database)
    except BaseException:
        database.close()
        raise
