"""``SqliteStateStore``: the embedded default ``StateStore``, one SQLite file (see :mod:`.store`)."""

from scheduler.storage.sqlite.schema import MIGRATIONS, SCHEMA_VERSION
from scheduler.storage.sqlite.store import SqliteStateStore

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqliteStateStore"]
