"""Keeps a node's ledger in step with etcd: what other nodes write becomes this node's state too.

The ledger holds every environment in memory (reads never go to the store) and writes through
with compare-and-swap. In a fleet other nodes write as well: the mirror watches the store's
environment keys (a snapshot first, then every change, resumed across etcd member failures)
and hands each document to :meth:`Ledger.absorb`, which keeps it only if it is newer than the
one held, so this node's own writes, echoed back, change nothing.
"""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

from scheduler import log
from scheduler.errors import SchedulerError
from scheduler.orchestrator.ledger import Ledger
from scheduler.storage import codec
from scheduler.storage.etcd import EtcdClient, EventKind, WatchBatch, watch_prefix

_log = log.get("cluster.mirror")

ENVIRONMENTS = "env/"
"""Where the etcd store keeps environment documents, under the fleet's prefix."""


class LedgerMirror:
    """Follows ``<prefix>env/`` into the ledger until closed."""

    def __init__(self, client: EtcdClient, prefix: str, ledger: Ledger) -> None:
        self._client = client
        self._prefix = f"{prefix}{ENVIRONMENTS}"
        self._ledger = ledger
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()
        """Set once the first snapshot is applied."""

    def start(self) -> None:
        """Start following."""
        self._task = asyncio.create_task(self._follow(), name="ledger-mirror")

    async def close(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _follow(self) -> None:
        while True:
            try:
                async for batch in watch_prefix(self._client, self._prefix):
                    self._apply(batch)
            except SchedulerError as err:
                _log.warning("mirror.watch_failed", error=err.message)
                await asyncio.sleep(1.0)

    async def refresh(self) -> None:
        """Read every environment from etcd now and take it as a snapshot (after being cut off).

        Raises:
            Unavailable: etcd cannot be read.
        """
        page = await self._client.list_prefix(self._prefix)
        self._apply(WatchBatch(page.revision, (), snapshot=page.kvs))

    def _apply(self, batch: WatchBatch) -> None:
        if batch.snapshot is not None:
            seen = set()
            for kv in batch.snapshot:
                env = codec.environment_from_json(kv.value.decode())
                seen.add(env.name)
                self._ledger.absorb(env)
            for name in set(self._ledger.names()) - seen:
                self._ledger.absorb_removal(name)
            self.synced.set()
        for event in batch.events:
            if event.kind is EventKind.PUT:
                self._ledger.absorb(codec.environment_from_json(event.kv.value.decode()))
            else:
                self._ledger.absorb_removal(unquote(event.kv.key.removeprefix(self._prefix)))
