"""``EtcdEventLog``: the event replay log (``storage.events.EventLog``) kept in etcd.

Sequences are the event bus's own, one key per event (``<prefix><sequence, 20 digits>``), not
etcd revisions: the bus stamps an event before anything is written, and WatchEvents' ``since``
must mean the same whatever the store. The log is loaded once at open (so sequences go on
across restarts, as with SQLite), and bounded: each write drops the keys ``keep`` sequences
behind in the same transaction. Writes are queued to one task in publish order, because
publishing is synchronous; a write etcd refuses loses that event from the replay log, never
the daemon. ``close`` stops taking events; ``drain`` waits for the queued ones.
"""

from __future__ import annotations

import asyncio
import contextlib

from scheduler import log
from scheduler.domain import Event
from scheduler.errors import SchedulerError
from scheduler.storage.codec import from_json, to_json
from scheduler.storage.etcd.client import EtcdClient
from scheduler.storage.etcd.types import Delete, Put
from scheduler.storage.events import DEFAULT_KEEP

_log = log.get("events")


class EtcdEventLog:
    """An ``EventLog`` under ``prefix`` in etcd (give each scheduler node a prefix of its own)."""

    def __init__(self, client: EtcdClient, prefix: str, recent: list[Event], keep: int = DEFAULT_KEEP) -> None:
        self._client = client
        self._prefix = prefix
        self._keep = keep
        self._recent = recent[-keep:]
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_all(), name="etcd-event-log")
        self._closed = False

    @classmethod
    async def open(cls, client: EtcdClient, prefix: str, keep: int = DEFAULT_KEEP) -> EtcdEventLog:
        """Load the kept events and start the writer."""
        page = await client.list_prefix(prefix)
        return cls(client, prefix, [from_json(kv.value.decode(), Event) for kv in page.kvs], keep)

    def _key(self, sequence: int) -> str:
        return f"{self._prefix}{sequence:020d}"

    def recent(self) -> list[Event]:
        """The events kept when the log was opened, oldest first."""
        return list(self._recent)

    def append(self, event: Event) -> None:
        """Queue the write of ``event``; ignored once closed."""
        if not self._closed:
            self._queue.put_nowait(event)

    def close(self) -> None:
        """Take no more events; the queued ones are still written (``drain`` waits for them)."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)

    async def drain(self, limit: float = 10.0) -> None:
        """Close, then wait (at most ``limit`` seconds) until the queued events are written."""
        self.close()
        try:
            async with asyncio.timeout(limit):
                await asyncio.shield(self._writer)
        except TimeoutError:
            _log.warning("event_log.drain_timeout", pending=self._queue.qsize())
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def _write_all(self) -> None:
        while (event := await self._queue.get()) is not None:
            ops: list[Put | Delete] = [Put(self._key(event.sequence), to_json(event).encode())]
            if event.sequence > self._keep:
                ops.append(Delete(self._prefix, end=self._key(event.sequence - self._keep + 1)))
            try:
                await self._client.txn([], ops)
            except SchedulerError as err:
                _log.warning("event_log.write_failed", sequence=event.sequence, error=str(err))
