"""The registered models in PostgreSQL: a model registered through one replica is registered
by every replica at its next start (running replicas do not watch the table)."""

from __future__ import annotations

from service.engine.registry import ModelOptions
from service.settings import ModelSpec
from service.storage.postgres import PostgresDatabase
from service.storage.registry_store import model_row, stored_model

COMPONENT = "registry"

# MIGRATIONS[n] takes the schema from version n to n + 1. Append, never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    ("CREATE TABLE models (id TEXT PRIMARY KEY, source TEXT NOT NULL, options JSON NOT NULL, created BIGINT NOT NULL)",),
)


class PostgresRegistryStore:
    def __init__(self, database: PostgresDatabase) -> None:
        self._database = database
        database.migrate(COMPONENT, MIGRATIONS)

    def save(self, spec: ModelSpec, options: ModelOptions, created: int) -> None:
        with self._database.transaction() as connection:
            connection.execute(
                "INSERT INTO models (id, source, options, created) VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE "
                "SET source = excluded.source, options = excluded.options, created = excluded.created",
                model_row(spec, options, created),
            )

    def delete(self, model_id: str) -> None:
        with self._database.transaction() as connection:
            connection.execute("DELETE FROM models WHERE id = %s", (model_id,))

    def load(self) -> list[tuple[ModelSpec, ModelOptions]]:
        with self._database.transaction() as connection:
            rows = connection.execute("SELECT id, source, options::text FROM models ORDER BY created, id").fetchall()
        return [stored_model(*row) for row in rows]

    def close(self) -> None:
        """The database's pool is closed by its owner (service/storage/backend.py)."""
