"""What can go wrong with the database behind sessions and the model registry, as values the
app turns into answers: a 503 while the database is unreachable, a 507 while its disk is full,
a refusal to start otherwise."""

from __future__ import annotations


class StorageError(RuntimeError):
    """The database cannot be used: written by a newer service, or set up wrongly."""


class DatabaseUnavailable(StorageError):
    """The database cannot be reached now (down, restarting, overloaded); retrying may work."""


class StorageFull(StorageError):
    """The disk holding the database is full: writes fail until space is freed."""


class UnstorableValue(StorageError):
    """The database refuses a value the request carries (PostgreSQL text cannot hold NUL)."""


class StorageConfigurationError(ValueError):
    """The settings name a database this service cannot use."""
