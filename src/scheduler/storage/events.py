"""The event log: the last events the daemon published, kept on disk so watchers can resume.

A watcher that reconnects names the last sequence it saw; the bus replays what followed from
this log. The log is bounded (``keep`` events) and survives restarts, so sequences keep
increasing across them. Writes are queued to one thread, in publish order, because publishing
happens synchronously on the event loop; ``close`` waits for them.
"""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from scheduler import log
from scheduler.domain import Event
from scheduler.errors import Unavailable
from scheduler.storage.codec import from_json, to_json

_log = log.get("events")

DEFAULT_KEEP = 10_000
"""Events kept: about a day of a busy host's deploys, restarts and health changes."""


class StoredEvent:
    """A kept event as read back at start: its sequence and environment, the rest decoded on replay.

    A log holds up to ``DEFAULT_KEEP`` events and a restart reads them all, while a watcher that
    resumes replays a few: decoding every one at start cost the daemon start-up time and memory.
    """

    __slots__ = ("_document", "environment", "sequence")

    def __init__(self, sequence: int, environment: str, document: str) -> None:
        self.sequence = sequence
        self.environment = environment
        self._document = document

    def event(self) -> Event:
        """The event itself."""
        return from_json(self._document, Event)


class EventLog(Protocol):
    """Where published events are kept for replay."""

    def recent(self) -> Sequence[Event | StoredEvent]:
        """The kept events, oldest first."""
        ...

    def append(self, event: Event) -> None:
        """Keep ``event`` (stamped with its sequence), dropping the oldest beyond the bound."""
        ...

    def close(self) -> None:
        """Finish pending writes and release the file."""
        ...


class SqliteEventLog:
    """An ``EventLog`` in its own SQLite file beside the state database."""

    def __init__(self, path: Path, keep: int = DEFAULT_KEEP) -> None:
        self._keep = keep
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-log")
        self._db = self._executor.submit(self._open, path).result()

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, doc TEXT NOT NULL)")
        except (OSError, sqlite3.Error) as err:
            raise Unavailable(f"cannot open the event log {str(path)!r}: {err}") from err
        return db

    def recent(self) -> list[StoredEvent]:
        """The kept events, oldest first (decoded when replayed)."""

        def run() -> list[StoredEvent]:
            rows = self._db.execute("SELECT seq, json_extract(doc, '$.environment'), doc FROM events ORDER BY seq")
            return [StoredEvent(seq, environment or "", doc) for seq, environment, doc in rows]

        return self._executor.submit(run).result()

    def append(self, event: Event) -> None:
        """Queue the write; a failed write loses one event from the replay log, never the daemon."""
        doc = to_json(event)

        def run() -> None:
            try:
                self._db.execute("INSERT OR REPLACE INTO events (seq, doc) VALUES (?, ?)", (event.sequence, doc))
                self._db.execute("DELETE FROM events WHERE seq <= ?", (event.sequence - self._keep,))
            except sqlite3.Error as err:
                _log.warning("event_log.write_failed", sequence=event.sequence, error=str(err))

        self._executor.submit(run)

    def close(self) -> None:
        """Finish pending writes and release the file."""
        self._executor.submit(self._db.close).result()
        self._executor.shutdown(wait=True)
