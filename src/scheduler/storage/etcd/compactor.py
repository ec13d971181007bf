"""Periodic compaction of etcd's history, so that a long-running fleet does not fill the cluster.

Every write keeps the key's old version until the history is compacted; etcd refuses writes
once its database reaches its quota. Each tick compacts up to the revision seen at the previous
tick (as Kubernetes' API server does), so a watcher that falls behind by less than one interval
still resumes from where it was, and one further behind re-lists (``watch_prefix`` does).
Several nodes may compact: compacting to a revision that is already compacted is a no-op.
"""

from __future__ import annotations

import asyncio

from scheduler import log
from scheduler.errors import SchedulerError
from scheduler.storage.etcd.client import EtcdClient
from scheduler.storage.etcd.errors import Compacted

_log = log.get("etcd.compactor")


class Compactor:
    """Compacts the cluster's history every ``interval`` seconds, one interval behind."""

    def __init__(self, client: EtcdClient, interval: float) -> None:
        self._client = client
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.compacted = 0
        """The last revision this compactor compacted to (0: none yet)."""

    def start(self) -> None:
        """Start ticking in the background."""
        self._task = asyncio.create_task(self._run(), name="etcd-compactor")

    async def close(self) -> None:
        """Stop ticking."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def tick(self, previous: int) -> int:
        """Compact up to ``previous`` (if any) and return the current revision, the next tick's target."""
        current = await self._client.revision()
        if previous:
            try:
                await self._client.compact(previous)
                self.compacted = previous
                _log.debug("etcd.compacted", revision=previous)
            except Compacted:
                self.compacted = previous  # another node compacted further already
        return current

    async def _run(self) -> None:
        previous = 0
        while True:
            try:
                previous = await self.tick(previous)
            except SchedulerError as err:
                _log.warning("etcd.compact_failed", error=str(err))
            await asyncio.sleep(self._interval)
