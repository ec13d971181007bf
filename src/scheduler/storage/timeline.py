"""Where finished operations' timelines are kept: a small SQLite file of its own.

Separate from the state store: timelines are diagnostics, written once per operation, bounded
per environment, and never needed to run anything. Losing the file loses only old timelines.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path

from scheduler.domain import OperationRecord
from scheduler.storage import codec

KEEP_PER_ENV = 50
"""Operations kept per environment, newest first."""


class SqliteTimeline:
    """Appends and reads operation records; thread-safe, each call short."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS operations (seq INTEGER PRIMARY KEY AUTOINCREMENT, env TEXT NOT NULL, "
                "doc TEXT NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS operations_env ON operations(env, seq)")

    def append(self, record: OperationRecord) -> None:
        """Keep ``record``, dropping the oldest of its environment beyond ``KEEP_PER_ENV``."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO operations (env, doc) VALUES (?, ?)", (record.env, codec.to_json(record)))
                self._db.execute(
                    "DELETE FROM operations WHERE env = ? AND seq NOT IN "
                    "(SELECT seq FROM operations WHERE env = ? ORDER BY seq DESC LIMIT ?)",
                    (record.env, record.env, KEEP_PER_ENV),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def of(self, env: str) -> list[OperationRecord]:
        """Operations of ``env``, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT doc FROM operations WHERE env = ? ORDER BY seq", (env,)).fetchall()
        return [codec.from_json(doc, OperationRecord) for (doc,) in rows]

    def close(self) -> None:
        """Close the file."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()
