"""The models registered through the API, kept in SQLite so they come back after a restart.

Models named on the command line are configuration and are not stored; POST /v1/models adds a
row, DELETE removes it, and at startup every row is registered again (converted folders are
cached, so a restart does not convert twice). One small table; writes are rare.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path

from service.registry import ModelOptions
from service.settings import ModelSpec

DATABASE_FILE = "registry.sqlite3"


class RegistryStore:
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
    def in_folder(cls, data_dir: Path) -> RegistryStore:
        return cls(data_dir / DATABASE_FILE)

    def save(self, spec: ModelSpec, options: ModelOptions, created: int) -> None:
        with self._lock:
            self._connection.execute(
                "INSERT OR REPLACE INTO models (id, source, options, created) VALUES (?, ?, ?, ?)",
                (spec.model_id, str(spec.source), json.dumps(asdict(options)), created),
            )

    def delete(self, model_id: str) -> None:
        with self._lock:
            self._connection.execute("DELETE FROM models WHERE id = ?", (model_id,))

    def load(self) -> list[tuple[ModelSpec, ModelOptions]]:
        with self._lock:
            rows = self._connection.execute("SELECT id, source, options FROM models ORDER BY created, id").fetchall()
        return [(ModelSpec(Path(source), model_id), ModelOptions(**json.loads(options))) for model_id, source, options in rows]

    def close(self) -> None:
        with self._lock:
            self._connection.close()
