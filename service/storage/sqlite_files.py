"""The service's SQLite files in the data folder: private to the service's user, opened with an
error that names the folder, and their failures (a full disk first) as storage errors.

Conversations are private: the data folder is created 0700 and each database file 0600 (SQLite
gives its -wal and -shm files the database file's mode), as keys.json is. A folder the service
cannot write (read-only, another user's) stops startup with one line naming it, rather than a
bare exit.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from service.storage.errors import DatabaseUnavailable, StorageError, StorageFull

FOLDER_MODE = 0o700
FILE_MODE = 0o600
# Free bytes a disk that was full must have again before the store is reported writable.
ROOM_AFTER_FULL = 1024 * 1024


def open_database(path: Path) -> sqlite3.Connection:
    """A connection to `path` in WAL mode, created private if missing; StorageError if the
    folder cannot hold it."""
    folder = path.parent
    try:
        folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
        for existing in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if existing.exists():
                existing.chmod(FILE_MODE)  # files an older service left readable to others
        connection = connect(path)
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    except (OSError, sqlite3.Error) as error:
        raise StorageError(
            f"cannot use the data folder {folder}: {_reason(error)}; it must be a local folder this user can "
            "write (--data-dir or $LLM_DATA_DIR)"
        ) from error
    if mode != "wal":
        connection.close()
        raise StorageError(f"{path}: SQLite cannot use WAL here (journal mode {mode!r}); use a local --data-dir")
    return connection


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), each commit fsynced."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA foreign_keys = ON")
    connection.execute("PRAGMA busy_timeout = 5000")
    return connection


def storage_error(error: sqlite3.Error, path: Path) -> StorageError:
    """What a failed SQLite call means for a client: a full disk (StorageFull), or a database
    that cannot be used now (DatabaseUnavailable); both are answered in the error envelope."""
    if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return StorageFull(f"the disk holding {path.parent} is full; nothing was saved")
    return DatabaseUnavailable(f"{path.name} cannot be used: {_reason(error)}")


def has_room(folder: Path) -> bool:
    return shutil.disk_usage(folder).free >= ROOM_AFTER_FULL


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__
