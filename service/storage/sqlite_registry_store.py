"""The registered models in a SQLite file in the data folder: the default registry store."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.engine.registry import ModelOptions
from service.settings import ModelSpec
from service.storage.registry_store import model_row, stored_model
from service.storage.sqlite_files import open_database, storage_error

DATABASE_FILE = "registry.sqlite3"


class SQLiteRegistryStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._connection = open_database(path)
        with self._statement():
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS models (id TEXT PRIMARY KEY, source TEXT NOT NULL, options TEXT NOT NULL, created INTEGER NOT NULL)"
            )

    @contextmanager
    def _statement(self) -> Iterator[None]:
        """One statement under the lock; SQLite's failures (a full disk) as storage errors."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as error:
                raise storage_error(error, self.path) from error

    @classmethod
    def in_folder(cls, data_dir: Path) -> SQLiteRegistryStore:
        return cls(data_dir / DATABASE_FILE)

    def save(self, spec: ModelSpec, options: ModelOptions, created: int) -> None:
        with self._statement():
            self._connection.execute(
                "INSERT OR REPLACE INTO models (id, source, options, created) VALUES (?, ?, ?, ?)",
                model_row(spec, options, created),
            )

    def delete(self, model_id: str) -> None:
        with self._statement():
            self._connection.execute("DELETE FROM models WHERE id = ?", (model_id,))

    def load(self) -> list[tuple[ModelSpec, ModelOptions]]:
        with self._statement():
            rows = self._connection.execute("SELECT id, source, options FROM models ORDER BY created, id").fetchall()
        return [stored_model(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._connection.close()
