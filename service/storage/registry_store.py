"""The models registered through the API, kept so they come back after a restart.

Models named on the command line are configuration and are not stored; POST /v1/models adds a
row, DELETE removes it, and at startup every row is registered again (converted folders are
cached, so a restart does not convert twice). One small table; writes are rare.

Two stores implement `RegistryStore`: a SQLite file in the data folder
(service/storage/sqlite_registry_store.py) and PostgreSQL shared by replicas
(service/storage/postgres_registry_store.py). A row is (id, source path, options as JSON, created).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from service.engine.registry import ModelOptions
from service.settings import ModelSpec


class RegistryStore(Protocol):
    def save(self, spec: ModelSpec, options: ModelOptions, created: int) -> None:
        """Adds the model, or replaces the one with its id."""
        ...

    def delete(self, model_id: str) -> None: ...

    def load(self) -> list[tuple[ModelSpec, ModelOptions]]:
        """Every stored model, oldest first."""
        ...

    def close(self) -> None: ...


def model_row(spec: ModelSpec, options: ModelOptions, created: int) -> tuple[str, str, str, int]:
    return spec.model_id, str(spec.source), json.dumps(asdict(options)), created


def stored_model(model_id: str, source: str, options: str) -> tuple[ModelSpec, ModelOptions]:
    return ModelSpec(Path(source), model_id), ModelOptions(**json.loads(options))
