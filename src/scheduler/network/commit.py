"""Group commit: changes made while a flush runs share the next flush instead of one flush each.

Persisting the network's records and making the kernel rules match them costs time that grows
with the number of environments (the whole file is written, the whole ruleset rendered, an
iptables-restore run). Done once per change under the network's lock, hundreds of deploys at
once queue behind each other on it. Here a change asks for a flush and waits for it outside the
lock: the first request starts one; requests made while it runs are all served by the single
flush that starts after it, which sees every one of their changes. A flush reads the state at
its start, which is consistent because every change is made between two awaits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class GroupCommit:
    """Runs ``flush`` so that each request is covered by a flush that started after it."""

    def __init__(self, flush: Callable[[], Awaitable[None]]) -> None:
        self._flush = flush
        self._next: asyncio.Future[None] | None = None
        """What the requests since the running flush started wait for: the next flush."""
        self._running: asyncio.Task[None] | None = None
        self.flushes = 0
        """Flushes run so far (for tests and metrics)."""

    def request(self) -> Awaitable[None]:
        """Ask for a flush of the state as it is now; await the result (a waiter's cancellation stops no flush)."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            self._next.add_done_callback(_retrieve)
            if self._running is None:
                self._running = asyncio.create_task(self._run(), name="network-commit")
        return asyncio.shield(self._next)

    async def idle(self) -> None:
        """Wait until no flush runs or is asked for."""
        while self._running is not None:
            await asyncio.shield(self._running)

    async def _run(self) -> None:
        try:
            while (batch := self._next) is not None:
                self._next = None
                self.flushes += 1
                try:
                    await self._flush()
                except Exception as err:  # noqa: BLE001 - every waiter of the batch gets it
                    batch.set_exception(err)
                else:
                    batch.set_result(None)
                finally:
                    if not batch.done():
                        batch.cancel()  # the flush was cancelled: so are its waiters
        finally:
            self._running = None
            if self._next is not None:
                self._next.cancel()  # the loop is going away (shutdown): nobody will flush it
                self._next = None


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a batch's exception as seen: its waiters may all have been cancelled."""
    if not future.cancelled():
        future.exception()
