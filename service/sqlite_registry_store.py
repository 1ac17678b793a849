"""The registered models in a SQLite file in the data folder: the default registry store."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from service.registry import ModelOptions
from service.registry_store import model_row, stored_model
from service.settings import ModelSpec

DATABASE_FILE = "registry.sqlite3"


class SQLiteRegistryStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=FULL")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS models (id TEXT PRIMARY KEY, source TEXT NOT NULL, options TEXT NOT NULL, created INTEGER NOT NULL)"
        )

    @classmethod
    def in_folder(cls, data_dir: Path) -> SQLiteRegistryStore:
        return cls(data_dir / DATABASE_FILE)

    def save(self, spec: ModelSpec, options: ModelOptions, created: int) -> None:
        with self._lock:
            self._connection.execute(
                "INSERT OR REPLACE INTO models (id, source, options, created) VALUES (?, ?, ?, ?)",
                model_row(spec, options, created),
            )

    def delete(self, model_id: str) -> None:
        with self._lock:
            self._connection.execute("DELETE FROM models WHERE id = ?", (model_id,))

    def load(self) -> list[tuple[ModelSpec, ModelOptions]]:
        with self._lock:
            rows = self._connection.execute("SELECT id, source, options FROM models ORDER BY created, id").fetchall()
        return [stored_model(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._connection.close()
